"""Gradient plans: how a derivative of a reduction is computed by further reductions -- a
:class:`Chain` of reductions, or a :class:`Gathered` evaluation through the selected (i, j)
pairs of Min/Max/KMin -- evaluated by each binding with its own arrays (``apply`` runs one
reduction; ``ops`` gives the few array operations a gathered plan needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

Reduction = Any  # tvmred.reductions.core.Reduction (which imports this module)


@dataclass(frozen=True)
class Step:
    """One reduction of a backward pass, called with the forward call's arguments followed by
    ``extra``: "grad" (the incoming gradient), "out" (the forward output), or the index of an
    earlier step of the same :class:`Chain` (its result)."""

    red: Reduction
    extra: tuple = ()


@dataclass(frozen=True)
class Chain:
    """The gradient is the result of the last step."""

    steps: tuple[Step, ...]

    def evaluate(self, args: Sequence, values: dict, apply: Callable) -> Any:
        """The last step's result, each step run by a binding's ``apply(red, *arrays)``; its
        extra arguments are ``values[name]`` (a list of arrays) or an earlier step's result."""
        results: list = []
        for step in self.steps:
            extra: list = []
            for e in step.extra:
                extra.extend([results[e]] if isinstance(e, int) else values[e])
            results.append(apply(step.red, *args, *extra))
        return results[-1]


@dataclass(frozen=True)
class Gathered:
    """The gradient flows through the selected (i, j) pairs (Min, Max, KMin, as torch.min):
    ``parts[u]`` is a Sum over the output rows of the gradient of component u of F, written
    with output-indexed variables only; the caller gathers the selected rows of the
    reduced-index arguments and of the gradient, and scatters the result back."""

    parts: tuple[Optional[Reduction], ...]

    def gradient(self, r: Reduction, k: int, args, idx, g, apply: Callable, ops: Any) -> Any:
        """The gradient w.r.t. argument k (None: no reduced-index rows, all indices -1) for the
        incoming gradient ``g`` of the selected values, ``idx`` the selected positions
        (n_out, K, D); array operations from the binding's ``ops``: ``clamp0(J)``,
        ``take(b, J)`` (rows J of b), ``column(g, J)`` (g where J >= 0, as a column),
        ``scatter(n, J, res)`` (res's rows added into n rows at J)."""
        red_cat = 1 - r.out_cat
        if _nothing_selected(r, args):
            return None
        n_out, K, D = idx.shape
        g = g.reshape(n_out, K, D)
        total = None
        for kk in range(K):
            for u, spec in enumerate(self.parts):
                if spec is None:
                    continue
                J = idx[:, kk, u]
                Jc = ops.clamp0(J)
                gathered = [ops.take(b, Jc) if c == red_cat else b for b, c in zip(args, r.cats)]
                res = apply(spec, *gathered, ops.column(g[:, kk, u], J))
                if r.cats[k] == red_cat:
                    res = ops.scatter(args[k].shape[0], Jc, res)
                total = res if total is None else total + res
        return total

    def tangent(self, r: Reduction, ks: tuple, args, ts, idx, apply: Callable, ops: Any):
        """d out[i, k, u] = component u of dF at the selected pair (i, idx[i, k, u]), given
        the tangents ``ts`` of the arguments ``ks``: the columns (n_out,) of the result, in
        (k, u) order (None: no reduced-index rows)."""
        if _nothing_selected(r, args):
            return None
        red_cat = 1 - r.out_cat
        K = idx.shape[1]
        cols = []
        for kk in range(K):
            for u, spec in enumerate(self.parts):
                J = idx[:, kk, u]
                Jc = ops.clamp0(J)
                sub = [ops.take(b, Jc) if c == red_cat else b for b, c in zip(args, r.cats)]
                sub += [ops.take(t, Jc) if r.cats[k] == red_cat else t for t, k in zip(ts, ks)]
                cols.append(apply(spec, *sub)[:, 0] * (J >= 0))
        return cols


def _nothing_selected(r: Reduction, args) -> bool:
    """No reduced-index rows (N = 0 on this axis): every selected index is -1."""
    red_cat = 1 - r.out_cat
    return any(c == red_cat and b.shape[-2] == 0 for b, c in zip(args, r.cats))


Plan = Union[Chain, Gathered, None]


def plan_reductions(plan: Plan) -> list[Reduction]:
    """The reductions a gradient plan evaluates."""
    if isinstance(plan, Chain):
        return [s.red for s in plan.steps]
    if isinstance(plan, Gathered):
        return [p for p in plan.parts if p is not None]
    return []
