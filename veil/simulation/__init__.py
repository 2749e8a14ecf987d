"""Simulation of Veil's user fleet: synthetic and real populations, fleet runs and experiments.

Subpackages are imported explicitly (``veil.simulation.data``, ...); nothing heavy is imported here.
"""

__all__: list[str] = []
