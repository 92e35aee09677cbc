"""Ray Tune + Optuna sweeps over a population run's weights (``okd-ray tune``)."""

from .space import parse_space
from .sweep import Sweep, SweepOptions, load_sweep_files, prepare, run_sweep

__all__ = ["Sweep", "SweepOptions", "load_sweep_files", "parse_space", "prepare", "run_sweep"]
