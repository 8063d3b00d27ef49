"""Schedule templates, chosen by target kind.  A schedule sees a :class:`ReductionShape` and a
target, never the formula (see ``shape.py``)."""

from __future__ import annotations

from typing import Callable

from tvm import s_tir

from .cpu import cpu_row_block, cpu_rowblock
from .cuda import cuda_row_block, cuda_rows
from .shape import ReductionShape

Scheduler = Callable[[s_tir.Schedule, ReductionShape], s_tir.Schedule]

#: (target kind) -> (row-block rule (dtype, width) -> rows, schedule function)
TABLE: dict[str, tuple[Callable[[str, int], int], Scheduler]] = {
    "llvm": (cpu_row_block, cpu_rowblock),
    "cuda": (cuda_row_block, cuda_rows),
}


def row_block(target_kind: str, dtype: str, config: dict | None = None, width: int = 1) -> int:
    """How many output rows the kernel for ``target_kind`` handles per block (padding multiple):
    the tuned value from ``config`` if any, else the template's rule for ``width`` (the total
    dimension of the output-indexed inputs)."""
    if config and "row_block" in config:
        return int(config["row_block"])
    return _entry(target_kind)[0](dtype, width)


def candidates(target_kind: str, dtype: str, default: int) -> list[dict]:
    """The knob settings ``tvmred tune`` measures for a target (``default`` first)."""
    if target_kind == "cuda":
        blocks = [64, 128, 256, 512]
    else:
        blocks = [8, 16, 32, 64] if dtype == "float32" else [4, 8, 16, 32]
    return [{"row_block": b} for b in [default] + [b for b in blocks if b != default]]


def schedule(sch: s_tir.Schedule, shape: ReductionShape, target_kind: str) -> s_tir.Schedule:
    return _entry(target_kind)[1](sch, shape)


def _entry(kind: str) -> tuple[Callable[[str, int], int], Scheduler]:
    if kind not in TABLE:
        raise NotImplementedError(f"no schedule for target kind {kind!r} (have {sorted(TABLE)})")
    return TABLE[kind]


__all__ = ["ReductionShape", "row_block", "candidates", "schedule", "TABLE"]
