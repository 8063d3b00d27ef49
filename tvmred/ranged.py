"""Block-sparse reductions (pykeops' ``ranges``) in one kernel launch.

The output clusters' rows are copied into whole row blocks (a cluster starts a block), and
every (row block, reduced range) pair becomes a task of the ranged kernel (:mod:`tvmred.lower`,
``schedules/ranged.py``) -- long ranges cut into pieces so that every thread gets work.  The
kernel writes one partial state per task; each block's tasks (padded with empty ones to the
same count) are merged by the reduction's ``combine``, finalized, and the rows copied back:
rows in no cluster get 0 (values) or -1 (indices), as the per-cluster path gives them.
Arg indices are global (the kernel reads j = the range's start + its offset)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import hoist
from .arrays import Torch
from .dispatch import read_ranges
from .launch import aligned, check_args, column_chunks, invoke, kernel_of
from .launch import run as run_rows
from .reductions import Reduction

#: Reduced rows per task at least (a task's setup -- its block copy, its state -- is then
#: small beside its loop); ranges longer than the work per thread are cut into pieces
MIN_PIECE = 1024


@dataclass(frozen=True)
class Plan:
    """Where each output row goes in the padded row blocks, and the tasks."""

    gather: torch.Tensor  # (B * rb,) source row of each padded row, n_out for padding
    rows: torch.Tensor  # output rows that are in a cluster
    padded: torch.Tensor  # their padded rows
    tasks: torch.Tensor  # (B * per_block, 3) int32: (block, first j, count), block-major
    per_block: int


def plan(r: Reduction, ranges: Any, n_out: int, n_red: int, rb: int) -> Plan:
    """The tasks of a ranged call (vectorised: no Python loop over clusters).  Each cluster's
    reduced ranges are sorted and merged where contiguous (the same sum; arg reductions still
    see j in increasing order); consecutive clusters with the same ranges are merged into one
    group of rows (padding to whole blocks per group, not per grid cell)."""
    rng, slices, red = (t.numpy() for t in read_ranges(ranges, r.out_cat, n_out, n_red))
    n_c = len(rng)
    counts = np.diff(slices, prepend=0)
    owner = np.repeat(np.arange(n_c), counts)
    red, owner = red[: len(owner)], owner[: len(red)]
    # clusters in row order; their ranges sorted, empty ones dropped, contiguous ones joined
    rank = np.empty(n_c, np.int64)
    rank[np.argsort(rng[:, 0], kind="stable")] = np.arange(n_c)
    keep = red[:, 1] > red[:, 0]
    red, owner = red[keep], rank[owner[keep]]
    order = np.lexsort((red[:, 0], owner))
    red, owner = red[order], owner[order]
    new = np.ones(len(red), bool)
    new[1:] = (owner[1:] != owner[:-1]) | (red[1:, 0] != red[:-1, 1])
    first_of = np.nonzero(new)[0]
    last_of = np.append(first_of[1:], len(red)) - 1
    red = np.stack([red[first_of, 0], red[last_of, 1]], 1) if len(red) else red.reshape(0, 2)
    owner = owner[first_of]
    rows = rng[np.argsort(rng[:, 0], kind="stable")]
    per = np.bincount(owner, minlength=n_c)  # merged ranges per cluster (row order)
    start = np.concatenate([[0], np.cumsum(per)[:-1]])
    # a cluster joins the previous one: rows continue and the same ranges
    same = np.zeros(n_c, bool)
    if n_c > 1:
        same[1:] = (rows[1:, 0] == rows[:-1, 1]) & (per[1:] == per[:-1])
        idx = np.nonzero(same[owner])[0]  # ranges of candidate clusters
        differs = np.zeros(n_c, bool)
        mism = (red[idx] != red[idx - per[owner[idx]]]).any(1)
        np.logical_or.at(differs, owner[idx], mism)
        same &= ~differs
    same &= rows[:, 1] > rows[:, 0]
    lead = np.nonzero(~same)[0]  # each group's first cluster
    g_start = rows[lead, 0]
    g_end = np.maximum.reduceat(rows[:, 1], lead) if n_c else rows[:0, 1]
    g_rows = g_end - g_start
    nb = -(-g_rows // rb)
    first = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(np.int64)
    blocks = int(nb.sum())
    # output row -> padded row
    in_group = np.repeat(np.arange(len(lead)), g_rows)
    offset = np.arange(int(g_rows.sum())) - np.repeat(np.cumsum(g_rows) - g_rows, g_rows)
    rows_a = (np.repeat(g_start, g_rows) + offset).astype(np.int64)
    padded_a = (first[in_group] * rb + offset).astype(np.int64)
    gather = np.full(blocks * rb, n_out, dtype=np.int64)
    gather[padded_a] = rows_a
    # tasks: every block of a group with every range of its first cluster
    g_per, g_first = per[lead], start[lead]
    threads = int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count() or 1)
    pieces = (
        [red[a : a + n] for a, n in zip(g_first, g_per)]
        if int((nb * g_per).sum()) < 4 * threads
        else None
    )
    if pieces is not None:  # few (block, range) pairs: long ranges cut, every thread busy
        work = int(sum(int(k) * int((p[:, 1] - p[:, 0]).sum()) for k, p in zip(nb, pieces)))
        cut = max(MIN_PIECE, -(-work // (4 * threads)))
        pieces = [
            np.asarray(
                [(a, min(b, a + cut)) for a0, b in p for a in range(int(a0), int(b), cut)], np.int64
            ).reshape(-1, 2)
            for p in pieces
        ]
        g_per = np.asarray([len(p) for p in pieces], np.int64)
        red = np.concatenate(pieces) if pieces else red[:0]
        g_first = np.concatenate([[0], np.cumsum(g_per)[:-1]]).astype(np.int64)
    per_block = int(max(g_per.max() if len(g_per) else 0, 1))
    tasks = np.zeros((blocks, per_block, 3), dtype=np.int32)
    tasks[:, :, 0] = np.arange(blocks)[:, None]
    blk_group = np.repeat(np.arange(len(lead)), nb)  # block -> group
    k = np.arange(per_block)
    valid = k[None, :] < g_per[blk_group][:, None]
    src = (g_first[blk_group][:, None] + k[None, :])[valid]
    tasks[:, :, 1][valid] = red[src, 0]
    tasks[:, :, 2][valid] = red[src, 1] - red[src, 0]
    return Plan(
        torch.from_numpy(gather),
        torch.from_numpy(rows_a),
        torch.from_numpy(padded_a),
        torch.from_numpy(tasks.reshape(-1, 3)),
        per_block,
    )


def run(r: Reduction, args: Sequence[torch.Tensor], ranges: Any) -> list[torch.Tensor]:
    """pykeops' output(s) of ``r`` with ``ranges``, then the selected positions if any (as
    ``tvmred.torch.library.outputs``); no autograd."""
    dtype, n_out, n_red = check_args(r, args)
    h = hoist.plan(r, dtype)
    if hoist.pays(h, n_out, n_red, args[0].device.type):  # sub-formulas once per row, then pairs
        return run(
            h.main, [*args, *(run_rows(s, [args[k] for k in ks]) for s, ks in h.subs)], ranges
        )
    dev = args[0].device
    parts = [
        _states(part, args, dtype, dev, n_out, n_red, ranges)
        for part in column_chunks(r, dtype, dev.type, ranged=True)
    ]
    p = parts[0][1]
    state = parts[0][0] if len(parts) == 1 else r.rdef.join_states([s for s, _ in parts])
    variant = r.resolve(dtype)[1]
    res = r.rdef.finalize(state, variant, dtype)
    outs = list(res) if isinstance(res, tuple) else [res]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return [_unpad(o, p, n_out) for o in outs]


def _states(r, args, dtype, dev, n_out, n_red, ranges) -> tuple[list, Plan]:
    """The combined states of ``r`` on the padded rows, and the plan."""
    k, variant = kernel_of(r, dtype, dev, ranged=True)
    rb = k.row_block
    p = plan(r, ranges, n_out, n_red, rb)
    blocks = len(p.gather) // rb
    call = []
    for v in k.inputs:
        a = args[v.params[0]]
        pos, dim, cat = v.params
        if cat == 2:
            a = a.reshape(-1)
        elif cat == r.out_cat:  # the cluster rows in whole row blocks (zeros for padding)
            a = torch.cat([a, a.new_zeros(1, a.shape[1])])[p.gather.to(dev)].reshape(
                blocks, rb, dim
            )
        call.append(Torch.kernel_view(aligned(a.contiguous())))  # bfloat16: its bits
    tasks = p.tasks.to(dev)
    n_tasks = len(tasks)
    state = [
        torch.empty(n_tasks, rb, cols, dtype=getattr(torch, dt), device=dev) for cols, dt in k.state
    ]
    if n_tasks:
        invoke(k.fn, state[0], *call, tasks, *state, 1, n_red, n_tasks)
    # each block's tasks side by side: (per_block, blocks * rb, cols) partial states
    parts = [
        s.reshape(blocks, p.per_block, rb, -1).transpose(0, 1).reshape(p.per_block, blocks * rb, -1)
        for s in state
    ]
    if p.per_block == 1:
        return [s[0] for s in parts], p
    return r.rdef.combine(parts, variant), p


def _unpad(a: torch.Tensor, p: Plan, n_out: int) -> torch.Tensor:
    """The padded rows back to the output rows; rows in no cluster: 0, or -1 for indices."""
    fill = -1 if a.dtype in (torch.int32, torch.int64) else 0
    out = torch.full((n_out, *a.shape[1:]), fill, dtype=a.dtype, device=a.device)
    out[p.rows.to(a.device)] = a[p.padded.to(a.device)]
    return out


def output(r: Reduction, args: Sequence[torch.Tensor], ranges: Any) -> Any:
    """pykeops' output(s) only (no selected positions), without autograd."""
    outs = run(r, args, ranges)
    n = len(outs) - int(r.rdef.index_states is not None)
    return outs[0] if n == 1 else tuple(outs[:n])
