"""``tvmred.jax.Genred``: pykeops' Genred on jax arrays, under ``jit``, ``grad``, ``jvp`` and
``vmap``.

A call binds the jax primitive of :mod:`tvmred.jax.primitive`: the kernel runs in XLA's FFI
custom call (:mod:`tvmred.jax.ffi`) on numpy views of XLA's buffers (no copy); forward mode
(``jax.jvp``) runs the reduction's forward-mode plan, reverse mode (``jax.grad``) its
transpose -- tvmred's gradient reductions -- and derivatives of derivatives follow to any
order, in either mode.  ``vmap`` passes the batch as leading dimensions of the call: small
problems are stacked into one ranged launch (through torch, when installed), others run
one by one.  The output shapes are found at trace time by a dry run
of the kernel on one reduced row.
"""

from __future__ import annotations

from typing import Any, Optional

from .. import genred
from ..reductions import Reduction
from .primitive import apply, bind

_DTYPES = ("float16", "float32", "float64")


def function(r: Reduction) -> Any:
    """The differentiable jax function of ``r``: all its outputs, selected positions last."""
    return lambda *args: bind(r, *args)


__all__ = ["Genred", "apply", "function", "jax_call"]


def jax_call(r: Reduction, args, ranges: Any = None, out: Any = None, **kw: Any) -> Any:
    """A reduction call as ``Genred.__call__`` makes it: checks, ``ranges`` (pykeops' 6-tuple
    of integer arrays, block-sparse, all clusters in one launch), pykeops' output(s)."""
    if out is not None:
        raise NotImplementedError("tvmred.jax: out= cannot write into a jax array (immutable)")
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
    outs = bind(r, *args, ranges=_ranges(ranges))
    n = len(outs) - int(r.rdef.index_states is not None)
    return outs[0] if n == 1 else tuple(outs[:n])


def _ranges(ranges: Any) -> tuple:
    """pykeops' ranges as 6 integer jax arrays (() for None)."""
    if ranges is None:
        return ()
    import jax.numpy as jnp

    if not isinstance(ranges, (tuple, list)) or len(ranges) != 6:
        raise ValueError(
            "ranges must be the 6-tuple (ranges_i, slices_i, redranges_j, ranges_j, slices_j, "
            "redranges_i)"
        )
    out = tuple(jnp.asarray(t) for t in ranges)
    for k, t in enumerate(out):
        if not jnp.issubdtype(t.dtype, jnp.integer):
            raise ValueError(f"ranges: array {k} must hold integers, got {t.dtype}")
    return out


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
