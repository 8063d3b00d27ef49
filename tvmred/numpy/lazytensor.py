"""``tvmred.numpy.LazyTensor``, ``Vi``, ``Vj``, ``Pm``: pykeops' LazyTensor on numpy arrays
(the core is :class:`tvmred.lazy.GenericLazyTensor`; no autograd)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import lazynodes as ln
from ..lazy import GenericLazyTensor, variables
from ..lazycomplex import ComplexLazy
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
        if x.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(
                f"dtype {x.dtype} is not supported: tvmred.numpy supports float16, float32, "
                "float64 and complex64/complex128 (ComplexLazyTensor)"
            )
        return str(x.dtype)

    @staticmethod
    def is_complex_array(x: Any) -> bool:
        return isinstance(x, np.ndarray) and x.dtype.kind == "c"

    @staticmethod
    def param(values: list, like: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=like.dtype)

    def evaluate(self, spec: tuple, args: list, kwargs: Optional[dict]) -> Any:
        return numpy_call(ln.reduction(spec), args, **(kwargs or {}))

    def solve_spec(self, spec: tuple, pos: int, args: list, alpha: float, kwargs: dict) -> Any:
        return kernel_solve(ln.reduction(spec), pos, args, alpha=alpha, **kwargs)


class ComplexLazyTensor(ComplexLazy, LazyTensor):
    """A LazyTensor of a complex array (:mod:`tvmred.lazycomplex`): its interleaved real view
    (no copy for a contiguous array), results viewed back as complex."""

    @staticmethod
    def as_real(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        return x.view(x.real.dtype)

    @staticmethod
    def from_real(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x).view(
            np.complex64 if x.dtype == np.float32 else np.complex128
        )


LazyTensor.complex_class = ComplexLazyTensor
ComplexLazyTensor.real_class = LazyTensor
Var, Vi, Vj, Pm = variables(LazyTensor)
