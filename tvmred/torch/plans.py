"""Derivatives of a reduction with torch tensors: the gradient plans of
:mod:`tvmred.reductions` (:meth:`~tvmred.reductions.Reduction.vjp` for reverse mode,
:meth:`~tvmred.reductions.Reduction.jvp` for forward mode) evaluated by further reductions.

Every reduction of a plan goes through ``apply(red, *tensors) -> tensor``: the autograd
Function in eager mode (so derivatives of derivatives follow, to any order), the custom op
under ``torch.compile``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import torch

from ..reductions import Chain, Gathered, Reduction

Apply = Callable[..., torch.Tensor]
_HALF = (torch.float16, torch.bfloat16)


def saved(r: Reduction, tensors: Sequence, nargs: int) -> tuple:
    """(arguments, user outputs, selected positions) from what a forward saved: its
    ``nargs`` arguments, then its outputs (the selected positions last, for Min/Max/KMin)."""
    nsel = int(r.rdef.index_states is not None)
    args, rest = tensors[:nargs], tensors[nargs:]
    return args, rest[: len(rest) - nsel], rest[len(rest) - nsel :]


def gradients(
    r: Reduction,
    args,
    outs,
    sel,
    g,
    needed: Sequence[bool],
    apply: Apply,
    gathered: Optional[Apply] = None,
) -> list:
    """The backward of a reduction: the gradient w.r.t. each argument whose ``needed`` flag is
    set (None for the others, and for all when the incoming gradient ``g`` is None), shaped
    like the argument -- for the eager autograd Function and the custom op's autograd alike.
    ``gathered`` (default ``apply``) evaluates the reductions on selected pairs (Min, Max,
    KMin), which never take the call's ranges."""
    res: list[Optional[torch.Tensor]] = []
    for k, a in enumerate(args):
        if g is None or not needed[k]:
            res.append(None)
            continue
        grad = vjp(r, k, args, outs, sel, g.contiguous(), apply, gathered or apply)
        res.append(finish(r, k, grad, a))
    return res


def vjp(r: Reduction, k: int, args, outs, sel, g: torch.Tensor, apply: Apply, gathered: Apply):
    """The gradient w.r.t. argument k for the incoming gradient ``g`` (None: zero)."""
    plan = r.vjp(k)
    if plan is None:
        return None
    if isinstance(plan, Chain):
        return plan.evaluate(args, {"grad": [g], "out": list(outs[:1])}, apply)
    return _gathered_vjp(plan, r, k, args, sel[0], g, gathered)


def _gathered_vjp(plan: Gathered, r: Reduction, k: int, args, idx, g, apply: Apply):
    """Min/Max/KMin: the gradient flows through the selected (i, j) pairs, as torch.min does
    (:meth:`Gathered.gradient`).  Half inputs: the selected rows and the output-indexed
    arguments in float32, so that the scatter and the sums run in float32 (no float32 copy
    of the reduced-index arguments)."""
    red_cat = 1 - r.out_cat
    up = (lambda t: t.float()) if g.dtype in _HALF else (lambda t: t)
    args = [b if v.params[2] == red_cat else up(b) for b, v in zip(args, r.args)]
    ops = SimpleNamespace(
        clamp0=lambda J: J.clamp(min=0),
        take=lambda b, J: up(b[J]),
        column=lambda gc, J: (gc * (J >= 0)).unsqueeze(1).contiguous(),
        scatter=lambda n, J, res: res.new_zeros(n, res.shape[1]).index_add(0, J, res),
    )
    return plan.gradient(r, k, args, idx, up(g), apply, ops)


def finish(r: Reduction, k: int, res: Optional[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """A gradient shaped like argument k (zeros for None; parameters summed over rows)."""
    if res is None:
        return torch.zeros_like(a)
    if r.args[k].params[2] == 2 and res.dim() == 2:  # parameter: summed over output rows
        res = res.sum(0)
    return res.reshape(a.shape).to(a.dtype)


def jvp(
    r: Reduction,
    tangents: Sequence,
    args,
    outs,
    sel,
    apply: Apply,
    gathered: Optional[Apply] = None,
) -> list:
    """Tangents of the outputs ``outs`` (None for index outputs) given the tangents of the
    arguments (None: zero); ``gathered`` as in :func:`gradients`."""
    ks = tuple(k for k, t in enumerate(tangents) if t is not None)
    res: list = [None] * len(outs)
    if not ks or not outs[0].is_floating_point():
        return [None if not o.is_floating_point() else torch.zeros_like(o) for o in outs]
    ts = [tangents[k] for k in ks]
    plan = r.jvp(ks)
    if isinstance(plan, Chain):
        res[0] = plan.evaluate(args, {"tangents": ts, "out": list(outs[:1])}, apply)
    else:
        res[0] = _gathered_jvp(plan, r, ks, args, ts, sel[0], gathered or apply)
        res[0] = res[0].reshape(outs[0].shape)
    return res


def _gathered_jvp(plan: Gathered, r: Reduction, ks, args, ts, idx, apply: Apply):
    """d out[i, k, u] = component u of dF at the selected pair (i, idx[i, k, u])."""
    cols = plan.tangent(r, ks, args, ts, idx, apply, _TAKE)
    if cols is None:  # no reduced-index rows
        return args[0].new_zeros(idx.shape)
    return torch.stack(cols, dim=1).reshape(idx.shape)


_TAKE = SimpleNamespace(clamp0=lambda J: J.clamp(min=0), take=lambda b, J: b[J])
