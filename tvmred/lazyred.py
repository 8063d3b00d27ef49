"""The reductions and linear operators of :class:`tvmred.lazy.GenericLazyTensor`, pykeops
2.3's names and semantics: ``sum``, ``logsumexp``, ``min``/``argKmin``/... over ``axis`` = i
or j (the components' own sum/min/max for axis -1), ``K @ v``, ``t()``, ``solve``.  Every
reduction method takes the keywords of a ``Genred`` call (``backend``, ``device_id``,
``ranges``, ``out``) and of its construction (``dtype_acc``, ``sum_scheme``, ...)."""

from __future__ import annotations

from typing import Optional

from . import lazynodes as ln


class LazyReductions:
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
        """log sum exp(F) (F scalar), or log sum exp(F) * weight (``weight=`` or, as pykeops
        also takes it, ``other=``)."""
        if weight is None:
            weight = kwargs.pop("other", None)
        return self.reduction("LogSumExp", other=weight, axis=axis, dim=dim, **kwargs)

    def logsumexp_reduction(self, **kwargs):
        return self.logsumexp(**kwargs)

    def sumsoftmaxweight(self, weight, axis=None, dim=None, **kwargs):
        """sum softmax(F) * weight."""
        return self.reduction("SumSoftMaxWeight", other=weight, axis=axis, dim=dim, **kwargs)

    def sumsoftmaxweight_reduction(self, **kwargs):
        return self.sumsoftmaxweight(**kwargs)

    def _component_or_reduction(self, red: str, unary: str, axis, dim, kwargs):
        axis = axis if dim is None else dim
        if axis == -1 or axis == self.nbatchdims + 2:
            return self.unary(unary)
        return self.reduction(red, axis=axis, **kwargs)

    def min(self, axis=-1, dim=None, **kwargs):
        """The min of the components (axis -1), or the Min reduction over i or j."""
        return self._component_or_reduction("Min", "Min", axis, dim, kwargs)

    def max(self, axis=-1, dim=None, **kwargs):
        return self._component_or_reduction("Max", "Max", axis, dim, kwargs)

    def argmin(self, axis=-1, dim=None, **kwargs):
        return self._component_or_reduction("ArgMin", "ArgMin", axis, dim, kwargs)

    def argmax(self, axis=-1, dim=None, **kwargs):
        return self._component_or_reduction("ArgMax", "ArgMax", axis, dim, kwargs)

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

    def __matmul__(self, v, **kwargs):
        """K @ v = sum_j K_ij v_j for a dense v (N,) or (..., N, E): a Sum reduction (with
        the keywords of a reduction call, e.g. ``K.__matmul__(v, backend="CPU")``)."""
        if self._shape[-1] != 1:
            raise ValueError(f"K @ v needs a LazyTensor K of last dimension 1, got {self.shape}")
        newdims = (1, v.shape[0], 1) if len(v.shape) == 1 else (*v.shape[:-2], 1, *v.shape[-2:])
        kv = self * type(self)(v.reshape(newdims))
        kv = kv.sum(kv.dim() - 2, **kwargs)
        return kv.reshape(-1) if len(v.shape) == 1 else kv

    def solve(self, other, var=None, call: bool = True, **kwargs):
        """``a`` solving ``(alpha Id + K) a = b`` by conjugate gradient (``alpha`` keyword,
        default 1e-10, and ``eps``; K symmetric positive definite, not checked): with
        ``var=None``, ``K @ a = sum_j K_ij a_j``; else the LazyTensor is linear in the
        symbolic variable ``var``.  ``b`` (``other``) is an i-indexed (M, D) array (or a
        LazyTensor variable)."""
        b = other if isinstance(other, LazyReductions) else type(self)(other, axis=0)
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

    def matvec(self, v, **kwargs):
        return self.__matmul__(v, **kwargs)

    def rmatvec(self, v, **kwargs):
        return self.T.__matmul__(v, **kwargs)
