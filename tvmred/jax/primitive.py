"""One jax primitive, ``tvmred_reduce``, for every tvmred reduction on jax arrays.

A bind has two modes (its ``ks`` parameter):

* ``ks=None`` -- the reduction's outputs (pykeops' outputs, then the selected positions for
  Min/Max/KMin).  Lowered to XLA's FFI custom call (:mod:`tvmred.jax.ffi`), or with
  ``TVMRED_JAX_BRIDGE=callback`` to a ``jax.pure_callback``, into tvmred's numpy launch
  (numpy views of XLA's buffers, no copy, no torch).  Its JVP rule is the second mode.
* ``ks=(k, ...)`` -- the tangent of the first output along tangents of the arguments ``ks``:
  inputs ``(*args, *tangents, out, [selected])``, linear in the tangents.  Evaluated by the
  reduction's forward-mode plan (:meth:`~tvmred.reductions.Reduction.jvp`: further reductions,
  each a bind of the first mode) and **transposed** by its reverse-mode plan
  (:meth:`~tvmred.reductions.Reduction.vjp`) -- so ``jax.jvp`` runs the forward-mode plan,
  ``jax.grad`` the same gradient reductions as the torch binding's backward, and any
  composition of them (grad of grad, jacfwd of grad, ...) differentiates those plans again.

Batching (``jax.vmap``) moves the batch axis in front: the arguments' leading dimensions are
the call's batch dimensions (broadcast as in a tvmred call, one problem per entry).

pykeops' ``ranges`` (block-sparse reductions) are the bind's last ``nr`` inputs (6 integer
arrays, or none): the kernel runs them in one launch (:func:`tvmred.jax.host.outputs`), and
every reduction of a derivative plan takes them too -- the gradient w.r.t. a reduced-index
argument reads the transposed half of the 6-tuple, as in pykeops -- except the reductions on
selected pairs (Min, Max, KMin), which never take ranges.  Ranges do not batch (``vmap``).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Optional, Sequence

import numpy as np

from ..launch import check_args
from ..reductions import Chain, Reduction
from . import ffi
from .host import cats_rank as _cats_rank
from .host import lead_shape as _lead_shape
from .host import outputs


def _core_outputs(r: Reduction, shapes: tuple, dtypes: tuple) -> tuple:
    """The outputs' shapes and dtypes of one problem (no leading dimensions), from the kernel
    run on one reduced row after the call's own checks on the real shapes."""
    key = ("jax-shapes", shapes, dtypes)
    if key not in r.memo:
        red_cat = 1 - r.out_cat
        # zero-stride views: the call's checks on the real shapes, no memory
        check_args(r, [np.broadcast_to(np.zeros((), d), s) for s, d in zip(shapes, dtypes)])
        probe = [
            np.zeros(s[:-2] + (min(1, s[-2]), s[-1]) if c == red_cat else s, d)
            for s, d, c in zip(shapes, dtypes, r.cats)
        ]
        with np.errstate(all="ignore"):  # zeros: log 0 and the like, harmless here
            r.memo[key] = tuple((o.shape, o.dtype) for o in outputs(r, probe))
        r.memo["jax-out-ranks"] = tuple(len(shape) for shape, _ in r.memo[key])
    return r.memo[key]


def _ranks(r: Reduction, ks: Optional[tuple], n_in: int) -> list:
    """Per-problem ranks of a bind's inputs (the rest are leading dimensions).  The outputs'
    ranks (inputs of a jvp-mode bind) were recorded by the abstract evaluation of the
    value-mode bind that produced them."""
    ranks = [_cats_rank(c) for c in r.cats]
    if ks is None:
        return ranks
    outs = r.memo["jax-out-ranks"]
    return (ranks + [ranks[k] for k in ks] + [outs[0], outs[-1]])[:n_in]


# ------------------------------------------------------------------------ the primitive


@lru_cache(maxsize=None)
def primitive() -> Any:
    from jax._src import dispatch  # jax's own impl rule for a primitive with a lowering
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    p = Primitive("tvmred_reduce")
    p.multiple_results = True
    p.def_impl(partial(dispatch.apply_primitive, p))  # eager: the lowering, jitted and cached
    p.def_abstract_eval(_abstract)
    mlir.register_lowering(
        p,
        mlir.lower_fun(lambda *a, red, ks, nr: _evaluate(a, red, ks, nr), multiple_results=True),
    )
    ad.primitive_jvps[p] = _jvp
    ad.primitive_transposes[p] = _transpose
    batching.primitive_batchers[p] = _batch
    return p


def bind(r: Reduction, *args: Any, ranges: Sequence = ()) -> list:
    """All outputs of ``r`` (selected positions last); ``ranges``: pykeops' 6 arrays, or ()."""
    return primitive().bind(*args, *ranges, red=r, ks=None, nr=len(ranges))


def apply(r: Reduction, *args: Any) -> Any:
    """The first output of ``r`` (how gradient plans call a reduction)."""
    return bind(r, *args)[0]


def ranged_apply(ranges: Sequence) -> Any:
    """How a derivative plan calls its reductions with the call's ``ranges``."""
    if not ranges:
        return apply
    return lambda r, *args: bind(r, *args, ranges=ranges)[0]


def _split(inputs: Sequence, nr: int) -> tuple:
    """(the bind's inputs without the ranges, the ranges)."""
    return tuple(inputs[: len(inputs) - nr]), tuple(inputs[len(inputs) - nr :])


def _abstract(*avals: Any, red: Reduction, ks: Optional[tuple], nr: int) -> list:
    from jax.core import ShapedArray

    if ks is not None:  # the tangent of the first output: shaped like it
        out = avals[red.nargs + len(ks)]
        return [ShapedArray(out.shape, out.dtype)]
    avals = _split(avals, nr)[0]
    ranks = _ranks(red, None, len(avals))
    lead = _lead_shape([a.shape for a in avals], ranks)
    core = tuple(tuple(a.shape[a.ndim - c :]) for a, c in zip(avals, ranks))
    outs = _core_outputs(red, core, tuple(np.dtype(a.dtype) for a in avals))
    return [ShapedArray(lead + s, d) for s, d in outs]


def _evaluate(inputs: Sequence, red: Reduction, ks: Optional[tuple], nr: int) -> list:
    import jax

    if ks is None:  # (the ranges, if any, reach the host as the inputs after the arguments)
        shapes = [
            jax.ShapeDtypeStruct(s.shape, s.dtype)
            for s in _abstract(*inputs, red=red, ks=None, nr=nr)
        ]
        if ffi.enabled():  # the custom call: 108 us a tiny call, pure_callback 194 (ffi.py)
            return ffi.call(red, inputs, shapes)
        fn = lambda *a: tuple(outputs(red, a))  # noqa: E731
        return list(jax.pure_callback(fn, tuple(shapes), *inputs, vmap_method="broadcast_all"))
    n = red.nargs
    inputs, ranges = _split(inputs, nr)
    fn = lambda *a: _tangent(red, ks, a[:n], a[n : n + len(ks)], *a[n + len(ks) :],  # noqa: E731
                             ranges=ranges)  # fmt: skip
    return [per_problem(fn, inputs, _ranks(red, ks, len(inputs)))]


def per_problem(fn: Any, inputs: Sequence, ranks: Sequence[int]) -> Any:
    """``fn`` on one problem's arrays (of ranks ``ranks``), mapped (``jax.vmap``) over the
    inputs' broadcast leading dimensions."""
    import jax
    import jax.numpy as jnp

    lead = _lead_shape([a.shape for a in inputs], ranks)
    if not lead:
        return fn(*inputs)
    flat = [
        jnp.broadcast_to(a, lead + a.shape[a.ndim - c :]).reshape((-1,) + a.shape[a.ndim - c :])
        for a, c in zip(inputs, ranks)
    ]
    out = jax.vmap(fn)(*flat)
    return out.reshape(lead + out.shape[1:])


def _tangent(r: Reduction, ks: tuple, args, ts, out, sel=None, ranges: Sequence = ()) -> Any:
    """d out along the tangents ``ts`` of the arguments ``ks``, one problem."""
    from .plans import gathered_jvp

    plan = r.jvp(ks)
    if isinstance(plan, Chain):
        res = plan.evaluate(args, {"tangents": list(ts), "out": [out]}, ranged_apply(ranges))
    else:
        res = gathered_jvp(plan, r, ks, args, ts, sel, apply)
    return res.reshape(out.shape).astype(out.dtype)


def _jvp(primals: Sequence, tangents: Sequence, *, red: Reduction, ks: Optional[tuple], nr: int):
    import jax
    import jax.numpy as jnp
    from jax.interpreters import ad

    p = primitive()
    if ks is not None:  # differentiate the forward-mode plan itself (the ranges held fixed)
        inputs, ranges = _split(primals, nr)
        ts = [ad.instantiate_zeros(t) for t in tangents[: len(inputs)]]
        out, tan = jax.jvp(lambda *a: _evaluate((*a, *ranges), red, ks, nr), list(inputs), ts)
        return out, tan
    outs = p.bind(*primals, red=red, ks=None, nr=nr)
    zero = [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in outs]
    args, ranges = _split(primals, nr)
    nz = tuple(k for k, t in enumerate(tangents[: len(args)]) if type(t) is not ad.Zero)
    if not nz or not jnp.issubdtype(outs[0].dtype, jnp.floating):
        return outs, zero
    sel = outs[-1:] if red.rdef.index_states is not None else []
    t0 = p.bind(*args, *(tangents[k] for k in nz), outs[0], *sel, *ranges, red=red, ks=nz,
                nr=nr)[0]  # fmt: skip
    return outs, [t0, *zero[1:]]


def _transpose(cts: Sequence, *inputs: Any, red: Reduction, ks: Optional[tuple], nr: int):
    from jax.interpreters import ad

    from .plans import gradient

    n = red.nargs
    if ks is None or any(ad.is_undefined_primal(a) for a in inputs[:n]):
        raise NotImplementedError("tvmred_reduce is linear only in the tangents of its jvp")
    res: list = [None] * len(inputs)
    ct = cts[0]
    if type(ct) is ad.Zero:
        return res
    inputs, ranges = _split(inputs, nr)
    args, rest = list(inputs[:n]), list(inputs[n + len(ks) :])
    ranks = _ranks(red, ks, len(inputs))
    step = ranged_apply(ranges)
    for m, k in enumerate(ks):
        t = inputs[n + m]
        if not ad.is_undefined_primal(t):
            continue
        fn = lambda *a, k=k: gradient(red, k, step, a[:n], a[n], *a[n + 1 :],  # noqa: E731
                                      gathered=apply)  # fmt: skip
        sub = [*ranks[:n], ranks[n + len(ks)], *ranks[n + len(ks) :]]
        got = per_problem(fn, [*args, ct, *rest], sub)
        res[n + m] = unbroadcast(got, t.aval.shape)
    return res


def unbroadcast(x: Any, shape: tuple) -> Any:
    """``x`` summed over the leading dimensions that broadcasting added to ``shape``."""
    extra = x.ndim - len(shape)
    x = x.sum(tuple(range(extra))) if extra else x
    axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if a != b and b == 1)
    return x.sum(axes, keepdims=True) if axes else x


def _batch(args: Sequence, dims: Sequence, *, red: Reduction, ks: Optional[tuple], nr: int):
    """The batch axis in front of every argument, as a leading dimension of the call."""
    import jax.numpy as jnp

    if nr:
        raise NotImplementedError(
            "tvmred.jax: ranges= under jax.vmap (batch dimensions with ranges) is not "
            "supported -- as in pykeops, ranges describe one problem"
        )
    ranks = _ranks(red, ks, len(args))
    inner = max(
        a.ndim - c - (d is not None) for a, c, d in zip(args, ranks, dims)
    )  # fmt: skip
    moved = []
    for a, c, d in zip(args, ranks, dims):
        if d is None:  # not mapped
            a = a.reshape((1,) * (inner + 1 - (a.ndim - c)) + a.shape)
        else:
            a = jnp.moveaxis(a, d, 0)
            a = a.reshape(a.shape[:1] + (1,) * (inner + 1 - (a.ndim - c)) + a.shape[1:])
        moved.append(a)
    outs = primitive().bind(*moved, red=red, ks=ks, nr=0)
    return outs, [0] * len(outs)
