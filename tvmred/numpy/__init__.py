"""NumPy binding (drop-in for ``pykeops.numpy``): ``Genred``, ``LazyTensor`` / ``Vi`` /
``Vj`` / ``Pm``, ``KernelSolve``, ``generic_sum`` / ``generic_logsumexp`` /
``generic_argmin`` / ``generic_argkmin``.  Arrays are shared with the kernels without copies
(through torch's zero-copy ``from_numpy``); non-contiguous arrays are copied once.  No
autograd."""

from __future__ import annotations

from ..export import load as _load
from .generic import generic_argkmin, generic_argmin, generic_logsumexp, generic_sum
from .genred import Genred
from .lazytensor import LazyTensor, Pm, Vi, Vj
from .solve import KernelSolve


def load(path):
    """Load an exported directory (:func:`tvmred.export.load`): ``lib["name"]`` is a
    ``tvmred.numpy.Genred``.  Its kernels are code run in this process: load only
    directories you trust."""
    return _load(path, {"numpy": Genred})


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
    "load",
]
