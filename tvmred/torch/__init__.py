"""PyTorch binding (drop-in for ``pykeops.torch``): ``Genred``, ``LazyTensor`` / ``Vi`` /
``Vj`` / ``Pm``, ``KernelSolve``, ``generic_sum`` / ``generic_logsumexp`` / ``generic_argmin``
/ ``generic_argkmin``, and the block-sparsity helpers in ``tvmred.torch.cluster``.

Autograd: the backward of a reduction is the gradient plan of its reduction rule
(:meth:`tvmred.reductions.Reduction.vjp`), evaluated by further reductions, so gradients of
any order work; forward mode (``jvp``) likewise (:meth:`tvmred.reductions.Reduction.jvp`).
The kernel call is the ``tvmred::reduce`` custom op (:mod:`tvmred.torch.library`), so
``torch.compile`` and ``torch.func`` transforms work (:mod:`tvmred.torch.autograd`).
"""

from __future__ import annotations

from .. import settings as _settings
from ..export import load as _load
from . import cluster
from .binding import Genred
from .generic import generic_argkmin, generic_argmin, generic_logsumexp, generic_sum
from .lazytensor import ComplexLazyTensor, LazyTensor, Pm, Vi, Vj
from .solve import KernelSolve

_settings.default_threads()  # torch is imported: its thread count


def load(path):
    """Load an exported directory (:func:`tvmred.export.load`): ``lib["name"]`` is a
    ``tvmred.torch.Genred``.  Its kernels are code run in this process: load only
    directories you trust."""
    return _load(path, {"torch": Genred})


__all__ = [
    "Genred",
    "KernelSolve",
    "LazyTensor",
    "ComplexLazyTensor",
    "Pm",
    "Vi",
    "Vj",
    "cluster",
    "load",
    "generic_argkmin",
    "generic_argmin",
    "generic_logsumexp",
    "generic_sum",
]
