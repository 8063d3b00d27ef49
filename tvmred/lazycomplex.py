"""Complex LazyTensors (pykeops' ``ComplexLazyTensor``), binding-agnostic.

A complex LazyTensor is a real one of dimension 2k holding the interleaved real and imaginary
parts (:mod:`tvmred.complexops`' layout), built from a complex array by the binding's zero-copy
``as_real`` and turned back by ``from_real`` after a reduction.  Arithmetic with real
LazyTensors, arrays and Python numbers promotes them (``Real2Complex``, a complex constant);
``real``, ``imag``, ``abs()``, ``angle()`` give real LazyTensors.  Reductions: Sum (the
complex operations are linear or not, but only a sum of complex values is defined); the others
raise a TypeError naming the reduction.  Gradients are those of the real layout, which is
torch's convention for complex inputs (the gradient of a real loss L w.r.t. z is
dL/dRe z + i dL/dIm z) -- through ``view_as_real``, torch's own autograd applies it.
"""

from __future__ import annotations

from typing import Any

from .lazy import GenericLazyTensor


class ComplexLazy:
    """The complex methods; each binding's ``ComplexLazyTensor(ComplexLazy, LazyTensor)``
    gives ``is_complex_array``, ``as_real`` and ``from_real``, and ``real_class``."""

    is_complex = True
    real_class: type = GenericLazyTensor

    def __init__(self, x: Any = None, axis: Any = None, is_complex: bool = True) -> None:
        if x is None:
            return
        if self.is_complex_array(x):
            super().__init__(self.as_real(x), axis)  # type: ignore[call-arg]
            return
        real = self.real_class(x, axis)  # a real array or number: its complex promotion
        z = real.real2complex()
        self.nid, self.ndim, self.leaves, self._meta = z.nid, z.ndim, z.leaves, z._meta

    @staticmethod
    def as_real(x: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def from_real(x: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------------ operands
    def _lift(self, other: Any) -> "ComplexLazy":
        """``other`` as a complex LazyTensor."""
        if getattr(other, "is_complex", False) is True:
            return other
        if isinstance(other, GenericLazyTensor):
            return other.real2complex()
        if isinstance(other, (int, float, complex)) and not isinstance(other, bool):
            c = complex(other)
            return self._as_complex(self.real_class([c.real, c.imag]))
        if self.is_array(other) or self.is_complex_array(other):
            return type(self)(other)
        raise TypeError(f"cannot combine a complex LazyTensor with {type(other).__name__}")

    def _as_complex(self, real: Any) -> Any:
        real.__class__ = type(self)
        return real

    def _as_real(self, res: Any) -> Any:
        res.__class__ = self.real_class
        return res

    def _binary(self, name: str, other: Any, first: int = 0) -> Any:
        return self.binary(name, self._lift(other), first)  # type: ignore[attr-defined]

    def _real_scalar(self, other: Any) -> bool:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return True
        return (
            isinstance(other, GenericLazyTensor)
            and not getattr(other, "is_complex", False)
            and other.ndim == 1
        )

    def _scale(self, other: Any) -> Any:
        s = other if isinstance(other, GenericLazyTensor) else self.real_class(other)
        return self.binary("ComplexRealScal", s, 1)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------------- arithmetic
    def __add__(self, other):
        return self._binary("ComplexAdd", other)

    def __radd__(self, other):
        return self._binary("ComplexAdd", other, 1)

    def __sub__(self, other):
        return self._binary("ComplexSubtract", other)

    def __rsub__(self, other):
        return self._binary("ComplexSubtract", other, 1)

    def __mul__(self, other):
        return (
            self._scale(other) if self._real_scalar(other) else self._binary("ComplexMult", other)
        )

    __rmul__ = __mul__  # complex multiplication commutes

    def __truediv__(self, other):
        return self._binary("ComplexDivide", other)

    def __rtruediv__(self, other):
        return self._binary("ComplexDivide", other, 1)

    def __neg__(self):
        return self._scale(-1)

    def exp(self):
        return self.unary("ComplexExp")  # type: ignore[attr-defined]

    def conj(self):
        return self.unary("Conj")  # type: ignore[attr-defined]

    @property
    def real(self):
        return self._as_real(self.unary("ComplexReal"))  # type: ignore[attr-defined]

    @property
    def imag(self):
        return self._as_real(self.unary("ComplexImag"))  # type: ignore[attr-defined]

    def abs(self):
        return self._as_real(self.unary("ComplexAbs"))  # type: ignore[attr-defined]

    def angle(self):
        return self._as_real(self.unary("ComplexAngle"))  # type: ignore[attr-defined]

    def sqabs(self):
        return self._as_real(self.unary("ComplexSquareAbs"))  # type: ignore[attr-defined]

    # ---------------------------------------------------------------------- reductions
    def sum(self, axis: int = -1, dim: Any = None, **kwargs):
        """The sum of the complex components (axis -1), or the Sum reduction over i or j."""
        axis = axis if dim is None else dim
        if axis == -1 or axis == self.nbatchdims + 2:  # type: ignore[attr-defined]
            return self.unary("ComplexSum")  # type: ignore[attr-defined]
        return self.reduction("Sum", axis=axis, **kwargs)

    def reduction(self, reduction_op: str, *args: Any, **kwargs: Any) -> Any:
        if reduction_op != "Sum":
            raise TypeError(
                f"{reduction_op} of a complex LazyTensor is not defined (complex LazyTensors "
                "have the Sum reduction only)"
            )
        res = super().reduction(reduction_op, *args, **kwargs)  # type: ignore[misc]
        return self.from_real(res) if self.is_array(res) else res  # call=False: a callable
