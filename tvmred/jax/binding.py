"""``tvmred.jax.Genred``: pykeops' Genred on jax arrays, under ``jit``, ``grad`` and ``vmap``.

A reduction is one ``jax.custom_vjp`` function whose forward is a ``jax.pure_callback`` into
tvmred's numpy launch (the arrays reach the kernel as numpy views of XLA's buffers, no copy;
no torch) and whose backward runs tvmred's gradient reductions -- themselves such functions,
so derivatives of derivatives follow to any order.  ``vmap`` passes the batch as leading
dimensions of every argument (``vmap_method="broadcast_all"``): one problem per batch entry.
The output shapes are found at trace time by a dry run of the kernel on one reduced row.
Forward mode (``jax.jvp``) is not available: a custom_vjp function has none.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import genred
from ..launch import check_args, run_states
from ..reductions import Chain, Reduction

_DTYPES = ("float16", "float32", "float64")


def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def _outputs(r: Reduction, args) -> list:
    """pykeops' output(s) of ``r`` on numpy arrays, then the selected positions if any; leading
    batch dimensions (from vmap) loop over the problems."""
    lead = np.broadcast_shapes(*(a.shape[: a.ndim - (1 if c == 2 else 2)] for a, c in
                                 zip(args, r.cats)))  # fmt: skip
    if lead:
        flat = [np.broadcast_to(a, lead + a.shape[len(a.shape) - (1 if c == 2 else 2):])
                for a, c in zip(args, r.cats)]  # fmt: skip
        per = [_outputs(r, [a[ix] for a in flat]) for ix in np.ndindex(*lead)]
        return [np.stack(o).reshape(lead + o[0].shape) for o in zip(*per)]
    out, state = run_states(r, [np.ascontiguousarray(a) for a in args])
    outs = list(out) if isinstance(out, tuple) else [out]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return outs


def _result_shapes(r: Reduction, args) -> tuple:
    """The outputs' shapes and dtypes, from the kernel run on one reduced row (and the
    arguments checked as a call checks them)."""
    jax, _ = _jax()
    red_cat = 1 - r.out_cat
    probe = []
    for a, c in zip(args, r.cats):
        shape = tuple(a.shape)
        if c == red_cat:
            shape = shape[:-2] + (min(1, shape[-2]), shape[-1])
        probe.append(np.zeros(shape, dtype=np.dtype(a.dtype)))
    # the call's own checks on the real shapes (zero-stride views: no memory)
    check_args(r, [np.broadcast_to(np.zeros((), np.dtype(a.dtype)), a.shape) for a in args])
    with np.errstate(all="ignore"):  # zeros: log 0 and the like, harmless here
        outs = _outputs(r, probe)
    return tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs)


def function(r: Reduction) -> Any:
    """The differentiable jax function of ``r``: all its outputs, selected positions last."""
    memo = r.memo.get("jax")
    if memo is not None:
        return memo
    jax, jnp = _jax()
    nsel = int(r.rdef.index_states is not None)

    def raw(*args):
        return jax.pure_callback(
            lambda *a: tuple(_outputs(r, a)), _result_shapes(r, args), *args,
            vmap_method="broadcast_all",
        )  # fmt: skip

    @jax.custom_vjp
    def f(*args):
        return raw(*args)

    def fwd(*args):
        # through f, not raw: a higher derivative differentiates the residual outputs too
        # (a pure_callback has no derivative; f has its own)
        outs = f(*args)
        return outs, (args, outs)

    def bwd(res, cts):
        args, outs = res
        g = cts[0]
        sel = outs[len(outs) - nsel :]
        grads = []
        for k, a in enumerate(args):
            plan = r.vjp(k)
            if plan is None or not jnp.issubdtype(g.dtype, jnp.floating):
                grads.append(jnp.zeros_like(a))
                continue
            if isinstance(plan, Chain):
                got = plan.evaluate(args, {"grad": [g], "out": [outs[0]]}, apply)
            else:
                got = _gathered(plan, r, k, args, sel[0], g)
            grads.append(_finish(r, k, got, a))
        return tuple(grads)

    f.defvjp(fwd, bwd)
    r.memo["jax"] = f
    return f


def apply(r: Reduction, *args) -> Any:
    return function(r)(*args)[0]


def _gathered(plan, r: Reduction, k: int, args, idx, g):
    """Min/Max/KMin: through the selected (i, j) pairs (as tvmred.torch.plans)."""
    _, jnp = _jax()
    red_cat = 1 - r.out_cat
    if any(c == red_cat and a.shape[-2] == 0 for a, c in zip(args, r.cats)):
        return None
    n_out, K, D = idx.shape[-3:]
    g = g.reshape(idx.shape)
    total = None
    for kk in range(K):
        for u, spec in enumerate(plan.parts):
            if spec is None:
                continue
            J = idx[..., kk, u]
            Jc = jnp.maximum(J, 0)
            gathered = [b[Jc] if c == red_cat else b for b, c in zip(args, r.cats)]
            gu = (g[..., kk, u] * (J >= 0))[..., None]
            res = apply(spec, *gathered, gu)
            if r.cats[k] == red_cat:
                res = jnp.zeros((args[k].shape[-2], res.shape[-1]), res.dtype).at[Jc].add(res)
            total = res if total is None else total + res
    return total


def _finish(r: Reduction, k: int, res, a):
    _, jnp = _jax()
    if res is None:
        return jnp.zeros_like(a)
    if r.cats[k] == 2 and res.ndim == 2:  # a parameter: summed over the output rows
        res = res.sum(0)
    return res.reshape(a.shape).astype(a.dtype)


def jax_call(r: Reduction, args, ranges: Any = None, out: Any = None, **kw: Any) -> Any:
    if ranges is not None or out is not None:
        raise NotImplementedError("tvmred.jax: ranges= and out= are not supported yet")
    backend = kw.get("backend", "auto")
    if backend not in ("auto", "CPU"):
        raise NotImplementedError(f"tvmred.jax runs on the CPU; backend={backend!r}")
    for k, a in enumerate(args):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"argument {r.describe(k)} must be a jax array, got {type(a).__name__}")
        if str(a.dtype) not in _DTYPES:
            raise TypeError(
                f"argument {r.describe(k)} has dtype {a.dtype}; tvmred.jax supports "
                f"{', '.join(_DTYPES)}"
            )
    outs = function(r)(*args)
    n = len(outs) - int(r.rdef.index_states is not None)
    return outs[0] if n == 1 else tuple(outs[:n])


class Genred(genred.Genred):
    __doc__ = genred.Genred.__doc__

    def __call__(  # type: ignore[override]
        self,
        *args: Any,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[Any] = None,
    ) -> Any:
        return jax_call(self.reduction, args, ranges, out, backend=backend)
