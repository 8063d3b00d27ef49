"""One sharded call (:mod:`tvmred.torch.distributed`): the agreement every rank reaches from
the metadata exchange (:class:`Layout`, the same error on every rank), and the evaluation of
the forward reduction and of its gradient plan over shards going round the ring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .. import dispatch
from ..launch import check_args, run_states
from ..reductions import Chain, Gathered, Reduction
from .ring import (
    Comm,
    Shape,
)

ROWS_LABEL = {0: "i-rows (Vi)", 1: "j-rows (Vj)"}


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


def local_meta(r: Reduction, args: Sequence[Any], call: int) -> dict:
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


def agree(r: Reduction, metas: list[dict], comm: Comm) -> Layout:
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
                    f"rank {q} holds no {ROWS_LABEL[cat]}: every rank needs at least one row of "
                    "each category"
                )
    return Layout(
        comm.rank,
        comm.size,
        tuple((m["rows"][0], m["rows"][1]) for m in metas),
        tuple(tuple(tuple(s) for s in m["shapes"]) for m in metas),
        tuple(m0["batch"]),
    )


def check_shardable(r: Reduction) -> None:
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


class Call:
    """One sharded call, agreed by every rank: evaluates reductions whose reduced-category
    arguments are distributed as in :attr:`layout` (the forward call's arguments, and the
    gradient steps, which take them followed by output-indexed extras)."""

    def __init__(self, comm: Comm, r: Reduction, layout: Layout, number: int, args) -> None:
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
        outs = [r.rdef.finalize(s, variant, self.dt) for s in states]
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


class ShardedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: Call, *args: torch.Tensor):  # type: ignore[override]
        out, sel = call.values(call.r, args)
        outs = out if isinstance(out, tuple) else (out,)
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        ctx.call, ctx.nouts = call, len(outs)
        ctx.save_for_backward(*args, *outs, *([] if sel is None else [sel]))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[torch.Tensor]):  # type: ignore[override]
        call: Call = ctx.call
        n = call.r.nargs
        saved = ctx.saved_tensors
        args, outs, sel = saved[:n], saved[n : n + ctx.nouts], saved[n + ctx.nouts :]
        ks = [k for k in range(n) if ctx.needs_input_grad[k + 1]]
        g = grads[0]
        g = torch.zeros_like(outs[0]) if g is None else g.contiguous()
        res = call.backward(args, outs, sel[0] if sel else None, g, ks)
        return (None, *res)
