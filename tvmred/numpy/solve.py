"""``tvmred.numpy.KernelSolve``: conjugate gradient on a Sum reduction, numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import solve
from ..reductions import Reduction
from .binding import numpy_call


def kernel_solve(
    r: Reduction,
    pos: int,
    args,
    backend: str = "auto",
    device_id: int = -1,
    alpha: float = 1e-10,
    eps: float = 1e-6,
    ranges: Any = None,
) -> np.ndarray:
    """``a`` solving ``(alpha Id + K) a = b``, b given in position ``pos`` of ``args``."""
    solve.check_unknown(r, pos)

    def linop(v):
        res = numpy_call(r, [*args[:pos], v, *args[pos + 1 :]], backend, device_id, ranges)
        return res + alpha * v if alpha else res

    return solve.conjugate_gradient(linop, args[pos], eps)


class KernelSolve(solve.KernelSolve):
    __doc__ = solve.KernelSolve.__doc__
    solve = staticmethod(kernel_solve)
