"""NumPy binding (drop-in for ``pykeops.numpy``): ``Genred``, ``LazyTensor`` / ``Vi`` /
``Vj`` / ``Pm``, ``KernelSolve``, ``generic_sum`` / ``generic_logsumexp`` /
``generic_argmin`` / ``generic_argkmin``.  Arrays are shared with the kernels without copies
(non-contiguous or misaligned arrays are copied once); torch is not imported unless a call
has batch dimensions, ``ranges`` or a GPU backend.  No autograd."""

from __future__ import annotations

from .. import settings as _settings
from ..export import load as _load
from .binding import Genred
from .generic import generic_argkmin, generic_argmin, generic_logsumexp, generic_sum
from .lazytensor import ComplexLazyTensor, LazyTensor, Pm, Vi, Vj
from .solve import KernelSolve

_settings.default_threads()


def load(path):
    """Load an exported directory (:func:`tvmred.export.load`): ``lib["name"]`` is a
    ``tvmred.numpy.Genred``.  Its kernels are code run in this process: load only
    directories you trust."""
    return _load(path, {"numpy": Genred})


__all__ = [
    "Genred",
    "KernelSolve",
    "LazyTensor",
    "ComplexLazyTensor",
    "Pm",
    "Vi",
    "Vj",
    "generic_argkmin",
    "generic_argmin",
    "generic_logsumexp",
    "generic_sum",
    "load",
]
