"""Reductions sharded over the processes of a ``torch.distributed`` group (gloo for CPU
tensors, NCCL for CUDA tensors; launched with ``torchrun``).

Every rank holds a contiguous shard of the i-rows and a shard of the j-rows of every variable;
the global row order is the rank order (rank q's rows come after rank q-1's).  Parameters are
replicated.  ``DistributedGenred(...)(*shards)`` returns this rank's rows of the output, with
arg indices global (into the rank-ordered concatenation of the reduced rows).

Forward: the shards of the reduced category (j for ``axis=1``) go round a ring -- rank r sends
to r-1 and receives from r+1, the next transfer posted before the kernel runs on the shard in
hand -- and every rank reduces its output rows over each shard in turn
(:func:`tvmred.genred.run_states`), makes the arg positions global (``RedDef.shift``) and
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

import datetime
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .. import dispatch, genred, settings
from .. import lazynodes as ln
from ..genred import check_args, run_states
from ..lazy import LazyReduction
from ..reductions import Chain, Gathered, Reduction

Shape = tuple[int, ...]
CAT_LABEL = {0: "i-rows (Vi)", 1: "j-rows (Vj)"}
_DATA, _ACC = 1, 2  # message tags (gloo matches on them; NCCL on the order, which is the same)
_ALIGN = 64  # bytes: segments of a packed shard start aligned, so the kernels take them as is
_CALLS: dict[int, int] = {}  # id(group) -> sharded calls made so far on this rank


class CommunicationError(RuntimeError):
    """An exchange with the other ranks failed or timed out: a rank did not make the same
    sharded call (forward or backward), or died."""


# ------------------------------------------------------------------------------ the group


class _Comm:
    """The process group as a ring: this rank, its neighbours, where transfers are staged
    (CUDA memory for NCCL, host memory otherwise), and the timeout of every wait."""

    def __init__(self, group: Optional[Any], timeout: Optional[float]) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "tvmred.torch.distributed needs an initialised process group: call "
                "torch.distributed.init_process_group (torchrun sets its environment)"
            )
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given group")
        self.size = dist.get_world_size(self.group)
        self.seconds = float(timeout if timeout is not None else settings.dist_timeout())
        self.timeout = datetime.timedelta(seconds=self.seconds)
        self.backend = str(dist.get_backend(self.group))
        self.left = dist.get_global_rank(self.group, (self.rank - 1) % self.size)
        self.right = dist.get_global_rank(self.group, (self.rank + 1) % self.size)

    def staging(self, device: torch.device) -> torch.device:
        """Where tensors of ``device`` travel: CUDA memory when NCCL can carry them, else the
        host (gloo)."""
        if device.type == "cuda" and "nccl" in self.backend:
            return device
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def wait(self, works: Sequence[Any], what: str) -> None:
        try:
            for w in works:
                w.wait(self.timeout)
        except RuntimeError as e:
            raise CommunicationError(
                f"rank {self.rank}: {what} failed or timed out after {self.seconds:g} s -- "
                "every rank of the group must make the same sharded calls, forward and "
                f"backward, in the same order ({e})"
            ) from None

    def all_gather_json(self, obj: Any, what: str) -> list:
        """Every rank's ``obj`` (JSON-able), in rank order: two small all_gathers."""
        dev = self.staging(torch.device("cpu"))
        data = json.dumps(obj).encode()
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        ns = [torch.empty_like(n) for _ in range(self.size)]
        self.wait([dist.all_gather(ns, n, group=self.group, async_op=True)], what)
        lens = [int(x) for x in ns]
        buf = torch.zeros(max(lens), dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(dev)
        bufs = [torch.empty_like(buf) for _ in range(self.size)]
        self.wait([dist.all_gather(bufs, buf, group=self.group, async_op=True)], what)
        return [json.loads(bytes(b[:k].cpu().numpy())) for b, k in zip(bufs, lens)]

    def all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """The sum of ``t`` over the ranks."""
        s = t.to(self.staging(t.device)).contiguous()
        self.wait([dist.all_reduce(s, group=self.group, async_op=True)], what)
        return s.to(t.device)

    def exchange(self, sends: list, recvs: list) -> list:
        """Post ``(tensor, tag)`` sends to the left neighbour and receives from the right one."""
        ops = [dist.P2POp(dist.isend, t, self.left, self.group, tag) for t, tag in sends]
        ops += [dist.P2POp(dist.irecv, t, self.right, self.group, tag) for t, tag in recvs]
        return dist.batch_isend_irecv(ops) if ops else []

    def ring(
        self,
        own: list[torch.Tensor],
        shapes: Callable[[int], list[Shape]],
        step: Callable[[int, list[torch.Tensor]], Optional[torch.Tensor]],
        acc_shape: Optional[Callable[[int], Shape]] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Optional[torch.Tensor]:
        """Call ``step(q, shard of rank q)`` for q = rank, rank+1, ..., rank-1 (mod size):
        ``own`` is this rank's shard, ``shapes(q)`` the shapes of rank q's; the next shard's
        transfer is posted before ``step`` runs.  With ``acc_shape``, ``step`` returns a
        partial result for rank q's rows (shape ``acc_shape(q)``): the partials of all ranks
        are summed along the ring and the sum for this rank's rows is returned."""
        P, r, stage = self.size, self.rank, self.staging(device)
        cur, flat = list(own), _pack(own, stage) if own and P > 1 else None
        carry: Optional[torch.Tensor] = None
        for t in range(P):
            q = (r + t) % P
            sends, recvs, nxt, acc_in = [], [], None, None
            if own and t < P - 1:
                nxt = torch.empty(
                    _packed_size(shapes((q + 1) % P), dtype), dtype=dtype, device=stage
                )
                sends.append((flat, _DATA))
                recvs.append((nxt, _DATA))
            if acc_shape is not None and t > 0:
                acc_in = torch.empty(acc_shape(q), dtype=dtype, device=stage)
                sends.append((carry, _ACC))
                recvs.append((acc_in, _ACC))
            works = self.exchange(sends, recvs)
            partial = step(q, cur)
            self.wait(works, f"the ring transfer of rank {(q + 1) % P}'s rows")
            if acc_shape is not None:
                assert partial is not None
                total = partial if acc_in is None else partial + acc_in.to(device)
                carry = total.to(stage).contiguous()
            if nxt is not None:
                flat, cur = nxt, _unpack(nxt, shapes((q + 1) % P), device)
        if acc_shape is None:
            return None
        assert carry is not None
        if P == 1:
            return carry.to(device)
        mine = torch.empty(acc_shape(r), dtype=dtype, device=stage)
        self.wait(self.exchange([(carry, _ACC)], [(mine, _ACC)]), "the return of the sums")
        return mine.to(device)


def _offsets(shapes: list[Shape], dtype: torch.dtype) -> list[int]:
    """Start of each segment in a packed buffer (elements), each aligned to _ALIGN bytes."""
    step = max(1, _ALIGN // torch.empty(0, dtype=dtype).element_size())
    offs, at = [], 0
    for s in shapes:
        offs.append(at)
        n = 1
        for d in s:
            n *= d
        at += -(-n // step) * step
    return offs + [at]


def _packed_size(shapes: list[Shape], dtype: torch.dtype) -> int:
    return _offsets(shapes, dtype)[-1]


def _pack(ts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors in one flat buffer on ``device`` (one message per ring step)."""
    offs = _offsets([tuple(t.shape) for t in ts], ts[0].dtype)
    flat = torch.zeros(offs[-1], dtype=ts[0].dtype, device=device)
    for t, o in zip(ts, offs):
        flat[o : o + t.numel()].copy_(t.reshape(-1))
    return flat


def _unpack(flat: torch.Tensor, shapes: list[Shape], device: torch.device) -> list[torch.Tensor]:
    flat = flat.to(device)
    offs = _offsets(shapes, flat.dtype)
    out = []
    for s, o in zip(shapes, offs):
        n = 1
        for d in s:
            n *= d
        out.append(flat[o : o + n].view(s))
    return out


# ------------------------------------------------------------------------- the agreement


@dataclass(frozen=True)
class Layout:
    """What every rank knows of a call after the metadata exchange."""

    rank: int
    size: int
    rows: tuple[tuple[int, int], ...]  # rows[q] = (i-rows, j-rows) of rank q
    shapes: tuple[tuple[Shape, ...], ...]  # shapes[q][k] = shape of argument k on rank q
    batch: Shape  # the broadcast batch shape, () without batch dimensions

    def offset(self, q: int, cat: int) -> int:
        """Global index of rank q's first row of category ``cat``."""
        return sum(self.rows[p][cat] for p in range(q))


def _core(r: Reduction, k: int) -> int:
    return 1 if r.args[k].params[2] == 2 else 2


def _what(r: Reduction) -> str:
    extra = f", K={r.k}" if r.k is not None else ""
    return (
        f"{r.red}(axis={1 - r.out_cat}{extra}, dtype_acc={r.dtype_acc}, "
        f"sum_scheme={r.sum_scheme}) of {r.formula}"
    )


def _local_meta(r: Reduction, args: Sequence[Any], call: int) -> dict:
    """This rank's metadata: its argument error, if any, or the shapes and flags."""
    meta: dict[str, Any] = {"call": call, "what": _what(r), "error": None}
    try:
        if len(args) != r.nargs or not all(isinstance(a, torch.Tensor) for a in args):
            check_args(r, args)  # raises the single-process error
        batch = dispatch.batch_shape(r, args) or ()
        plain = [a[(0,) * (a.dim() - _core(r, k))] for k, a in enumerate(args)]
        dtype, n_out, n_red = check_args(r, plain)
    except (ValueError, TypeError) as e:
        meta["error"] = [type(e).__name__, str(e)]
        return meta
    rows = [n_out, n_red] if r.out_cat == 0 else [n_red, n_out]
    meta.update(
        shapes=[list(a.shape) for a in args],
        batch=list(batch),
        dtype=dtype,
        device=args[0].device.type,
        grad=[bool(a.requires_grad and torch.is_grad_enabled()) for a in args],
        rows=rows,
    )
    return meta


def _agree(r: Reduction, metas: list[dict], comm: _Comm) -> Layout:
    """Check every rank's metadata (each rank runs the same checks on the same data, so all
    raise the same exception) and return the call's layout."""
    m0 = metas[0]
    for q, m in enumerate(metas):
        if m["what"] != m0["what"]:
            raise ValueError(
                f"the ranks called different sharded reductions: rank 0 {m0['what']}, "
                f"rank {q} {m['what']}"
            )
        if m["call"] != m0["call"]:
            raise ValueError(
                f"rank 0 is at its sharded call #{m0['call']} but rank {q} at #{m['call']}: "
                "every rank must make the same sharded calls in the same order"
            )
    bad = [q for q, m in enumerate(metas) if m["error"]]
    if bad:
        kind, msg = metas[bad[0]]["error"]
        also = f" (and an error on ranks {bad[1:]})" if len(bad) > 1 else ""
        raise (TypeError if kind == "TypeError" else ValueError)(f"rank {bad[0]}: {msg}{also}")
    for key, label, err in (("dtype", "dtypes", TypeError), ("device", "device types", ValueError)):
        if any(m[key] != m0[key] for m in metas):
            detail = ", ".join(f"rank {q}: {m[key]}" for q, m in enumerate(metas))
            raise err(f"mismatched {label} across ranks ({detail})")
    if m0["device"] != "cuda" and comm.backend == "nccl":
        raise ValueError("an NCCL group carries CUDA tensors only: use gloo for CPU tensors")
    for k in range(r.nargs):
        cat = r.args[k].params[2]
        rest = [
            m["shapes"][k][:-2] + m["shapes"][k][-1:] if cat != 2 else m["shapes"][k] for m in metas
        ]
        for q in range(1, len(metas)):
            if rest[q] != rest[0]:
                what = (
                    "every dimension but the rows"
                    if cat != 2
                    else "shape (parameters are replicated)"
                )
                raise ValueError(
                    f"argument {r.describe(k)} has shape {tuple(metas[0]['shapes'][k])} on rank 0 "
                    f"but {tuple(metas[q]['shapes'][k])} on rank {q}: shards must agree in {what}"
                )
        flags = [m["grad"][k] for m in metas]
        if any(f != flags[0] for f in flags):
            raise ValueError(
                f"argument {r.describe(k)} requires grad on ranks "
                f"{[q for q, f in enumerate(flags) if f]} but not on the others: the backward "
                "is a collective, so requires_grad (and grad mode) must agree across ranks"
            )
    for q, m in enumerate(metas):
        for cat in (0, 1):
            if m["rows"][cat] == 0:
                raise ValueError(
                    f"rank {q} holds no {CAT_LABEL[cat]}: every rank needs at least one row of "
                    "each category"
                )
    return Layout(
        comm.rank,
        comm.size,
        tuple((m["rows"][0], m["rows"][1]) for m in metas),
        tuple(tuple(tuple(s) for s in m["shapes"]) for m in metas),
        tuple(m0["batch"]),
    )


def _check_shardable(r: Reduction) -> None:
    cats = {v.params[2] for v in r.args}
    if not {0, 1} <= cats:
        raise ValueError(
            "a sharded reduction needs variables of both categories (Vi and Vj): with none of "
            "one, there is nothing to shard -- use tvmred.torch.Genred on each rank"
        )


# ------------------------------------------------------------------------------- the call


def _positions(r: Reduction, cat: int) -> list[int]:
    return [k for k, v in enumerate(r.args) if v.params[2] == cat]


def _put(args: Sequence[torch.Tensor], ks: list[int], shard: list[torch.Tensor]) -> list:
    out = list(args)
    for k, t in zip(ks, shard):
        out[k] = t
    return out


class _Call:
    """One sharded call, agreed by every rank: evaluates reductions whose reduced-category
    arguments are distributed as in :attr:`layout` (the forward call's arguments, and the
    gradient steps, which take them followed by output-indexed extras)."""

    def __init__(self, comm: _Comm, r: Reduction, layout: Layout, number: int, args) -> None:
        self.comm, self.r, self.layout, self.number = comm, r, layout, number
        self.dtype = args[0].dtype
        self.device = args[0].device
        self.dt = str(self.dtype).removeprefix("torch.")

    def problems(self, r: Reduction, args: Sequence[torch.Tensor]) -> list[list]:
        if not self.layout.batch:
            return [list(args)]
        return dispatch.split_batch(r, args, self.layout.batch)

    def stack(self, outs: list) -> Any:
        return dispatch.stack_batch(outs, self.layout.batch) if self.layout.batch else outs[0]

    def _ring(self, r: Reduction, cat: int, args, step, acc_shape=None):
        """The ring over the arguments of category ``cat`` (those of the shards)."""
        ks = _positions(r, cat)
        return self.comm.ring(
            [args[k] for k in ks],
            lambda q: [self.layout.shapes[q][k] for k in ks],
            lambda q, shard: step(q, _put(args, ks, shard)),
            acc_shape,
            self.dtype,
            self.device,
        )

    def states(self, r: Reduction, args: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per batch index, the state of ``r`` over all the reduced rows, for this rank's
        output rows: the partial states of the shards merged by ``RedDef.combine`` in global
        order (two runs: the shards from this rank up, then from rank 0 up)."""
        red, rdef, me = 1 - r.out_cat, r.rdef, self.comm.rank
        variant = r.resolve(self.dt)[1]
        runs: dict[bool, list] = {True: [None] * self.nbatch, False: [None] * self.nbatch}

        def fold(a: Optional[list], b: list) -> list:
            return b if a is None else rdef.combine([torch.stack(p) for p in zip(a, b)], variant)

        def step(q: int, full: list) -> None:
            for b, prob in enumerate(self.problems(r, full)):
                st = run_states(r, prob)[1]
                if rdef.index_states is not None:  # int64 before the shift: N may pass 2^31
                    sl = rdef.index_states(r.k)
                    st[sl] = [t.long() for t in st[sl]]
                st = rdef.shift(st, r.k, self.layout.offset(q, red))
                runs[q >= me][b] = fold(runs[q >= me][b], st)

        self._ring(r, red, args, step)
        return [h if lo is None else fold(lo, h) for lo, h in zip(runs[False], runs[True])]

    @property
    def nbatch(self) -> int:
        n = 1
        for s in self.layout.batch:
            n *= s
        return n

    def values(
        self, r: Reduction, args: Sequence[torch.Tensor]
    ) -> tuple[Any, Optional[torch.Tensor]]:
        """(output rows of this rank, selected global positions (*batch, n, K, D) or None)."""
        if r.red == "Sum" and r.formula.is_zero:
            zero = run_states(r, self.problems(r, args)[0])[0]
            return self.stack([zero] * self.nbatch), None
        variant = r.resolve(self.dt)[1]
        states = self.states(r, args)
        outs = [r.rdef.finalize(s, variant, self.dtype) for s in states]
        sel = None
        if r.rdef.index_states is not None:
            sel = self.stack([r.rdef.selected(s, r.k) for s in states])
        return self.stack(outs), sel

    def to_owners(self, r: Reduction, args: Sequence[torch.Tensor]) -> torch.Tensor:
        """A reduction indexed by the forward's reduced category (a gradient step): each rank
        reduces over its own rows of the other category for every shard as it goes by, and
        the partial sums travel round the ring to the shard's owner."""
        cat, d, batch = r.out_cat, r.formula.dim, self.layout.batch

        def step(q: int, full: list) -> torch.Tensor:
            return self.stack([run_states(r, p)[0] for p in self.problems(r, full)])

        def shape(q: int) -> Shape:
            return (*batch, self.layout.rows[q][cat], d)

        out = self._ring(r, cat, args, step, shape)
        assert out is not None
        return out

    # ------------------------------------------------------------------------ backward

    def backward(self, args, outs, sel, g: torch.Tensor, ks: list[int]) -> list:
        r = self.r
        metas = self.comm.all_gather_json({"call": self.number, "grads": ks}, "the backward")
        if any(m != metas[0] for m in metas):
            detail = "; ".join(f"rank {q}: {m}" for q, m in enumerate(metas))
            raise ValueError(
                "the ranks ran the backward of different sharded calls, or for different "
                f"arguments ({detail})"
            )
        res: list[Optional[torch.Tensor]] = []
        for k in range(r.nargs):
            if k not in ks:
                res.append(None)
                continue
            plan = r.vjp(k)
            grad = None
            if isinstance(plan, Chain):
                grad = self._chain(plan, args, outs, g)
            elif isinstance(plan, Gathered):
                grad = self._gathered(plan, k, args, sel, g)
            res.append(self._finish(k, grad, args[k]))
        return res

    def _chain(self, plan: Chain, args, outs, g) -> torch.Tensor:
        r = self.r
        results: list[torch.Tensor] = []
        for step in plan.steps:
            extra = []
            for e in step.extra:
                if isinstance(e, int) and plan.steps[e].red.out_cat != r.out_cat:
                    raise NotImplementedError("a gradient step reading a j-indexed step result")
                extra.append(g if e == "grad" else outs[0] if e == "out" else results[e])
            full = [*args, *extra]
            if step.red.out_cat == r.out_cat:
                results.append(self.values(step.red, full)[0])
            else:
                results.append(self.to_owners(step.red, full))
        return results[-1]

    def _gathered(self, plan: Gathered, k: int, args, sel: torch.Tensor, g) -> torch.Tensor:
        """Min/Max/KMin: the gradient flows through the selected (i, j) pairs (as torch.min):
        the selected rows are fetched from the shards as they go round, the parts evaluated
        locally, and -- for a j-variable -- the results sent back to the rows' owners."""
        r, lay = self.r, self.layout
        red = 1 - r.out_cat
        B, n_out, K, D = self.nbatch, sel.shape[-3], sel.shape[-2], sel.shape[-1]
        J = sel.reshape(B, n_out, K, D)
        g = g.reshape(B, n_out, K, D)
        ks = _positions(r, red)
        got = {
            p: torch.zeros(
                B, n_out, K, D, r.args[p].params[1], dtype=self.dtype, device=self.device
            )
            for p in ks
        }

        def fetch(q: int, full: list) -> None:
            lo, n = lay.offset(q, red), lay.rows[q][red]
            inside = ((J >= lo) & (J < lo + n)).unsqueeze(-1)
            at = (J - lo).clamp(0, n - 1)
            for b, prob in enumerate(self.problems(r, full)):
                for p in ks:
                    got[p][b] = torch.where(inside[b], prob[p][at[b]], got[p][b])

        self._ring(r, red, args, fetch)
        dim_k, on_red = r.args[k].params[1], r.args[k].params[2] == red
        total = torch.zeros(B, n_out, dim_k, dtype=self.dtype, device=self.device)
        sent = []
        for b, prob in enumerate(self.problems(r, args)):
            for kk in range(K):
                for u, spec in enumerate(plan.parts):
                    if spec is None:
                        continue
                    Jbu = J[b, :, kk, u]
                    sub = [got[p][b, :, kk, u] if p in got else prob[p] for p in range(r.nargs)]
                    gu = (g[b, :, kk, u] * (Jbu >= 0)).unsqueeze(1).contiguous()
                    res = run_states(spec, [*sub, gu])[0]
                    if on_red:
                        sent.append((b, Jbu, res))
                    else:
                        total[b] += res
        if not on_red:
            return total.reshape(*lay.batch, n_out, dim_k)

        def scatter(q: int, _: list) -> torch.Tensor:
            lo, n = lay.offset(q, red), lay.rows[q][red]
            acc = torch.zeros(B, n, dim_k, dtype=self.dtype, device=self.device)
            for b, Jbu, res in sent:
                m = (Jbu >= lo) & (Jbu < lo + n)
                acc[b].index_add_(0, Jbu[m] - lo, res[m])
            return acc.reshape(*lay.batch, n, dim_k)

        out = self.comm.ring(
            [],
            lambda q: [],
            scatter,
            lambda q: (*lay.batch, lay.rows[q][red], dim_k),
            self.dtype,
            self.device,
        )
        assert out is not None
        return out

    def _finish(self, k: int, res: Optional[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """The gradient of argument k in its shape: summed over broadcast batch dims; a
        parameter's summed over the output rows, then over the ranks."""
        if res is None:
            return torch.zeros_like(a)
        if self.r.args[k].params[2] == 2:
            res = res.sum(-2)
            res = res.sum_to_size(a.shape if a.dim() else (1,)).reshape(a.shape)
            return self.comm.all_reduce(res, f"the gradient of {self.r.names[k]}")
        return res.sum_to_size(a.shape)


class _ShardedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: _Call, *args: torch.Tensor):  # type: ignore[override]
        out, sel = call.values(call.r, args)
        outs = out if isinstance(out, tuple) else (out,)
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        ctx.call, ctx.nouts = call, len(outs)
        ctx.save_for_backward(*args, *outs, *([] if sel is None else [sel]))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[torch.Tensor]):  # type: ignore[override]
        call: _Call = ctx.call
        n = call.r.nargs
        saved = ctx.saved_tensors
        args, outs, sel = saved[:n], saved[n : n + ctx.nouts], saved[n + ctx.nouts :]
        ks = [k for k in range(n) if ctx.needs_input_grad[k + 1]]
        g = grads[0]
        g = torch.zeros_like(outs[0]) if g is None else g.contiguous()
        res = call.backward(args, outs, sel[0] if sel else None, g, ks)
        return (None, *res)


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
    _check_shardable(r)
    comm = _Comm(group, timeout)
    key = id(comm.group)
    number = _CALLS.get(key, 0)
    _CALLS[key] = number + 1
    metas = comm.all_gather_json(_local_meta(r, args, number), "the metadata exchange")
    layout = _agree(r, metas, comm)
    return _ShardedFn.apply(_Call(comm, r, layout, number, args), *args)


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
        _check_shardable(self.reduction)
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
    comm = _Comm(group, timeout)
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
