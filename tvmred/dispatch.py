"""Calls that are not one plain (M, N) reduction: batch dimensions and block-sparse ranges.

Both reduce to plain reductions evaluated by ``fn`` (the autograd Function for torch, the bare
kernel for numpy), through differentiable torch indexing, so gradients (of any order) follow:
  * batch dims: every batch index of the broadcast batch shape is one reduction; broadcast
    arguments are ``expand``-ed, so their gradients are summed over the broadcast dims.  Where
    the binding has ranged kernels (one launch, :mod:`tvmred.ranged`) and no parameter has
    batch dims, the problems are stacked and run as **one** block-diagonal ranged call
    (:func:`batched_one_launch`: no Python loop, one kernel launch for all of them);
  * ``ranges`` (pykeops' 6-tuple): each output cluster is one reduction over the rows of its
    reduced-index ranges, gathered; masked blocks are never computed, so time falls with
    sparsity.  Arg outputs are mapped back to global indices; output rows in no range get
    0 (values) or -1 (indices).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import torch

from .launch import check_args
from .reductions import Reduction


def each_problem(
    r: Reduction, args: Sequence[Any], fn: Callable, ranges: Any = None, ranged: Any = None
) -> Any:
    """``fn(*args)`` for plain arguments, else batch by batch or cluster by cluster -- or,
    with ranges, ``ranged(args, ranges)`` (one launch, :mod:`tvmred.ranged`) when the
    binding gives it and the device has ranged kernels.  ``r`` is a :class:`Reduction` or
    anything with its ``nargs``, ``cats``, ``out_cat``, ``names``."""
    shape = batch_shape(r, args)
    if shape is not None:
        check_args(r, args, batch=True)  # errors name the arguments' full shapes
        if ranges is not None:
            raise NotImplementedError("ranges together with batch dimensions are not supported")
        if ranged is not None and ranged_device(args, r) and stackable(r, args, shape):
            return batched_one_launch(r, args, shape, ranged)
        return _batched(r, args, fn, shape)
    if ranges is not None:
        if ranged is not None and ranged_device(args, r):
            try:
                return ranged(args, ranges)
            except LookupError:  # an exported library without the ranged kernel
                pass
        return _ranged(r, args, fn, ranges)
    return fn(*args)


def ranged_device(args: Sequence[Any], r: Any) -> bool:
    """Whether the arguments' device has ranged kernels (one launch for all clusters) and
    ``r`` has an output-indexed variable (a ranged kernel reads its task's row block from
    one; without, it did not compile: a LazyTensor of one i-row is a parameter)."""
    from . import schedules

    dev = args[0].device if args else torch.device("cpu")
    return schedules.for_device(dev.type).ranged and r.out_cat in r.cats


def _core(r: Reduction, k: int) -> int:
    return 1 if r.cats[k] == 2 else 2


def batch_shape(r: Reduction, args: Sequence[Any]) -> torch.Size | None:
    shapes = []
    for k, a in enumerate(args[: r.nargs]):
        if isinstance(a, torch.Tensor) and a.dim() > _core(r, k):
            shapes.append(a.shape[: a.dim() - _core(r, k)])
    if not shapes:
        return None
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        detail = ", ".join(f"{r.names[k]}: {tuple(a.shape)}" for k, a in enumerate(args))
        raise ValueError(f"batch dimensions do not broadcast: {detail}") from None


def _batched(r: Reduction, args: Sequence[torch.Tensor], fn: Callable, shape: torch.Size):
    return stack_batch([fn(*p) for p in split_batch(r, args, shape)], shape)


#: Pairs per problem below which a batched call runs as one launch (above, each problem's
#: own kernel call costs little beside its work: 4 problems of 3000 x 3000 took 6.5 ms one
#: by one, 7.3 ms stacked; 1000 of 100 x 100, 81 ms one by one, 8.0 ms stacked -- CHANGELOG)
ONE_LAUNCH_PAIRS = 1 << 22


def stackable(r: Reduction, args: Sequence[Any], shape: Sequence[int]) -> bool:
    """Whether a batched call runs as one ranged call: more than one problem, each smaller
    than ``ONE_LAUNCH_PAIRS`` and not empty, and no parameter with batch dimensions (a
    parameter is one vector for the whole launch)."""
    if len(args) != r.nargs or not all(isinstance(a, torch.Tensor) for a in args):
        return False
    batch = int(torch.Size(shape).numel())
    if batch < 2:
        return False
    for k, a in enumerate(args):
        if a.dim() < _core(r, k) or (r.cats[k] == 2 and a.dim() > 1):
            return False
        if r.cats[k] != 2 and (a.shape[-2] == 0 or a.shape[-1] == 0):
            return False
    size = _rows(r, args)
    # (the stacked rows are indexed by int32 ranges)
    return (
        len(size) == 2
        and size[0] * size[1] < ONE_LAUNCH_PAIRS
        and (batch * max(size.values()) < 2**31)
    )


def _rows(r: Reduction, args: Sequence[Any]) -> dict:
    """{category: rows of one problem} for the i- and j-variables among ``args``."""
    return {r.cats[k]: a.shape[-2] for k, a in enumerate(args) if r.cats[k] != 2}


def batched_one_launch(r: Reduction, args: Sequence[Any], shape: Sequence[int],
                       ranged: Callable) -> Any:  # fmt: skip
    """The B problems of a batched call stacked -- problem b's i-rows and j-rows one after the
    other -- and reduced in one ranged call whose clusters are the problems (problem b's rows
    reduce over problem b's j only; the transposed ranges, for gradients, alike).  Broadcast
    arguments are expanded (copied B times: what the stacked kernel reads), through torch
    ops, so gradients flow back to the arguments' own shapes.  Positions (int64 outputs) are
    made local to their problem again."""
    size = _rows(r, args)  # both categories: stackable() checked
    batch = int(torch.Size(shape).numel())
    flat = []
    for k, a in enumerate(args):
        if r.cats[k] == 2:
            flat.append(a)
            continue
        a = a.reshape((1,) * (len(shape) + 2 - a.dim()) + tuple(a.shape))
        flat.append(a.expand(*shape, *a.shape[-2:]).reshape(batch * a.shape[-2], a.shape[-1]))
    dev = args[0].device
    steps = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    ri = (steps * size[0]).unfold(0, 2, 1).contiguous()  # (B, 2): problem b's i rows
    rj = (steps * size[1]).unfold(0, 2, 1).contiguous()  # (B, 2): its j rows
    slices = steps[1:].contiguous()
    res = ranged(flat, (ri, slices, rj, rj, slices, ri))
    n_out, n_red = size[r.out_cat], size[1 - r.out_cat]
    offset = (torch.arange(batch, device=dev) * n_red).reshape(*shape, 1, 1)

    def unstack(o: torch.Tensor) -> torch.Tensor:
        o = o.reshape(*shape, n_out, *o.shape[1:])
        if o.dtype == torch.int64:  # positions along the stacked reduced index
            o = o - offset.reshape(offset.shape + (1,) * (o.dim() - offset.dim()))
        return o

    if isinstance(res, (tuple, list)):
        return type(res)(unstack(o) for o in res)
    return unstack(res)


def split_batch(r: Reduction, args: Sequence[torch.Tensor], shape: Sequence[int]) -> list[list]:
    """The plain problems of a call with batch dimensions ``shape``, one argument list per
    batch index (row-major): broadcast arguments are ``expand``-ed views, so gradients taken
    through them are summed over the broadcast dims."""
    full = []
    for k, a in enumerate(args):
        core = _core(r, k)
        if a.dim() < core:
            full.append(None)  # let the per-problem check report it
            continue
        a = a.reshape((1,) * (len(shape) + core - a.dim()) + tuple(a.shape))
        full.append(a.expand(*shape, *a.shape[len(shape) :]))
    return [
        [a if f is None else f[idx] for a, f in zip(args, full)]
        for idx in itertools.product(*(range(s) for s in shape))
    ]


def stack_batch(outs: list, shape: Sequence[int]) -> Any:
    """The outputs of :func:`split_batch`'s problems as one (tuple of) tensor(s) of batch
    shape ``shape``."""
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o).reshape(*shape, *o[0].shape) for o in zip(*outs))
    return torch.stack(outs).reshape(*shape, *outs[0].shape)


def _ranged(r: Reduction, args: Sequence[torch.Tensor], fn: Callable, ranges: Any):
    if not isinstance(ranges, (tuple, list)) or len(ranges) != 6:
        raise ValueError(
            "ranges must be the 6-tuple (ranges_i, slices_i, redranges_j, "
            "ranges_j, slices_j, redranges_i)"
        )
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    n_out = n_red = 1
    for a, cat in zip(args, r.cats):
        if cat == out_cat:
            n_out = a.shape[0]
        elif cat == red_cat:
            n_red = a.shape[0]
    rng, slices, red = read_ranges(ranges, out_cat, n_out, n_red)
    # every reduced index of every cluster at once, then one slice per cluster
    jall = _indices(red)
    lens = red[:, 1] - red[:, 0]
    ends = torch.cumsum(lens, 0)
    zero = torch.zeros(1, dtype=torch.long, device=ends.device)
    cuts = torch.cat([zero, ends])[torch.cat([zero, slices])].tolist()
    dev = args[0].device
    jall = jall.to(dev)
    pieces, rows = [], []
    for c, (o0, o1) in enumerate(rng.tolist()):
        if o1 == o0:
            continue
        jidx = jall[cuts[c] : cuts[c + 1]]
        sub = []
        for a, cat in zip(args, r.cats):
            sub.append(
                a[o0:o1] if cat == out_cat else a.index_select(0, jidx) if cat == red_cat else a
            )
        pieces.append(_global_index(fn(*sub), jidx))
        rows.append(torch.arange(o0, o1, device=dev))
    rows_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=dev)
    if not pieces:  # nothing to compute: run an empty problem for the output's shape
        probe = [a[:0] if cat in (0, 1) else a for a, cat in zip(args, r.cats)]
        pieces = [fn(*probe)]
    return _assemble(pieces, rows_t, n_out)


RANGE_NAMES = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")


def read_ranges(ranges: Any, out_cat: int, n_out: int, n_red: int) -> tuple:
    """(output ranges (C, 2), slices (C,), reduced ranges (R, 2)) for this axis, int64 on the
    CPU, after checking what pykeops assumes: integer tensors of those shapes, ranges inside
    the sizes with start <= end, non-decreasing slices ending within the reduced ranges,
    disjoint output ranges (overlapping ones would write a row twice), and disjoint reduced
    ranges within each output range (overlaps would count reduced rows twice)."""
    names = RANGE_NAMES[:3] if out_cat == 0 else RANGE_NAMES[3:]
    picked = ranges[:3] if out_cat == 0 else ranges[3:]
    out = []
    for name, t, ndim in zip(names, picked, (2, 1, 2)):
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"ranges: {name} must hold integers, got {t.dtype}")
        if t.dim() != ndim or (ndim == 2 and t.shape[1] != 2):
            want = "(n, 2)" if ndim == 2 else "(n,)"
            raise ValueError(f"ranges: {name} must have shape {want}, got {tuple(t.shape)}")
        out.append(t.long().cpu())
    rng, slices, red = out
    if slices.numel() != rng.shape[0]:
        raise ValueError(
            f"ranges: {names[0]} has {rng.shape[0]} rows but {names[1]} has {slices.numel()}"
        )
    if slices.numel() and (
        slices.min() < 0 or slices[-1] > red.shape[0] or (slices.diff() < 0).any()
    ):
        raise ValueError(
            f"ranges: {names[1]} must be non-decreasing ends in [0, {red.shape[0]}] "
            f"(the rows of {names[2]}), got {slices.tolist()[:10]}"
        )
    for name, t, n in ((names[0], rng, n_out), (names[2], red, n_red)):
        if t.numel() and (t.min() < 0 or t.max() > n or (t[:, 1] < t[:, 0]).any()):
            raise ValueError(f"ranges: a range of {name} is out of bounds (size {n}) or decreasing")
    if _overlap(rng, torch.zeros(len(rng), dtype=torch.long)):
        raise ValueError(
            f"ranges: the rows of {names[0]} overlap (an output row would be written twice)"
        )
    owner = torch.repeat_interleave(
        torch.arange(len(slices)), slices.diff(prepend=slices.new_zeros(1))
    )
    if _overlap(red[: len(owner)], owner):
        raise ValueError(
            f"ranges: the reduced ranges ({names[2]}) of one output range overlap "
            "(reduced rows would count twice)"
        )
    return rng, slices, red


def _overlap(t: torch.Tensor, group: torch.Tensor) -> bool:
    """Whether two non-empty ranges [start, end) of ``t`` in the same group intersect."""
    keep = t[:, 1] > t[:, 0]
    t, group = t[keep], group[keep]
    if len(t) < 2:
        return False
    order = torch.argsort(group * (t[:, 0].max() + 1) + t[:, 0])
    t, group = t[order], group[order]
    same = group[1:] == group[:-1]
    return bool((same & (t[1:, 0] < t[:-1, 1])).any())


def _indices(ranges: torch.Tensor) -> torch.Tensor:
    """The concatenated ``arange(a0, a1)`` of the rows ``[a0, a1)`` of ``ranges``, vectorised."""
    lens = ranges[:, 1] - ranges[:, 0]
    starts = torch.cumsum(lens, 0) - lens
    n = int(lens.sum())
    return torch.arange(n, device=ranges.device) + torch.repeat_interleave(
        ranges[:, 0] - starts, lens
    )


def _global_index(res: Any, jidx: torch.Tensor) -> Any:
    """Indices into the gathered rows -> indices into the full reduced index (-1 stays)."""
    if isinstance(res, tuple):
        return tuple(_global_index(t, jidx) for t in res)
    if res.dtype != torch.int64:
        return res
    if jidx.numel() == 0:
        return torch.full_like(res, -1)
    return torch.where(res >= 0, jidx[res.clamp(min=0)], res)


def _assemble(pieces: list, rows: torch.Tensor, n_out: int) -> Any:
    """Rows outside every range: 0 for values, -1 for indices."""
    if isinstance(pieces[0], tuple):
        return tuple(_assemble([p[k] for p in pieces], rows, n_out) for k in range(len(pieces[0])))
    src = torch.cat(pieces)
    fill = -1 if src.dtype == torch.int64 else 0
    out = torch.full((n_out, *src.shape[1:]), fill, dtype=src.dtype, device=src.device)
    return out.index_copy(0, rows, src)
