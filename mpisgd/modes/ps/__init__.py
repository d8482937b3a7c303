"""Parameter-server mode: sharded servers; BSP, ASP and SSP consistency; backup workers."""

from mpisgd.modes.ps.job import fit

__all__ = ["fit"]
