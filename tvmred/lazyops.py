"""The operators and methods of :class:`tvmred.lazy.GenericLazyTensor`, pykeops 2.3's names and
semantics, each one operation of :mod:`tvmred.ops` (dimension rules and derivatives there).

``F`` below is the LazyTensor's formula, applied to each of its ``D`` components unless
stated; reductions are methods too (``sum``, ``logsumexp``, ``argKmin``, ... over ``axis`` =
i or j: :mod:`tvmred.lazyred`).
"""

from __future__ import annotations

import math
from typing import Any

_NUMBERS = (int, float)


def _is_number(x: Any, val: float) -> bool:
    return x.__class__ in _NUMBERS and x == val


def _ints(*xs: Any) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in xs)


def _int_tuple(s: Any) -> tuple:
    """A shape or axis list as a tuple of ints (an int alone: a 1-tuple)."""
    return (s,) if isinstance(s, int) else tuple(int(x) for x in s)


class LazyOps:
    # ------------------------------------------------------------------- arithmetic
    def __add__(self, other):
        """F + G (dims equal, or one of them 1)."""
        return self if _is_number(other, 0) else self.binary("Add", other)

    def __radd__(self, other):
        return self if _is_number(other, 0) else self.binary("Add", other, 1)

    def __sub__(self, other):
        return self if _is_number(other, 0) else self.binary("Subtract", other)

    def __rsub__(self, other):
        return -self if _is_number(other, 0) else self.binary("Subtract", other, 1)

    def __mul__(self, other):
        """F * G, elementwise (or scalar * vector).  ``F * 0`` is the integer 0, as pykeops."""
        if _is_number(other, 0):
            return 0
        if _is_number(other, 1):
            return self
        return -self if _is_number(other, -1) else self.binary("Mult", other)

    def __rmul__(self, other):
        if _is_number(other, 0):
            return 0
        if _is_number(other, 1):
            return self
        return -self if _is_number(other, -1) else self.binary("Mult", other, 1)

    def __truediv__(self, other):
        return self if _is_number(other, 1) else self.binary("Divide", other)

    def __rtruediv__(self, other):
        if _is_number(other, 0):
            return 0
        return self.unary("Inv") if _is_number(other, 1) else self.binary("Divide", other, 1)

    def __or__(self, other):
        """(F | G): the dot product, dim 1."""
        return self.op("Scalprod", other)

    def __ror__(self, other):
        return self.op("Scalprod", other, first=1)

    def __neg__(self):
        return self.unary("Minus")

    def __abs__(self):
        return self.unary("Abs")

    def abs(self):
        return self.unary("Abs")

    def __pow__(self, other):
        """F ** n: Square for 2, Pow(F, n) for other integers, Sqrt / Rsqrt for 0.5 / -0.5,
        else Powf(F, G) = Exp(G * Log(F))."""
        if other.__class__ is int:
            return self.unary("Square") if other == 2 else self.unary("Pow", (other,))
        if isinstance(other, float) and other in (0.5, -0.5):
            return self.unary("Sqrt" if other == 0.5 else "Rsqrt")
        g = self.lift(other)
        if g.ndim not in (1, self.ndim):
            raise ValueError(f"exponent of dim {g.ndim} for a LazyTensor of dim {self.ndim}")
        return self.op("Powf", g)

    def power(self, other):
        return self**other

    def square(self):
        return self.unary("Square")

    # ------------------------------------------------------------------- comparisons
    def __eq__(self, other):  # type: ignore[override]
        """0/1 mask of F == G (and likewise !=, <, <=, >, >=)."""
        return self.op("Equal", other)

    def __ne__(self, other):  # type: ignore[override]
        return self.op("NotEqual", other)

    def __lt__(self, other):
        return self.op("LessThan", other)

    def __le__(self, other):
        return self.op("LessOrEqual", other)

    def __gt__(self, other):
        return self.op("GreaterThan", other)

    def __ge__(self, other):
        return self.op("GreaterOrEqual", other)

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------- elementwise functions
    def exp(self):
        return self.unary("Exp")

    def log(self):
        return self.unary("Log")

    def xlogx(self):
        """F log F, 0 at 0."""
        return self.unary("XLogX")

    def cos(self):
        return self.unary("Cos")

    def sin(self):
        return self.unary("Sin")

    def sinxdivx(self):
        """sin(F) / F, 1 at 0."""
        return self.unary("SinXDivX")

    def sinc(self):
        """sin(pi F) / (pi F)."""
        return (math.pi * self).sinxdivx()

    def asin(self):
        return self.unary("Asin")

    def acos(self):
        return self.unary("Acos")

    def atan(self):
        return self.unary("Atan")

    def atan2(self, other):
        """atan2(F, G)."""
        return self.op("Atan2", other)

    def sqrt(self):
        return self.unary("Sqrt")

    def rsqrt(self):
        """1 / sqrt(F), 0 at 0."""
        return self.unary("Rsqrt")

    def sign(self):
        return self.unary("Sign")

    def step(self):
        """0 if F < 0 else 1."""
        return self.unary("Step")

    def relu(self):
        return self.unary("ReLU")

    def clamp(self, a, b):
        """min(max(F, a), b): ClampInt for integer bounds, else Clamp(F, a, b)."""
        if _ints(a, b):
            return self.unary("ClampInt", (a, b))
        return self.op("Clamp", a, b)

    def ifelse(self, a, b):
        """a where F >= 0, b elsewhere."""
        return self.op("IfElse", a, b)

    def mod(self, modulus, offset=0):
        """F - modulus * floor((F - offset) / modulus)."""
        return self.op("Mod", modulus, offset)

    def round(self, d: int = 0):
        """F rounded to d decimals."""
        if not _ints(d):
            raise ValueError(f"round: the number of decimals must be an integer, got {d!r}")
        return self.unary("Round", (d,))

    # ---------------------------------------------------------------- vector operations
    def sqnorm2(self):
        """|F|^2, dim 1."""
        return self.unary("SqNorm2")

    def norm2(self):
        return self.unary("Norm2")

    def norm(self, dim: int):
        if dim not in (-1, len(self._shape) - 1):
            raise ValueError("LazyTensors only support norms over their last dimension")
        return self.norm2()

    def normalize(self):
        """F / |F|."""
        return self.unary("Normalize")

    def sqdist(self, other):
        """|F - G|^2."""
        return self.op("SqDist", other)

    def weightedsqnorm(self, s):
        """s-weighted |F|^2: s of dim 1 (isotropic), D (diagonal) or D^2 (full)."""
        s = self.lift(s)
        if s.ndim not in (1, self.ndim, self.ndim**2):
            raise ValueError(
                f"weightedsqnorm: weights of dim {s.ndim}; expected 1, D or D^2 with D={self.ndim}"
            )
        return self.op("WeightedSqNorm", s, first=1)

    def weightedsqdist(self, g, s):
        """(F - g).weightedsqnorm(s)."""
        return (self - self.lift(g)).weightedsqnorm(s)

    def elem(self, i: int):
        """Component i, dim 1."""
        if not _ints(i) or not 0 <= i < self.ndim:
            raise ValueError(f"elem: index {i!r} is not in [0, {self.ndim})")
        return self.unary("Elem", (i,))

    def extract(self, i: int, d: int):
        """Components i .. i+d-1."""
        if not _ints(i, d) or not (0 <= i < self.ndim and 1 <= d and i + d <= self.ndim):
            raise ValueError(f"extract({i!r}, {d!r}) is out of bounds for dim {self.ndim}")
        return self.unary("Extract", (i, d))

    def __getitem__(self, key):
        """``F[k]`` (elem), ``F[a:b]`` (extract), or ``F[..., :, :, k]``: the last dim only."""
        if isinstance(key, tuple):
            full = (slice(None),) * (len(self._shape) - 1)
            if len(key) == len(self._shape) and key[:-1] == full:
                key = key[-1]
            elif len(key) == 2 and key[0] is Ellipsis:
                key = key[1]
            else:
                raise ValueError("LazyTensors only support indexing along their last dimension")
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError("LazyTensors do not support slices with a step")
            start = 0 if key.start is None else key.start
            stop = self.ndim if key.stop is None else key.stop
            return self.extract(start, stop - start)
        if _ints(key):
            return self.elem(key)
        raise ValueError("LazyTensors support indexing with integers and plain slices only")

    def one_hot(self, D: int):
        """One-hot vector of dim D of round(F) (F scalar)."""
        if not _ints(D) or self.ndim != 1:
            raise ValueError("one_hot needs a scalar LazyTensor and an integer dimension")
        return self.unary("OneHot", (D,))

    def concat(self, other):
        """Concatenation along the last dimension."""
        return self.op("Concat", other)

    @staticmethod
    def concatenate(tuple_of_lt, axis: int = -1):
        if not isinstance(tuple_of_lt, tuple) or not tuple_of_lt:
            raise ValueError("concatenate takes a non-empty tuple of LazyTensors")
        if axis not in (-1, len(tuple_of_lt[0]._shape) - 1):
            raise ValueError("LazyTensors only support concatenation along the last axis")
        res = tuple_of_lt[0]
        for x in tuple_of_lt[1:]:
            res = res.concat(x)
        return res

    @staticmethod
    def cat(tuple_of_lt, dim: int):
        return LazyOps.concatenate(tuple_of_lt, dim)

    def matvecmult(self, other):
        """F (dim A*B, row-major A x B) times G (dim B): dim A."""
        return self.op("MatVecMult", other)

    def vecmatmult(self, other):
        """F (dim A) times G (dim A*B, row-major A x B): dim B."""
        return self.op("VecMatMult", other)

    def tensorprod(self, other):
        """Outer product, row-major: dim A*B."""
        return self.op("TensorProd", other)

    def keops_tensordot(self, other, dimfa, dimfb, contfa, contfb, *args):
        """numpy.tensordot of F and G seen as row-major tensors of shapes ``dimfa`` and
        ``dimfb``, axes ``contfa`` of F contracted with ``contfb`` of G; ``args[0]``, if
        given, permutes the free axes (F's, then G's); flattened."""
        perm = _int_tuple(args[0]) if args else ()
        shapes = tuple(_int_tuple(s) for s in (dimfa, dimfb, contfa, contfb))
        return self.op("TensorDot", other, params=(*shapes, perm))

    def bspline(self, x, k: int = 0):
        """The B-splines of order ``k`` on the knots F (dim n), at the scalar x: dim n-k-1."""
        if not _ints(k) or k < 0:
            raise ValueError(f"bspline: the order must be an integer >= 0, got {k!r}")
        return self.op("BSpline", x, params=(k,))

    def keops_kron(self, other, dimfself, dimfother):
        """numpy.kron of F and G seen as row-major tensors of shapes ``dimfself`` and
        ``dimfother`` (as many axes each), flattened."""
        return self.op("Kron", other, params=(_int_tuple(dimfself), _int_tuple(dimfother)))

    # ----------------------------------------------------------------- differentiation
    def grad(self, other, gradin):
        """(dF/dv)^T e for the variable v = ``other`` (a single LazyTensor variable)."""
        return self.op("Grad", other, gradin)

    def diff(self, other, diffin):
        """(dF/dv) e: the derivative of F along e."""
        return self.op("Diff", other, diffin)

    def grad_matrix(self, other):
        """The transposed Jacobian of F w.r.t. v, flattened: Grad(F, v, e_k) for each k."""
        return self.op("GradMatrix", other)

    def divergence(self, other):
        """sum_k d F_k / d v_k (dim F = dim v)."""
        if self.ndim != other.ndim:
            raise ValueError("divergence needs dim F = dim v")
        terms = [self.grad(other, self._basis(self.ndim, k)).elem(k) for k in range(self.ndim)]
        res = terms[0]
        for t in terms[1:]:
            res = res + t
        return res

    def trace_operator(self, other):
        """The trace of F's Jacobian w.r.t. the variable v = ``other`` (F linear in v, of dim
        1 or dim v; keopscore's TraceOperator)."""
        return self.op("TraceOperator", other)

    def softdtw_sqdist(self, other, gamma):
        """Soft-DTW of the sequences F (dim n) and G (dim m) for the cost (F_i - G_j)^2, with
        smoothing ``gamma`` (a scalar LazyTensor or number); n m at most 64 cells."""
        return self.op("SoftDTW_SqDist", other, gamma)

    def difference_matrix(self, other):
        """F_i - G_j at j * dim F + i (dim F * dim G)."""
        return self.op("DifferenceMatrix", other)

    def laplacian(self, other):
        """The divergence of the gradient (F scalar)."""
        if self.ndim != 1:
            raise ValueError("laplacian needs a scalar LazyTensor")
        return self.grad(other, 1).divergence(other)

    def _basis(self, d: int, k: int):
        """The constant vector e_k of dim d."""
        one = type(self)(1)
        return one if d == 1 else one.unary("ElemT", (d, k))

    def factorize(self, other=None):
        """Factorisation is an optimisation of pykeops' code generator: the same formula."""
        return self

    def auto_factorize(self):
        return self
