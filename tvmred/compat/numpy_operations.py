"""``pykeops.numpy.operations`` under the alias."""

from ..numpy import KernelSolve

__all__ = ["KernelSolve"]
