"""The operators and methods of :class:`tvmred.lazy.GenericLazyTensor`, pykeops 2.3's names and
semantics, each one operation of :mod:`tvmred.ops` (dimension rules and derivatives there).

``F`` below is the LazyTensor's formula, applied to each of its ``D`` components unless
stated; reductions are methods too (``sum``, ``logsumexp``, ``argKmin``, ... over ``axis`` =
i or j).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from . import lazynodes as ln

_NUMBERS = (int, float)


def _is_number(x: Any, val: float) -> bool:
    return x.__class__ in _NUMBERS and x == val


def _ints(*xs: Any) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in xs)


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

    # ----------------------------------------------------------------- differentiation
    def grad(self, other, gradin):
        """(dF/dv)^T e for the variable v = ``other`` (a single LazyTensor variable)."""
        return self.op("Grad", other, gradin)

    def diff(self, other, diffin):
        """(dF/dv) e: the derivative of F along e."""
        return self.op("Diff", other, diffin)

    def grad_matrix(self, other):
        """The transposed Jacobian of F w.r.t. v, flattened: Grad(F, v, e_k) for each k."""
        rows = [self.grad(other, self._basis(self.ndim, k)) for k in range(self.ndim)]
        return LazyOps.concatenate(tuple(rows))

    def divergence(self, other):
        """sum_k d F_k / d v_k (dim F = dim v)."""
        if self.ndim != other.ndim:
            raise ValueError("divergence needs dim F = dim v")
        terms = [self.grad(other, self._basis(self.ndim, k)).elem(k) for k in range(self.ndim)]
        res = terms[0]
        for t in terms[1:]:
            res = res + t
        return res

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

    # ------------------------------------------------------------------------ reductions
    def sum(self, axis: int = -1, dim: Optional[int] = None, **kwargs):
        """The sum of the components (axis -1), or the Sum reduction over i or j."""
        axis = axis if dim is None else dim
        if axis == -1 or axis == self.nbatchdims + 2:
            return self.unary("Sum")
        return self.reduction("Sum", axis=axis, **kwargs)

    def sum_reduction(self, axis=None, dim=None, **kwargs):
        return self.reduction("Sum", axis=axis, dim=dim, **kwargs)

    def logsumexp(self, axis=None, dim=None, weight=None, **kwargs):
        """log sum exp(F) (F scalar), or log sum exp(F) * weight."""
        return self.reduction("LogSumExp", other=weight, axis=axis, dim=dim, **kwargs)

    def logsumexp_reduction(self, **kwargs):
        return self.logsumexp(**kwargs)

    def sumsoftmaxweight(self, weight, axis=None, dim=None, **kwargs):
        """sum softmax(F) * weight."""
        return self.reduction("SumSoftMaxWeight", other=weight, axis=axis, dim=dim, **kwargs)

    def sumsoftmaxweight_reduction(self, **kwargs):
        return self.sumsoftmaxweight(**kwargs)

    def _minmax(self, red: str, unary: str, axis, dim, kwargs):
        axis = axis if dim is None else dim
        if axis == -1 or axis == self.nbatchdims + 2:
            return self.unary(unary)
        return self.reduction(red, axis=axis, **kwargs)

    def min(self, axis=-1, dim=None, **kwargs):
        """The min of the components (axis -1), or the Min reduction over i or j."""
        return self._minmax("Min", "Min", axis, dim, kwargs)

    def max(self, axis=-1, dim=None, **kwargs):
        return self._minmax("Max", "Max", axis, dim, kwargs)

    def argmin(self, axis=-1, dim=None, **kwargs):
        return self._minmax("ArgMin", "ArgMin", axis, dim, kwargs)

    def argmax(self, axis=-1, dim=None, **kwargs):
        return self._minmax("ArgMax", "ArgMax", axis, dim, kwargs)

    def min_reduction(self, axis=None, dim=None, **kwargs):
        return self.reduction("Min", axis=axis, dim=dim, **kwargs)

    def max_reduction(self, axis=None, dim=None, **kwargs):
        return self.reduction("Max", axis=axis, dim=dim, **kwargs)

    def argmin_reduction(self, axis=None, dim=None, **kwargs):
        return self.reduction("ArgMin", axis=axis, dim=dim, **kwargs)

    def argmax_reduction(self, axis=None, dim=None, **kwargs):
        return self.reduction("ArgMax", axis=axis, dim=dim, **kwargs)

    def min_argmin(self, axis=None, dim=None, **kwargs):
        return self.reduction("Min_ArgMin", axis=axis, dim=dim, **kwargs)

    def max_argmax(self, axis=None, dim=None, **kwargs):
        return self.reduction("Max_ArgMax", axis=axis, dim=dim, **kwargs)

    min_argmin_reduction = min_argmin
    max_argmax_reduction = max_argmax

    def Kmin(self, K, axis=None, dim=None, **kwargs):
        """The K smallest values, ascending."""
        return self.reduction("KMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    def argKmin(self, K, axis=None, dim=None, **kwargs):
        return self.reduction("ArgKMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    def Kmin_argKmin(self, K, axis=None, dim=None, **kwargs):
        return self.reduction("KMin_ArgKMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    Kmin_reduction, argKmin_reduction = Kmin, argKmin
    Kmin_argKmin_reduction = Kmin_argKmin

    # ---------------------------------------------------------------- linear operators
    def t(self):
        """The transpose: i- and j-variables exchanged, (..., N, M, D)."""
        leaves = tuple(leaf.swapped() for leaf in self.leaves)
        meta = {**self._meta, "ni": self.nj, "nj": self.ni}
        if self.ranges is not None:
            meta["ranges"] = (*self.ranges[3:6], *self.ranges[0:3])
        return self._derive(ln.transpose(self.nid), self.ndim, leaves, meta)

    @property
    def T(self):
        return self.t()

    def __matmul__(self, v):
        """K @ v = sum_j K_ij v_j for a dense v (N,) or (..., N, E): a Sum reduction."""
        if self._shape[-1] != 1:
            raise ValueError(f"K @ v needs a LazyTensor K of last dimension 1, got {self.shape}")
        newdims = (1, v.shape[0], 1) if len(v.shape) == 1 else (*v.shape[:-2], 1, *v.shape[-2:])
        kv = self * type(self)(v.reshape(newdims))
        kv = kv.sum(kv.dim() - 2)
        return kv.reshape(-1) if len(v.shape) == 1 else kv

    def solve(self, other, var=None, call: bool = True, **kwargs):
        """``a`` solving ``(alpha Id + K) a = b`` by conjugate gradient (``alpha`` keyword,
        default 1e-10, and ``eps``; K symmetric positive definite, not checked): with
        ``var=None``, ``K @ a = sum_j K_ij a_j``; else the LazyTensor is linear in the
        symbolic variable ``var``.  ``b`` (``other``) is an i-indexed (M, D) array (or a
        LazyTensor variable)."""
        b = other if isinstance(other, LazyOps) else type(self)(other, axis=0)
        if len(b.leaves) != 1 or b.leaves[0].cat not in (0, 1):
            raise ValueError("solve: the right-hand side must be an i- or j-indexed variable")
        axis = 1 - b.leaves[0].cat  # reduce over the other index
        if var is None:
            ind = 1 + max((leaf.ind for leaf in self.leaves if leaf.data is None), default=-1)
            var = type(self)((ind, b.ndim, axis))
            res = self * var
        else:
            res = self
        if len(var.leaves) != 1 or var.leaves[0].data is not None:
            raise ValueError("solve: var must be a symbolic variable, e.g. Vj(0, D)")
        alpha, eps = kwargs.pop("alpha", 1e-10), kwargs.pop("eps", 1e-6)
        red = res.reduction("Sum", axis=axis + self.nbatchdims, call=False, **kwargs)
        pos = var.leaves[0].ind
        if red.nsym != pos + 1:
            raise ValueError("solve: the LazyTensor has other symbolic variables than var")
        data = b.leaves[0].data
        kw = {**red.kwargs, "eps": eps}
        return self.solve_spec(red.spec, pos, red.full_arguments([data]), alpha, kw)

    def matvec(self, v):
        return self @ v

    def rmatvec(self, v):
        return self.T @ v
