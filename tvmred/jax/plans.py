"""The derivative plans of a reduction (:mod:`tvmred.reductions`) evaluated on jax arrays, one
problem at a time (no leading dimensions): each reduction of a plan is a bind of
:mod:`tvmred.jax.primitive`, the selected pairs of Min/Max/KMin gathered and scattered with
``jax.numpy`` (as :mod:`tvmred.torch.plans` does with torch)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Sequence

from ..reductions import Chain, Gathered, Reduction


def gradient(r: Reduction, k: int, apply: Callable, args: Sequence, g: Any, out: Any,
             sel: Any = None, gathered: Callable = None) -> Any:  # fmt: skip
    """The gradient w.r.t. argument k for the incoming gradient ``g`` of the first output
    ``out`` (``sel``: the selected positions), shaped like the argument; each reduction of
    the plan evaluated by ``apply(red, *arrays)`` -- those on selected pairs (Min, Max,
    KMin) by ``gathered`` (default ``apply``), which never takes the call's ranges."""
    import jax.numpy as jnp

    plan = r.vjp(k)
    a = args[k]
    if plan is None or not jnp.issubdtype(g.dtype, jnp.floating):
        return jnp.zeros_like(a)
    if isinstance(plan, Chain):
        res = plan.evaluate(args, {"grad": [g], "out": [out]}, apply)
    else:
        res = plan.gradient(r, k, args, sel, g, gathered or apply, _ops())
    if res is None:
        return jnp.zeros_like(a)
    if r.cats[k] == 2 and res.ndim == 2:  # a parameter: summed over the output rows
        res = res.sum(0)
    return res.reshape(a.shape).astype(a.dtype)


def _ops():
    import jax.numpy as jnp

    return SimpleNamespace(
        clamp0=lambda J: jnp.maximum(J, 0),
        take=lambda b, J: b[J],
        column=lambda gc, J: (gc * (J >= 0))[:, None],
        scatter=lambda n, J, res: jnp.zeros((n, res.shape[-1]), res.dtype).at[J].add(res),
    )


def gathered_jvp(plan: Gathered, r: Reduction, ks: tuple, args, ts, idx, apply: Callable):
    """d out[i, k, u] = component u of dF at the selected pair (i, idx[i, k, u])."""
    import jax.numpy as jnp

    cols = plan.tangent(r, ks, args, ts, idx, apply, _ops())
    if cols is None:  # no reduced-index rows
        return jnp.zeros(idx.shape, args[0].dtype)
    return jnp.stack(cols, 1).reshape(idx.shape)
