"""``tvmred.jax.LazyTensor``, ``Vi``, ``Vj``, ``Pm``: pykeops' LazyTensor on jax arrays (the
core is :class:`tvmred.lazy.GenericLazyTensor`), differentiable through
:mod:`tvmred.jax.binding` and usable under ``jit``/``grad``/``vmap``."""

from __future__ import annotations

from typing import Any, Optional

from .. import lazynodes as ln
from ..lazy import GenericLazyTensor, variables
from .binding import _DTYPES, jax_call


def _is_jax(x: Any) -> bool:
    import jax

    return isinstance(x, jax.Array)


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__
    array_name = "jax arrays"

    @staticmethod
    def is_array(x: Any) -> bool:
        return _is_jax(x)

    @staticmethod
    def dtype_name(x: Any) -> str:
        name = str(x.dtype)
        if name not in _DTYPES:
            raise TypeError(f"dtype {x.dtype} is not supported: tvmred.jax supports {_DTYPES}")
        return name

    @staticmethod
    def param(values: list, like: Any) -> Any:
        import jax.numpy as jnp

        return jnp.asarray(values, dtype=like.dtype)

    def evaluate(self, spec: tuple, args: list, kwargs: Optional[dict]) -> Any:
        return jax_call(ln.reduction(spec), args, **(kwargs or {}))

    def solve_spec(self, spec: tuple, pos: int, args: list, alpha: float, kwargs: dict) -> Any:
        from .solve import kernel_solve

        return kernel_solve(ln.reduction(spec), pos, args, alpha=alpha, **kwargs)


Var, Vi, Vj, Pm = variables(LazyTensor)
