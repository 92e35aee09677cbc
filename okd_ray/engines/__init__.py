"""Engines: where the population lives (one process, or one Ray actor per member) and how tensors move."""
