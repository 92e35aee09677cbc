"""The Ray engine and its transports (``engine.py``); imported only for ``engine=ray``: Ray costs seconds."""

from .engine import TRANSPORTS, RayEngine

__all__ = ["TRANSPORTS", "RayEngine"]
