"""The derivative plans of a reduction (:mod:`tvmred.reductions`) evaluated on jax arrays, one
problem at a time (no leading dimensions): each reduction of a plan is a bind of
:mod:`tvmred.jax.primitive`, the selected pairs of Min/Max/KMin gathered and scattered with
``jax.numpy`` (as :mod:`tvmred.torch.plans` does with torch)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..reductions import Chain, Gathered, Reduction


def gradient(r: Reduction, k: int, apply: Callable, args: Sequence, g: Any, out: Any,
             sel: Any = None) -> Any:  # fmt: skip
    """The gradient w.r.t. argument k for the incoming gradient ``g`` of the first output
    ``out`` (``sel``: the selected positions), shaped like the argument; each reduction of
    the plan evaluated by ``apply(red, *arrays)``."""
    import jax.numpy as jnp

    plan = r.vjp(k)
    a = args[k]
    if plan is None or not jnp.issubdtype(g.dtype, jnp.floating):
        return jnp.zeros_like(a)
    if isinstance(plan, Chain):
        res = plan.evaluate(args, {"grad": [g], "out": [out]}, apply)
    else:
        res = _gathered_vjp(plan, r, k, args, sel, g, apply)
    if res is None:
        return jnp.zeros_like(a)
    if r.cats[k] == 2 and res.ndim == 2:  # a parameter: summed over the output rows
        res = res.sum(0)
    return res.reshape(a.shape).astype(a.dtype)


def _nothing_selected(r: Reduction, args: Sequence) -> bool:
    red_cat = 1 - r.out_cat
    return any(c == red_cat and a.shape[-2] == 0 for a, c in zip(args, r.cats))


def _gathered_vjp(plan: Gathered, r: Reduction, k: int, args, idx, g, apply: Callable):
    """Min/Max/KMin: through the selected (i, j) pairs, scattered back to argument k."""
    import jax.numpy as jnp

    if _nothing_selected(r, args):
        return None
    red_cat = 1 - r.out_cat
    K = idx.shape[-2]
    g = g.reshape(idx.shape)
    total = None
    for kk in range(K):
        for u, spec in enumerate(plan.parts):
            if spec is None:
                continue
            J = idx[:, kk, u]
            Jc = jnp.maximum(J, 0)
            gathered = [b[Jc] if c == red_cat else b for b, c in zip(args, r.cats)]
            res = apply(spec, *gathered, (g[:, kk, u] * (J >= 0))[:, None])
            if r.cats[k] == red_cat:
                res = jnp.zeros((args[k].shape[-2], res.shape[-1]), res.dtype).at[Jc].add(res)
            total = res if total is None else total + res
    return total


def gathered_jvp(plan: Gathered, r: Reduction, ks: tuple, args, ts, idx, apply: Callable):
    """d out[i, k, u] = component u of dF at the selected pair (i, idx[i, k, u])."""
    import jax.numpy as jnp

    n_out, K, D = idx.shape
    if _nothing_selected(r, args):
        return jnp.zeros((n_out, K, D), args[0].dtype)
    red_cat = 1 - r.out_cat
    cols = []
    for kk in range(K):
        for u, spec in enumerate(plan.parts):
            J = idx[:, kk, u]
            Jc = jnp.maximum(J, 0)
            sub = [b[Jc] if c == red_cat else b for b, c in zip(args, r.cats)]
            sub += [t[Jc] if r.cats[k] == red_cat else t for t, k in zip(ts, ks)]
            cols.append(apply(spec, *sub)[:, 0] * (J >= 0))
    return jnp.stack(cols, 1).reshape(n_out, K, D)
