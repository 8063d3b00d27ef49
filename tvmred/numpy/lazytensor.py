"""``tvmred.numpy.LazyTensor``, ``Vi``, ``Vj``, ``Pm``: pykeops' LazyTensor on numpy arrays
(the core is :class:`tvmred.lazy.GenericLazyTensor`; no autograd)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import lazynodes as ln
from ..lazy import GenericLazyTensor, variables
from .binding import numpy_call
from .solve import kernel_solve


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__
    array_name = "numpy arrays"
    float_types = (float, np.floating)

    @staticmethod
    def is_array(x: Any) -> bool:
        return isinstance(x, np.ndarray)

    @staticmethod
    def dtype_name(x: np.ndarray) -> str:
        if x.dtype not in (np.float32, np.float64):
            what = "complex LazyTensors are" if x.dtype.kind == "c" else f"dtype {x.dtype} is"
            raise TypeError(f"{what} not supported: tvmred supports float32 and float64")
        return str(x.dtype)

    @staticmethod
    def param(values: list, like: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=like.dtype)

    def evaluate(self, spec: tuple, args: list, kwargs: Optional[dict]) -> Any:
        return numpy_call(ln.reduction(spec), args, **(kwargs or {}))

    def solve_spec(self, spec: tuple, pos: int, args: list, alpha: float, kwargs: dict) -> Any:
        return kernel_solve(ln.reduction(spec), pos, args, alpha=alpha, **kwargs)


Var, Vi, Vj, Pm = variables(LazyTensor)
