"""PyTorch binding: ``from tvmred.torch import Genred`` (drop-in for ``pykeops.torch.Genred``).

Autograd: the backward of a reduction is the gradient plan of its reduction rule
(:meth:`tvmred.reductions.Reduction.vjp`), evaluated by further reductions, so gradients of
any order work; forward mode (``jvp``) likewise (:meth:`tvmred.reductions.Reduction.jvp`).
The kernel call is the ``tvmred::genred`` custom op (:mod:`tvmred.torch.library`), so
``torch.compile`` and ``torch.func`` transforms work (:mod:`tvmred.torch.autograd`).
"""

from __future__ import annotations

from .genred import Genred
from .lazytensor import LazyTensor, Pm, Vi, Vj

__all__ = ["Genred", "LazyTensor", "Pm", "Vi", "Vj"]
