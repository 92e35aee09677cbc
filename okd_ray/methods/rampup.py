"""The sigmoid ramp-up of FFL's KL weight (Laine & Aila's schedule, as in the FFL reference code)."""

import math


def sigmoid_rampup(epoch: float, length: float) -> float:
    """exp(−5·(1 − epoch/length)²) until ``length`` epochs, then 1; a length of 0 means no ramp-up."""
    if length <= 0 or epoch >= length:
        return 1.0
    phase = 1.0 - max(epoch, 0.0) / length
    return math.exp(-5.0 * phase * phase)
