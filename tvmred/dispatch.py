"""Calls that are not one plain (M, N) reduction: batch dimensions and block-sparse ranges.

Both reduce to plain reductions evaluated by ``fn`` (the autograd Function for torch, the bare
kernel for numpy), through differentiable torch indexing, so gradients (of any order) follow:
  * batch dims: every batch index of the broadcast batch shape is one reduction; broadcast
    arguments are ``expand``-ed, so their gradients are summed over the broadcast dims;
  * ``ranges`` (pykeops' 6-tuple): each output cluster is one reduction over the rows of its
    reduced-index ranges, gathered; masked blocks are never computed, so time falls with
    sparsity.  Arg outputs are mapped back to global indices; output rows in no range get
    0 (values) or -1 (indices).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import torch

from .reductions import Reduction


def call(r: Reduction, args: Sequence[Any], fn: Callable, ranges: Any = None) -> Any:
    shape = batch_shape(r, args)
    if shape is not None:
        if ranges is not None:
            raise NotImplementedError("ranges together with batch dimensions are not supported")
        return _batched(r, args, fn, shape)
    if ranges is not None:
        return _ranged(r, args, fn, ranges)
    return fn(*args)


def _core(r: Reduction, k: int) -> int:
    return 1 if r.args[k].params[2] == 2 else 2


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
    rng, slices, red = (
        torch.as_tensor(t).long().cpu() for t in (ranges[:3] if r.out_cat == 0 else ranges[3:])
    )
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    n_out = n_red = 1
    for a, v in zip(args, r.args):
        if v.params[2] == out_cat:
            n_out = a.shape[0]
        elif v.params[2] == red_cat:
            n_red = a.shape[0]
    rng, red = rng.reshape(-1, 2), red.reshape(-1, 2)
    if slices.numel() != rng.shape[0] or (slices.numel() and slices[-1] > red.shape[0]):
        raise ValueError(
            f"ranges: {rng.shape[0]} output ranges, {slices.numel()} slices and "
            f"{red.shape[0]} reduced ranges do not match"
        )
    for name, t, n in (("output", rng, n_out), ("reduced", red, n_red)):
        if t.numel() and (t.min() < 0 or t.max() > n or (t[:, 1] < t[:, 0]).any()):
            raise ValueError(f"ranges: a {name} range is out of bounds (size {n})")
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
        for a, v in zip(args, r.args):
            cat = v.params[2]
            sub.append(
                a[o0:o1] if cat == out_cat else a.index_select(0, jidx) if cat == red_cat else a
            )
        pieces.append(_global_index(fn(*sub), jidx))
        rows.append(torch.arange(o0, o1, device=dev))
    rows_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=dev)
    if not pieces:  # nothing to compute: run an empty problem for the output's shape
        probe = [a[:0] if v.params[2] in (0, 1) else a for a, v in zip(args, r.args)]
        pieces = [fn(*probe)]
    return _assemble(pieces, rows_t, n_out)


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
