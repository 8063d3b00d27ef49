"""``tvmred.jax.KernelSolve``: conjugate gradient on a Sum reduction, on jax arrays, under
``jit``, ``grad`` and ``jvp``.

The solve is ``jax.lax.custom_linear_solve`` of the linear map ``v -> alpha v + K(theta) v``
(each application one tvmred call) with pykeops' conjugate gradient (its stopping rule
``|r|^2 < size(b) eps^2``) in a ``lax.while_loop``.  Its derivatives come from the implicit
function theorem, as in pykeops and the torch binding: w.r.t. ``b`` one more solve, w.r.t.
any other argument ``theta`` that solve against the reduction's own derivative at the
solution -- jax differentiates the map through tvmred's primitive, so no iteration of the
loop is ever differentiated.
"""

from __future__ import annotations

from typing import Any

from .. import solve
from ..reductions import Reduction
from .binding import jax_call


def conjugate_gradient(eps: float) -> Any:
    """pykeops' conjugate gradient as a ``custom_linear_solve`` solver: ``(matvec, b) -> a``
    (0 where ``|b|^2`` is already below the bound)."""
    import jax
    import jax.numpy as jnp

    def cg(matvec: Any, b: Any) -> Any:
        delta = b.size * eps**2
        r = b
        nr2 = jnp.vdot(r, r)

        def cond(c):
            return c[3] >= delta

        def body(c):
            a, r, p, nr2 = c
            mp = matvec(p)
            alp = nr2 / jnp.vdot(p, mp)
            a, r = a + alp * p, r - alp * mp
            nr2new = jnp.vdot(r, r)
            return a, r, r + (nr2new / nr2) * p, nr2new

        return jax.lax.while_loop(cond, body, (jnp.zeros_like(b), r, r, nr2))[0]

    return cg


def kernel_solve(
    r: Reduction,
    pos: int,
    args,
    backend: str = "auto",
    device_id: int = -1,
    alpha: float = 1e-10,
    eps: float = 1e-6,
    ranges: Any = None,
) -> Any:
    """``a`` solving ``(alpha Id + K) a = b``, b given in position ``pos`` of ``args``."""
    import jax

    solve.check_unknown(r, pos)
    args = list(args)
    b = args[pos]

    def matvec(v: Any) -> Any:
        res = jax_call(r, [*args[:pos], v, *args[pos + 1 :]], ranges, backend=backend)
        return res + alpha * v if alpha else res

    # K symmetric (pykeops' assumption): the transposed system is solved the same way
    return jax.lax.custom_linear_solve(matvec, b, conjugate_gradient(float(eps)), symmetric=True)


class KernelSolve(solve.KernelSolve):
    __doc__ = solve.KernelSolve.__doc__
    solve = staticmethod(kernel_solve)
