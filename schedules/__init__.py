"""Schedule templates, chosen by target kind.  A schedule sees a :class:`ReductionShape` and a
target, never the formula (see ``shape.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .cpu import cpu_row_block, cpu_rowblock
from .cuda import cuda_row_block, cuda_rows
from .shape import ReductionShape

if TYPE_CHECKING:  # importing this package must not import TVM: see tvmred.runtime
    import tvm
    from tvm import s_tir

Scheduler = Callable[["s_tir.Schedule", ReductionShape], "s_tir.Schedule"]
Finisher = Callable[["tvm.IRModule", ReductionShape, dict], "tvm.IRModule"]


def _as_is(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    return mod


def kselect_early_exit(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    from .early_exit import kselect_early_exit as rewrite

    return rewrite(mod, shape, target)


#: (target kind) -> (row-block rule (dtype, width) -> rows, schedule function, rewrite of the
#: scheduled module before ``tvm.compile``)
TABLE: dict[str, tuple[Callable[[str, int], int], Scheduler, Finisher]] = {
    "llvm": (cpu_row_block, cpu_rowblock, kselect_early_exit),
    "cuda": (cuda_row_block, cuda_rows, _as_is),
}


def row_block(target_kind: str, dtype: str, config: dict | None = None, width: int = 1) -> int:
    """How many output rows the kernel for ``target_kind`` handles per block (padding multiple):
    the tuned value from ``config`` if any, else the template's rule for ``width`` (the
    reduction-state values per row that the block keeps in registers)."""
    if config and "row_block" in config:
        return int(config["row_block"])
    return _entry(target_kind)[0](dtype, width)


def candidates(target_kind: str, dtype: str, default: int) -> list[dict]:
    """The knob settings ``tvmred tune`` measures for a target (``default`` first)."""
    if target_kind == "cuda":
        blocks = [64, 128, 256, 512]
    else:
        blocks = [8, 16, 32, 64, 128] if dtype == "float32" else [4, 8, 16, 32, 64]
    return [{"row_block": b} for b in [default] + [b for b in blocks if b != default]]


def schedule(sch: s_tir.Schedule, shape: ReductionShape, target_kind: str) -> s_tir.Schedule:
    return _entry(target_kind)[1](sch, shape)


def finish(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    """The scheduled module as ``tvm.compile`` gets it (IR rewrites the schedule primitives
    cannot express, e.g. the K-selection early exit)."""
    return _entry(target["kind"])[2](mod, shape, target)


def _entry(kind: str) -> tuple[Callable[[str, int], int], Scheduler, Finisher]:
    if kind not in TABLE:
        raise NotImplementedError(f"no schedule for target kind {kind!r} (have {sorted(TABLE)})")
    return TABLE[kind]


__all__ = ["ReductionShape", "row_block", "candidates", "schedule", "finish", "TABLE"]
