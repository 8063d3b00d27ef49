"""Reductions sharded over the processes of a ``torch.distributed`` group (gloo for CPU
tensors, NCCL for CUDA tensors; launched with ``torchrun``).

Every rank holds a contiguous shard of the i-rows and a shard of the j-rows of every variable;
the global row order is the rank order (rank q's rows come after rank q-1's).  Parameters are
replicated.  ``DistributedGenred(...)(*shards)`` returns this rank's rows of the output, with
arg indices global (into the rank-ordered concatenation of the reduced rows).

Forward: the shards of the reduced category (j for ``axis=1``) go round a ring -- rank r sends
to r-1 and receives from r+1, the next transfer posted before the kernel runs on the shard in
hand -- and every rank reduces its output rows over each shard in turn
(:func:`tvmred.launch.run_states`), makes the arg positions global (``RedDef.shift``) and
merges the partial states, in global order, with the reduction's own ``RedDef.combine``.

Backward: the reduction's gradient plan (:meth:`tvmred.reductions.Reduction.vjp`).  A step whose
output is indexed like the forward output is a sharded reduction again (the reduced rows go
round once more); a step indexed by the reduced category (the gradient w.r.t. a j-variable of
an ``axis=1`` reduction) is evaluated per shard over the local output rows, and the partial
sum travels round the ring with that shard, each rank adding its part, until it reaches the
owner.  ``Gathered`` plans (Min, Max, KMin) fetch the selected rows from the shards as they go
by and send the gradients back to their owners the same way.  Parameter gradients are
all-reduced.  The backward is first order only (``once_differentiable``).

Every call starts with one exchange of metadata (which reduction and call, shapes, dtype,
device, gradient flags, any local argument error): each rank then checks every rank's metadata
and raises the same exception, so a bad shard is an error on every rank, never a hang, and every
wait has a timeout (``timeout=`` or ``$TVMRED_DIST_TIMEOUT``, default 300 s).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from .. import genred
from .. import lazynodes as ln
from ..lazy import LazyReduction
from ..reductions import Reduction
from .ring import Comm, CommunicationError
from .shardcall import Call, ShardedFn, agree, check_shardable, local_meta

_CALLS: dict[int, int] = {}  # id(group) -> sharded calls made so far on this rank


# --------------------------------------------------------------------------------- the API


def sharded_reduction(
    r: Reduction | LazyReduction,
    *args: torch.Tensor,
    group: Optional[Any] = None,
    timeout: Optional[float] = None,
) -> Any:
    """Evaluate the reduction ``r`` on this rank's shards ``args``, collectively with the other
    ranks of ``group`` (default: the world): this rank's output rows, differentiable (first
    order) w.r.t. every argument.  The entry point for anything that builds a
    :class:`~tvmred.reductions.Reduction` (``DistributedGenred``), and for LazyTensor
    reductions: ``r`` a reduction made with ``call=False`` from LazyTensors of this rank's
    shards (``K.sum(dim=1, call=False)``), ``args`` its symbolic variables if any.

    Communicated per call: the metadata (two all_gathers of ~0.3 KB per rank), then the
    shards of the reduced-category variables round the ring (each rank sends P-1 shards)."""
    if isinstance(r, LazyReduction):
        if r.kwargs:
            raise ValueError(
                f"a sharded LazyTensor reduction takes no {', '.join(sorted(r.kwargs))}: "
                "the shards compute where they are, without ranges"
            )
        args, r = tuple(r.full_arguments(args)), ln.reduction(r.spec)
    check_shardable(r)
    comm = Comm(group, timeout)
    key = id(comm.group)
    number = _CALLS.get(key, 0)
    _CALLS[key] = number + 1
    metas = comm.all_gather_json(local_meta(r, args, number), "the metadata exchange")
    layout = agree(r, metas, comm)
    return ShardedFn.apply(Call(comm, r, layout, number, args), *args)


class DistributedGenred(genred.Genred):
    """``Genred`` over shards held by the ranks of a ``torch.distributed`` group.

    Same arguments as :class:`tvmred.torch.Genred`, plus ``group`` (default: the world) and
    ``timeout`` (seconds any exchange waits for the other ranks; default
    ``$TVMRED_DIST_TIMEOUT`` or 300).  Call it on every rank with that rank's shards -- a
    contiguous block of the i-rows and one of the j-rows of every variable (batch dimensions
    allowed, the same on every rank), the parameters replicated -- to get that rank's rows of
    the output: ``c_i = Red_j F(x_i, y_j, p)`` over all the j of all the ranks (``axis=1``),
    or ``c_j`` over all the i (``axis=0``).  Arg indices are global (rank-ordered rows).
    Gradients (first order) w.r.t. i-, j- and parameter variables: each rank gets those of its
    own rows; every rank must run the backward of every call (as with DDP).
    """

    def __init__(
        self,
        formula: str,
        aliases: Sequence[str],
        reduction_op: str = "Sum",
        axis: int = 0,
        opt_arg: Optional[int] = None,
        formula2: Optional[str] = None,
        dtype_acc: str = "auto",
        use_double_acc: bool = False,
        sum_scheme: str = "auto",
        group: Optional[Any] = None,
        timeout: Optional[float] = None,
    ) -> None:
        super().__init__(
            formula,
            aliases,
            reduction_op,
            axis,
            opt_arg=opt_arg,
            formula2=formula2,
            dtype_acc=dtype_acc,
            use_double_acc=use_double_acc,
            sum_scheme=sum_scheme,
        )
        check_shardable(self.reduction)
        self.group, self.timeout = group, timeout

    def __call__(self, *args: torch.Tensor) -> Any:
        return sharded_reduction(self.reduction, *args, group=self.group, timeout=self.timeout)


# ------------------------------------------------------------------------------- helpers


def rows_of(n: int, group: Optional[Any] = None) -> slice:
    """This rank's block of ``n`` rows in an even split (the first ``n % P`` ranks get one
    row more)."""
    g = group if group is not None else dist.group.WORLD
    P, r = dist.get_world_size(g), dist.get_rank(g)
    lo = r * (n // P) + min(r, n % P)
    return slice(lo, lo + n // P + (1 if r < n % P else 0))


def shard(t: torch.Tensor, group: Optional[Any] = None, dim: int = -2) -> torch.Tensor:
    """This rank's block of ``t`` along ``dim`` (the rows of a variable: -2), as
    :func:`rows_of` splits them."""
    s = rows_of(t.shape[dim], group)
    return t.narrow(dim, s.start, s.stop - s.start)


def gather(
    t: torch.Tensor, group: Optional[Any] = None, dim: int = -2, timeout: Optional[float] = None
) -> torch.Tensor:
    """Every rank's ``t`` concatenated along ``dim`` in rank order (the sizes along ``dim``
    may differ; everything else must agree): e.g. the whole output of a sharded reduction
    (``dim=0`` for a K-min output without batch dims).  A collective: call it on every rank."""
    comm = Comm(group, timeout)
    dim = dim % max(t.dim(), 1)
    metas = comm.all_gather_json({"shape": list(t.shape), "dtype": str(t.dtype)}, "gather")

    def rest(m: dict) -> list:
        return m["shape"][:dim] + m["shape"][dim + 1 :]

    if any(m["dtype"] != metas[0]["dtype"] or rest(m) != rest(metas[0]) for m in metas):
        detail = ", ".join(
            f"rank {q}: {m['dtype']} {tuple(m['shape'])}" for q, m in enumerate(metas)
        )
        raise ValueError(
            f"gather: the ranks' tensors differ beyond their size along dim {dim} ({detail})"
        )
    sizes = [m["shape"][dim] for m in metas]
    shape = list(t.shape)
    shape[dim] = max(sizes)
    pad = torch.zeros(shape, dtype=t.dtype, device=comm.staging(t.device))
    pad.narrow(dim, 0, t.shape[dim]).copy_(t)
    parts = [torch.empty_like(pad) for _ in sizes]
    comm.wait([dist.all_gather(parts, pad, group=comm.group, async_op=True)], "gather")
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim).to(t.device)


__all__ = [
    "CommunicationError",
    "DistributedGenred",
    "gather",
    "rows_of",
    "shard",
    "sharded_reduction",
]
