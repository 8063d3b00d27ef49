"""``tvmred.torch.LazyTensor``, ``Vi``, ``Vj``, ``Pm``: pykeops' LazyTensor on torch tensors
(the core is :class:`tvmred.lazy.GenericLazyTensor`), differentiable to any order, usable
under ``torch.compile`` and ``torch.func`` transforms."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import lazynodes as ln
from ..lazy import GenericLazyTensor, variables
from ..lazycomplex import ComplexLazy
from .autograd import apply, torch_call
from .library import TORCH_DTYPES, Signature, signature
from .solve import kernel_solve

_OPS = ("add", "sub", "mul", "truediv", "matmul", "pow")
#: Tensor's operator (tensor first) -> the LazyTensor's method that computes it
_REFLECTED = {f"__{o}__": f"__r{o}__" for o in _OPS} | {f"__r{o}__": f"__{o}__" for o in _OPS}
_REFLECTED |= {"add": "__radd__", "sub": "__rsub__", "mul": "__rmul__", "div": "__rtruediv__",
               "true_divide": "__rtruediv__", "pow": "__rpow__"}  # fmt: skip


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
    def is_complex_array(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.is_complex()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        """A tensor's operator met a LazyTensor: ``t * K`` (``Tensor.__mul__(t, K)``, or
        ``Tensor.mul(t, K)`` as torch.compile's tracer spells it) is ``K.__rmul__(t)``; under
        torch.compile, ``Tensor.matmul(t, K)`` is the tracer's spelling of ``K @ t`` (it has no
        reflected matmul; ``t @ K`` is no LazyTensor operation, in pykeops either).  Anything
        else is not a LazyTensor operation."""
        if (
            func is torch.Tensor.matmul
            and torch.compiler.is_compiling()
            and len(args) == 2
            and isinstance(args[1], LazyTensor)
        ):  # the tracer has no reflected matmul: it spells ``K @ t`` as Tensor.matmul(t, K)
            return args[1].__matmul__(args[0])
        name = _REFLECTED.get(getattr(func, "__name__", ""))
        if name and not kwargs and len(args) == 2 and isinstance(args[1], LazyTensor):
            method = getattr(args[1], name, None)
            if method is not None:
                return method(args[0])
        return NotImplemented

    @staticmethod
    def dtype_name(x: torch.Tensor) -> str:
        name = TORCH_DTYPES.get(x.dtype)
        if name is None:
            what = "complex LazyTensors are" if x.is_complex() else f"dtype {x.dtype} is"
            raise TypeError(
                f"{what} not supported: tvmred supports {', '.join(TORCH_DTYPES.values())}"
            )
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


class ComplexLazyTensor(ComplexLazy, LazyTensor):
    """A LazyTensor of a complex tensor (:mod:`tvmred.lazycomplex`): its real view
    (``view_as_real``, no copy, differentiable), results viewed back as complex."""

    @staticmethod
    def as_real(x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(x.resolve_conj()).flatten(-2)

    @staticmethod
    def from_real(x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())


LazyTensor.complex_class = ComplexLazyTensor
ComplexLazyTensor.real_class = LazyTensor
Var, Vi, Vj, Pm = variables(LazyTensor)
