"""okd-ray: online knowledge distillation (AFD, FFL and baselines) for populations of networks, on Ray."""

__version__ = "0.1.0"
