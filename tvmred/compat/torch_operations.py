"""``pykeops.torch.operations`` under the alias."""

from ..torch import KernelSolve

__all__ = ["KernelSolve"]
