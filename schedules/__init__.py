"""Schedule templates, one record per target kind.  A template sees a :class:`ReductionShape`
and a target dict, never the formula (see ``shape.py``); this package imports nothing of
tvmred but ``shape.py``, and no TVM until a schedule is built.

Adding a target = one file defining its :class:`TargetTemplate` + one line in ``TEMPLATES``.
"""

from __future__ import annotations

from typing import Any

from .cpu import TEMPLATE as CPU
from .cuda import TEMPLATE as CUDA
from .shape import ReductionShape, TargetTemplate

TEMPLATES: dict[str, TargetTemplate] = {t.kind: t for t in (CPU, CUDA)}


def template(kind: str) -> TargetTemplate:
    """The template of a TVM target kind ("llvm", "cuda")."""
    if kind not in TEMPLATES:
        raise NotImplementedError(
            f"no schedule for target kind {kind!r} (have {sorted(TEMPLATES)})"
        )
    return TEMPLATES[kind]


def for_device(device_type: str) -> TargetTemplate:
    """The template whose kernels run on torch tensors of ``device_type``."""
    for t in TEMPLATES.values():
        if t.device == device_type:
            return t
    have = sorted(t.device for t in TEMPLATES.values())
    raise NotImplementedError(
        f"tvmred runs on {' and '.join(have)} devices, not on {device_type!r}"
    )


def row_block(
    target: dict,
    dtype: str,
    config: dict | None = None,
    width: int = 1,
    narrow: bool = False,
    reads: int = 0,
    kind: str = "",
) -> int:
    """Output rows per block (the padding multiple): the tuned value from ``config`` if any,
    else the template's rule for ``width`` = values per row of the reduction state that a
    block keeps in registers across the j loop and ``reads`` = reduced-index values a pair
    reads, for a reduction of ``kind`` ("sum", "select", "kselect", "lse"; with "+guard"
    for the kernel with the dot-product guard, ``guard.py``; ``narrow``: the narrower
    blocks of a split-j kernel for few output rows)."""
    if config and "row_block" in config:
        return int(config["row_block"])
    tpl = template(target["kind"])
    rule = tpl.split_row_block if narrow and tpl.split_row_block else tpl.row_block
    return rule(target, dtype, width, reads, kind)


def task_counts(mod: Any, shape: ReductionShape, target: dict) -> Any:
    """A ranged kernel's loops over j bounded by each task's count (see ``ranged.py``)."""
    if not shape.ranged:
        return mod
    from .ranged import task_counts as rewrite

    return rewrite(mod, shape, target)


def tile(target: dict, dtype: str, config: dict | None = None, row_bytes: int = 0) -> int:
    """Reduced rows per tile (0: none): the tuned value from ``config`` if any, else the
    template's default, fitted by the template to ``row_bytes`` (the bytes of one reduced
    row of every reduced-index input: a tile must fit the GPU's shared memory)."""
    tpl = template(target["kind"])
    rows = int(config["tile"]) if config and "tile" in config else tpl.tile(target, dtype)
    return tpl.fit_tile(rows, row_bytes) if rows else 0


def two_pass(target: dict, dtype: str, config: dict | None = None, tile: int = 0) -> int:
    """j per block of a two-pass LogSumExp (0: the online loop): the tuned value from
    ``config`` if any (a tiled kernel's, on CUDA), else the template's for this tile."""
    if config and "two_pass" in config:
        return int(config["two_pass"])
    return template(target["kind"]).two_pass(dtype, tile)


__all__ = [
    "ReductionShape",
    "TargetTemplate",
    "TEMPLATES",
    "template",
    "two_pass",
    "for_device",
    "row_block",
    "tile",
    "task_counts",
]
