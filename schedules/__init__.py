"""Schedule templates, chosen by target kind.  A schedule sees a :class:`ReductionShape` and a
target, never the formula (see ``shape.py``)."""

from __future__ import annotations

from typing import Callable

from tvm import s_tir

from .cpu import cpu_row_block, cpu_rowblock
from .cuda import cuda_row_block, cuda_rows
from .shape import ReductionShape

Scheduler = Callable[[s_tir.Schedule, ReductionShape], s_tir.Schedule]

#: (target kind) -> (row-block rule, schedule function)
TABLE: dict[str, tuple[Callable[[str], int], Scheduler]] = {
    "llvm": (cpu_row_block, cpu_rowblock),
    "cuda": (cuda_row_block, cuda_rows),
}


def row_block(target_kind: str, dtype: str) -> int:
    """How many output rows the kernel for ``target_kind`` handles per block (padding multiple)."""
    return _entry(target_kind)[0](dtype)


def schedule(sch: s_tir.Schedule, shape: ReductionShape, target_kind: str) -> s_tir.Schedule:
    return _entry(target_kind)[1](sch, shape)


def _entry(kind: str) -> tuple[Callable[[str], int], Scheduler]:
    if kind not in TABLE:
        raise NotImplementedError(f"no schedule for target kind {kind!r} (have {sorted(TABLE)})")
    return TABLE[kind]


__all__ = ["ReductionShape", "row_block", "schedule", "TABLE"]
