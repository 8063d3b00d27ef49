"""The reduction registry: each reduction is one :class:`RedDef` with all its rules (the data
model, :mod:`.core`), registered by the file of its family -- :mod:`.sum`, :mod:`.select`
(Min, Max and their Arg forms), :mod:`.kselect` (KMin, ArgKMin), :mod:`.lse` (LogSumExp,
SoftMax) -- and a :class:`Reduction` is one use of it (formula, output index, arguments)."""

from __future__ import annotations

# importing a family registers it; in this order (the README's table follows it)
# isort: off
from . import sum, select, kselect, lse  # noqa: F401

# isort: on
from .core import (
    LABEL,
    REDUCTIONS,
    Chain,
    Gathered,
    KernelSpec,
    Plan,
    RedDef,
    Reduction,
    Space,
    Step,
    Variant,
    plan_reductions,
    reduction,
)
from .kselect import MAX_K

__all__ = [
    "LABEL",
    "MAX_K",
    "REDUCTIONS",
    "Chain",
    "Gathered",
    "KernelSpec",
    "Plan",
    "RedDef",
    "Reduction",
    "Space",
    "Step",
    "Variant",
    "plan_reductions",
    "reduction",
]
