"""The SimPy serving engine: instances, the shared host link, and the event log."""

from moesim.engine.simulation import SimResult, simulate

__all__ = ["SimResult", "simulate"]
