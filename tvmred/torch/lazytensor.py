"""``tvmred.torch.LazyTensor``, ``Vi``, ``Vj``, ``Pm``: pykeops' LazyTensor on torch tensors
(the core is :class:`tvmred.lazy.GenericLazyTensor`), differentiable to any order, usable
under ``torch.compile`` and ``torch.func`` transforms."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import lazynodes as ln
from ..lazy import GenericLazyTensor, variables
from .autograd import apply, torch_call
from .library import TORCH_DTYPES, Signature, signature
from .solve import kernel_solve


@ln.constant  # torch.compile runs it, never traces it
def _signature(spec: tuple) -> tuple:
    return tuple(signature(ln.reduction(spec)))


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__
    array_name = "torch tensors"

    @staticmethod
    def is_array(x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    @staticmethod
    def dtype_name(x: torch.Tensor) -> str:
        name = TORCH_DTYPES.get(x.dtype)
        if name is None:
            what = "complex LazyTensors are" if x.is_complex() else f"dtype {x.dtype} is"
            raise TypeError(f"{what} not supported: tvmred supports float32 and float64")
        return name

    @staticmethod
    def param(values: list, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def evaluate(self, spec: tuple, args: list, kwargs: Optional[dict]) -> Any:
        if torch.compiler.is_compiling():  # constants only: the Reduction stays untraced
            return torch_call(Signature(*_signature(spec)), args, **(kwargs or {}))
        if kwargs is None:  # one plain reduction: no placement, batch or ranges to handle
            return apply(ln.reduction(spec), *args)
        return torch_call(ln.reduction(spec), args, **kwargs)

    def solve_spec(self, spec: tuple, pos: int, args: list, alpha: float, kwargs: dict) -> Any:
        return kernel_solve(ln.reduction(spec), pos, args, alpha=alpha, **kwargs)


Var, Vi, Vj, Pm = variables(LazyTensor)
