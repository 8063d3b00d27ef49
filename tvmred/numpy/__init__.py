"""NumPy binding (drop-in for ``pykeops.numpy``): ``Genred``, ``LazyTensor`` / ``Vi`` /
``Vj`` / ``Pm``, ``KernelSolve``, ``generic_sum`` / ``generic_logsumexp`` /
``generic_argmin`` / ``generic_argkmin``.  Arrays are shared with the kernels without copies
(through torch's zero-copy ``from_numpy``); non-contiguous arrays are copied once.  No
autograd."""

from __future__ import annotations

from .generic import generic_argkmin, generic_argmin, generic_logsumexp, generic_sum
from .genred import Genred
from .lazytensor import LazyTensor, Pm, Vi, Vj
from .solve import KernelSolve

__all__ = [
    "Genred",
    "KernelSolve",
    "LazyTensor",
    "Pm",
    "Vi",
    "Vj",
    "generic_argkmin",
    "generic_argmin",
    "generic_logsumexp",
    "generic_sum",
]
