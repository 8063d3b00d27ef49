"""PyTorch binding (drop-in for ``pykeops.torch``): ``Genred``, ``LazyTensor`` / ``Vi`` /
``Vj`` / ``Pm``, ``KernelSolve``, ``generic_sum`` / ``generic_logsumexp`` / ``generic_argmin``
/ ``generic_argkmin``, and the block-sparsity helpers in ``tvmred.torch.cluster``.

Autograd: the backward of a reduction is the gradient plan of its reduction rule
(:meth:`tvmred.reductions.Reduction.vjp`), evaluated by further reductions, so gradients of
any order work; forward mode (``jvp``) likewise (:meth:`tvmred.reductions.Reduction.jvp`).
The kernel call is the ``tvmred::genred`` custom op (:mod:`tvmred.torch.library`), so
``torch.compile`` and ``torch.func`` transforms work (:mod:`tvmred.torch.autograd`).
"""

from __future__ import annotations

from . import cluster
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
    "cluster",
    "generic_argkmin",
    "generic_argmin",
    "generic_logsumexp",
    "generic_sum",
]
