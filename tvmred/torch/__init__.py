"""PyTorch binding: ``from tvmred.torch import Genred`` (drop-in for ``pykeops.torch.Genred``).

Autograd: the backward of a reduction is the gradient plan of its reduction rule
(:meth:`tvmred.reductions.Reduction.vjp`), evaluated by further ``_GenredFn`` calls, so
gradients of any order work.  This module only wires the plans into torch's autograd.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import dispatch, genred
from ..genred import copy_into, placement, run_states
from ..reductions import Chain, Gathered, Plan, Reduction


class _GenredFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: Reduction, *args: torch.Tensor):  # type: ignore[override]
        out, state = run_states(r, args)
        outs = out if isinstance(out, tuple) else (out,)
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        ctx.r, ctx.nouts = r, len(outs)
        sel = [] if r.rdef.index_states is None else [r.rdef.selected(state, r.k)]
        ctx.save_for_backward(*args, *outs, *sel)
        return out

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):  # type: ignore[override]
        r: Reduction = ctx.r
        saved = ctx.saved_tensors
        args, outs, sel = (
            saved[: r.nargs],
            saved[r.nargs : r.nargs + ctx.nouts],
            saved[r.nargs + ctx.nouts :],
        )
        g = grads[0]
        res: list[Optional[torch.Tensor]] = [None]
        for k, a in enumerate(args):
            if not ctx.needs_input_grad[k + 1] or g is None:
                res.append(None)
                continue
            grad = _evaluate(r.vjp(k), r, k, args, outs, sel, g.contiguous())
            res.append(_finish(r, k, grad, a))
        return tuple(res)


def _evaluate(plan: Plan, r: Reduction, k: int, args, outs, sel, g) -> Optional[torch.Tensor]:
    if plan is None:
        return None
    if isinstance(plan, Chain):
        results: list[torch.Tensor] = []
        for step in plan.steps:
            extra = [
                g if e == "grad" else outs[0] if e == "out" else results[e] for e in step.extra
            ]
            results.append(_GenredFn.apply(step.red, *args, *extra))
        return results[-1]
    assert isinstance(plan, Gathered)
    return _gathered(plan, r, k, args, sel[0], g)


def _gathered(plan: Gathered, r: Reduction, k: int, args, idx: torch.Tensor, g: torch.Tensor):
    """Min/Max/KMin: the gradient flows through the selected (i, j) pairs, as torch.min does:
    for each selected index and component, the reduced-index arguments' selected rows are
    gathered, and the result scattered back when argument k is reduced-indexed."""
    red_cat = 1 - r.out_cat
    if any(v.params[2] == red_cat and len(b) == 0 for b, v in zip(args, r.args)):
        return None  # nothing was selected
    n_out, K, D = idx.shape
    g = g.reshape(n_out, K, D)
    total = None
    for kk in range(K):
        for u, spec in enumerate(plan.parts):
            if spec is None:
                continue
            J = idx[:, kk, u]
            Jc = J.clamp(min=0)
            gathered = [b[Jc] if v.params[2] == red_cat else b for b, v in zip(args, r.args)]
            gu = (g[:, kk, u] * (J >= 0)).unsqueeze(1).contiguous()
            res = _GenredFn.apply(spec, *gathered, gu)
            if r.args[k].params[2] == red_cat:
                res = res.new_zeros(args[k].shape[0], res.shape[1]).index_add(0, Jc, res)
            total = res if total is None else total + res
    return total


def _finish(r: Reduction, k: int, res: Optional[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    if res is None:
        return torch.zeros_like(a)
    if r.args[k].params[2] == 2 and res.dim() == 2:  # parameter: summed over output rows
        res = res.sum(0)
    return res.reshape(a.shape)


class Genred(genred.Genred):
    __doc__ = genred.Genred.__doc__

    def __call__(
        self,
        *args: torch.Tensor,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[torch.Tensor] = None,
    ):
        r = self.reduction
        dev, host = placement(args, backend, device_id)
        if host:  # pykeops' "_host" backends: compute on the GPU, return on the CPU
            args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)
        if out is not None:
            with torch.no_grad():
                res = dispatch.call(r, args, lambda *a: run_states(r, a)[0], ranges)
            if isinstance(res, tuple):
                raise ValueError(f"out= is not supported for {self.reduction_op} (two outputs)")
            return copy_into(res.cpu() if host else res, out)
        res = dispatch.call(r, args, lambda *a: _GenredFn.apply(r, *a), ranges)
        if host:
            res = tuple(t.cpu() for t in res) if isinstance(res, tuple) else res.cpu()
        return res


__all__ = ["Genred"]
