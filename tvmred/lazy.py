"""``LazyTensor``: pykeops' symbolic matrices, built directly on tvmred's formula trees.

A LazyTensor ``K`` of shape ``(..., M, N, D)`` is a formula ``F(x_i, y_j, p)`` and the small
arrays it reads: ``K[..., i, j, :] = F(x_i, y_j, p)``.  Operators and math methods build the
formula (one memoised node per operation, :mod:`tvmred.lazynodes`); a reduction
(``K.sum(dim=1)``, ``K.logsumexp(1)``, ``K.argKmin(5, dim=1)``, ``K @ v``, ...) turns it into a
:class:`~tvmred.reductions.Reduction` -- memoised too, so that its compiled kernel is found
again on the next call -- and evaluates it as ``Genred`` does.

This module is binding-agnostic; ``tvmred.torch.LazyTensor`` and ``tvmred.numpy.LazyTensor``
supply the array type and the call (:class:`Binding`).
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

from . import lazynodes as ln
from .lazymeta import Leaf, arguments, merge_meta, split_kwargs, variables
from .lazyops import LazyOps
from .lazyred import LazyReductions

_COMPLEX_OF = {"Add": "ComplexAdd", "Subtract": "ComplexSubtract", "Mult": "ComplexMult",
               "Divide": "ComplexDivide"}  # fmt: skip


class GenericLazyTensor(LazyOps, LazyReductions):
    """The binding-agnostic LazyTensor (pykeops' ``GenericLazyTensor``).

    ``LazyTensor(x)`` with ``x`` an array of shape ``(..., M, 1, D)`` (an i-variable),
    ``(..., 1, N, D)`` (a j-variable) or ``(..., 1, 1, D)`` / ``(D,)`` (a parameter); a 2-D
    array with ``axis=0`` (i) or ``axis=1`` (j); a float or list of floats (a parameter); an
    int (a compile-time constant); a tuple ``(ind, dim, cat)`` (a symbolic variable, given
    when the reduction is called).  Dimensions before the last three are batch dimensions,
    broadcast between variables."""

    __array_ufunc__ = None  # numpy defers to our reflected operators
    float_types: tuple = (float,)
    nid, ndim, leaves = -1, 1, ()
    _meta: dict = {}  # _dtype, ni, nj, batchdims, ranges, backend (None: absent); shared
    is_complex = False
    complex_class: Optional[type] = None  # the binding's ComplexLazyTensor

    def __new__(cls, x: Any = None, axis: Optional[int] = None, is_complex: bool = False):
        """A complex array (or ``is_complex=True``) makes the binding's ComplexLazyTensor."""
        c = cls.complex_class
        if c is not None and not cls.is_complex and (is_complex or cls.is_complex_array(x)):
            return object.__new__(c)
        return object.__new__(cls)

    def __init__(self, x: Any = None, axis: Optional[int] = None, is_complex: bool = False):
        if x is None:
            return
        if self.is_array(x):
            return self._array(x, axis)
        if isinstance(x, tuple):
            return self._symbolic(x, axis)
        if isinstance(x, int) and not isinstance(x, bool):
            self.nid = ln.integer(x)
            return
        if isinstance(x, self.float_types) and not isinstance(x, bool):
            x = [float(x)]
        if isinstance(x, list):
            return self._numbers(x, axis)
        raise TypeError(
            f"LazyTensors are built from {self.array_name}, float/integer numbers, lists of "
            f"floats or (ind, dim, cat) triplets; got {type(x).__name__}"
        )

    def _get(name: str):  # type: ignore[misc]
        def get(self) -> Any:
            return self._meta.get(name)

        def put(self, value: Any) -> None:
            self._meta = {**self._meta, name: value}

        return property(get, put)

    ni, nj, batchdims = _get("ni"), _get("nj"), _get("batchdims")
    ranges, backend, _dtype = _get("ranges"), _get("backend"), _get("_dtype")
    del _get

    # ------------------------------------------------------------------ the binding's part

    array_name = "arrays"

    @staticmethod
    def is_array(x: Any) -> bool:
        raise NotImplementedError

    @staticmethod
    def dtype_name(x: Any) -> str:
        raise NotImplementedError

    @staticmethod
    def is_complex_array(x: Any) -> bool:
        return False

    @staticmethod
    def param(values: list, like: Any) -> Any:
        """A 1-D array of ``values`` with the dtype and device of ``like``."""
        raise NotImplementedError

    def evaluate(self, spec: tuple, args: list, kwargs: Optional[dict]) -> Any:
        """Run the reduction ``spec`` (:func:`tvmred.lazynodes.reduction`) on ``args``
        (Genred's call options in ``kwargs``; None: a plain call, without batch dimensions,
        ranges or options)."""
        raise NotImplementedError

    def solve_spec(self, spec: tuple, pos: int, args: list, alpha: float, kwargs: dict) -> Any:
        """Solve ``(alpha Id + K) a = b`` for the Sum reduction ``spec``, b in ``args[pos]``."""
        raise NotImplementedError

    # ---------------------------------------------------------------------- construction

    def _symbolic(self, x: tuple, axis: Optional[int]) -> None:
        if len(x) != 3 or not all(isinstance(v, int) for v in x):
            raise ValueError("LazyTensor(tuple) needs a triplet of integers (ind, dim, cat)")
        if axis is not None:
            raise ValueError("'axis' must not be given with a symbolic variable (ind, dim, cat)")
        ind, dim, cat = x
        if ind < 0 or dim < 1 or cat not in (0, 1, 2):
            raise ValueError(f"invalid symbolic variable (ind={ind}, dim={dim}, cat={cat})")
        self._set_leaf(Leaf(None, cat, dim, ind))

    def _numbers(self, x: list, axis: Optional[int]) -> None:
        if axis not in (None, 2):
            raise ValueError("lists of numbers are parameters: axis must be None or 2")
        if not x or not all(isinstance(v, (int, float)) for v in x):
            raise TypeError("a list makes a parameter: it must hold real numbers")
        self._set_leaf(Leaf([float(v) for v in x], 2, len(x)))

    def _array(self, x: Any, axis: Optional[int]) -> None:
        shape = x.shape
        nd = len(shape)
        # the usual case; plain bools, as torch.compile traces symbolic shapes here
        if nd == 3 and axis is None and bool(shape[0] == 1) is not bool(shape[1] == 1):
            cat = 1 if shape[0] == 1 else 0  # (1, N, D): j; (M, 1, D): i
            dim = operator.index(shape[2])
            self.leaves, self.ndim = (Leaf(x.squeeze(-3 if cat else -2), cat, dim),), dim
            self._meta = {"_dtype": self.dtype_name(x), "nj" if cat else "ni": shape[cat]}
            self.nid = ln.leaf(0, dim, cat)
            return
        meta = {"_dtype": self.dtype_name(x)}
        if nd >= 3:
            if axis is not None:
                raise ValueError("'axis' must not be given for a 3D+ array: it is inferred")
            if shape[-3] == 1 and shape[-2] == 1:  # (.., 1, 1, D): a parameter
                x, axis = x.reshape(tuple(shape[:-3]) + (shape[-1],)), 2
            elif shape[-3] == 1:  # (.., 1, N, D): a j-variable
                x, axis, n = x.squeeze(-3), 1, shape[-2]
            elif shape[-2] == 1:  # (.., M, 1, D): an i-variable
                x, axis, n = x.squeeze(-2), 0, shape[-3]
            else:
                raise ValueError(
                    f"a 3D+ array must have a shape (.., M, 1, D), (.., 1, N, D) or "
                    f"(.., 1, 1, D); got {tuple(shape)}"
                )
            if nd > 3:
                meta["batchdims"] = tuple(shape[:-3])
        elif nd == 2 and axis != 2:
            if axis not in (0, 1):
                raise ValueError(
                    "a 2D array needs an explicit axis: 0 (i-variable) or 1 (j-variable)"
                )
            n = shape[0]
        elif axis not in (None, 2):
            raise ValueError("a 0D or 1D array is a parameter: axis must be None or 2")
        else:
            if nd == 0:
                x = x.reshape(1)
            elif nd == 2:
                meta["batchdims"] = (shape[0],)
            axis = 2
        dim = operator.index(shape[-1]) if nd else 1  # specialised under torch.compile
        if axis != 2:
            meta["ni" if axis == 0 else "nj"] = n
        leaf = Leaf(x, axis, dim)
        self.leaves, self.ndim, self._meta = (leaf,), dim, meta
        self.nid = ln.leaf(0, dim, axis)

    def _set_leaf(self, leaf: Leaf) -> None:
        self.leaves, self.ndim = (leaf,), leaf.dim
        self.nid = ln.leaf(0, leaf.dim, leaf.cat)

    def lift(self, x: Any) -> "GenericLazyTensor":
        return x if isinstance(x, GenericLazyTensor) else type(self)(x)

    # ------------------------------------------------------------------------- combining

    def _combine(self, operands: Sequence["GenericLazyTensor"]) -> tuple[list, tuple, dict]:
        """(formula ids renumbered into one variable list, that list, merged attributes)."""
        first = operands[0]
        leaves, nids, meta = first.leaves, [first.nid], first._meta
        for o in operands[1:]:
            if o.leaves and leaves:
                perm = []
                for leaf in o.leaves:
                    for k, m in enumerate(leaves):
                        if m is leaf:
                            break
                    else:
                        k, leaves = len(leaves), (*leaves, leaf)
                    perm.append(k)
                same = all(p == n for n, p in enumerate(perm))
                nids.append(o.nid if same else ln.remap(o.nid, tuple(perm)))
            else:
                nids.append(o.nid)
                leaves = leaves or o.leaves
            meta = merge_meta(meta, o._meta)
        return nids, leaves, meta

    def _derive(self, nid: int, ndim: int, leaves: tuple, meta: dict) -> "GenericLazyTensor":
        res = object.__new__(type(self))
        res.nid, res.ndim, res.leaves, res._meta = nid, ndim, leaves, meta
        return res

    def op(self, name: str, *others: Any, params: tuple = (), first: int = 0) -> Any:
        """``name(operands; params)`` with ``self`` at position ``first`` among the operands
        (``first = 1``: the reflected operators)."""
        ops = [o if isinstance(o, GenericLazyTensor) else type(self)(o) for o in others]
        ops.insert(first, self)
        nids, leaves, meta = self._combine(ops)
        nid, dim = ln.apply(name, tuple(nids), params)
        return self._derive(nid, dim, leaves, meta)

    def binary(self, name: str, other: Any, first: int = 0) -> "GenericLazyTensor":
        """``name(self, other)`` (``first = 1``: ``name(other, self)``); a complex ``other``
        promotes ``self`` (+, -, *, / of complex values)."""
        if name in _COMPLEX_OF and self._complex_operand(other):
            return self.real2complex()._binary(_COMPLEX_OF[name], other, first)
        cls = self.__class__
        if not isinstance(other, GenericLazyTensor):
            other = cls(other)
        a, b = (self, other) if first == 0 else (other, self)
        la, lb = a.leaves, b.leaves
        if not (la and lb):
            leaves = la or lb
            nid, dim = ln.binary(name, a.nid, b.nid, -1)
        elif len(lb) == 1 and lb[0] not in la:  # the common case (leaves compare by identity)
            leaves = la + lb
            nid, dim = ln.binary(name, a.nid, b.nid, len(la))
        else:
            nids, leaves, _ = self._combine((a, b))
            nid, dim = ln.apply(name, tuple(nids), ())
        res = object.__new__(cls)
        res.nid, res.ndim, res.leaves = nid, dim, leaves
        res._meta = merge_meta(a._meta, b._meta)
        return res

    def _complex_operand(self, x: Any) -> bool:
        return (
            self.complex_class is not None
            and not self.is_complex
            and (isinstance(x, complex) or getattr(x, "is_complex", False) is True
                 or self.is_complex_array(x))
        )  # fmt: skip

    def _to_complex(self, name: str) -> Any:
        if self.complex_class is None:
            raise TypeError(f"{type(self).__name__} has no complex LazyTensors")
        res = self.unary(name)
        res.__class__ = self.complex_class
        return res

    def real2complex(self):
        """F + 0i (a complex LazyTensor)."""
        return self._to_complex("Real2Complex")

    def imag2complex(self):
        """0 + iF (a complex LazyTensor)."""
        return self._to_complex("Imag2Complex")

    def exp1j(self):
        """e^(iF) (a complex LazyTensor)."""
        return self._to_complex("ComplexExp1j")

    def unary(self, name: str, params: tuple = ()) -> "GenericLazyTensor":
        nid, dim = ln.unary(name, self.nid, params)
        res = object.__new__(self.__class__)
        res.nid, res.ndim, res.leaves, res._meta = nid, dim, self.leaves, self._meta
        return res

    # ------------------------------------------------------------------------- shapes

    @property
    def dtype(self) -> Optional[str]:
        return self._dtype

    @property
    def _shape(self) -> tuple:
        m = self._meta
        return (*(m.get("batchdims") or ()), m.get("ni") or 1, m.get("nj") or 1, self.ndim)

    @property
    def shape(self) -> tuple:
        s = self._shape
        return s[:-1] if s[-1] == 1 else s

    def dim(self) -> int:
        return len(self._shape)

    @property
    def nbatchdims(self) -> int:
        batch = self._meta.get("batchdims")
        return len(batch) if batch else 0

    @property
    def formula(self) -> str:
        return ln.text(self.nid)

    def __repr__(self) -> str:
        return f"{type(self).__name__}\n    formula: {self.formula}\n    shape: {self.shape}"

    __str__ = __repr__

    # ------------------------------------------------------------------------ reductions

    def reduction(
        self,
        reduction_op: str,
        other: Any = None,
        opt_arg: Optional[int] = None,
        axis: Optional[int] = None,
        dim: Optional[int] = None,
        call: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``reduction_op`` over i (``axis = nbatchdims``) or j (``nbatchdims + 1``); ``other``
        is the weight of LogSumExp / SumSoftMaxWeight.  ``call=False`` (or symbolic
        variables) returns a callable; else the result array(s)."""
        axis = dim if axis is None else axis
        nb = self.nbatchdims
        if axis.__class__ is not int or not nb <= axis <= nb + 1:
            raise ValueError(
                f"reductions need axis (or dim) = {nb} (over i) or {nb + 1} (over j), the "
                f"number of batch dimensions + 0 or 1; got {axis}"
            )
        init, call_kw = split_kwargs(kwargs) if kwargs else (kwargs, kwargs)
        if other is None:
            nids, leaves, meta = (self.nid,), self.leaves, self._meta
        else:
            nids, leaves, meta = self._combine((self, self.lift(other)))
            nids = tuple(nids)
        if init:
            acc = "float64" if init.get("use_double_acc") else init.get("dtype_acc", "auto")
            opts = (reduction_op, axis - nb, opt_arg, acc, init.get("sum_scheme", "auto"))
        else:
            opts = (reduction_op, axis - nb, opt_arg, "auto", "auto")
        spec, nsym = ln.plan(nids, tuple([leaf.sig for leaf in leaves]), opts)
        if call and not nsym:  # evaluate now (the common case: no callable object)
            if not call_kw and not ("batchdims" in meta or "ranges" in meta or "backend" in meta):
                return self.evaluate(spec, arguments(self, leaves, ()), None)  # plain
            if "ranges" in meta or "backend" in meta:
                call_kw = {**{k: meta[k] for k in ("ranges", "backend") if k in meta}, **call_kw}
            return self.evaluate(spec, arguments(self, leaves, ()), call_kw)
        return LazyReduction(self, spec, nsym, leaves, meta, call_kw)


class LazyReduction:
    """A reduced LazyTensor: calling it evaluates the reduction (pykeops' ``call=False``
    result).  Symbolic variables are given as positional arguments, in position order."""

    def __init__(self, lt, spec: tuple, nsym: int, leaves: tuple, meta: dict, kw: dict) -> None:
        self.lt, self.spec, self.nsym, self.leaves = lt, spec, nsym, leaves
        self.reduction_op, self.axis = spec[2], spec[3]
        self.kwargs = {k: meta[k] for k in ("ranges", "backend") if meta.get(k) is not None}
        self.kwargs.update(kw)

    def full_arguments(self, args: Sequence) -> list:
        return arguments(self.lt, self.leaves, args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) != self.nsym:
            raise ValueError(
                f"this reduction takes {self.nsym} argument(s) for its symbolic variables, "
                f"got {len(args)}"
            )
        kw = {**self.kwargs, **kwargs} if kwargs else self.kwargs
        return self.lt.evaluate(self.spec, arguments(self.lt, self.leaves, args), kw)


__all__ = ["GenericLazyTensor", "LazyReduction", "variables"]
