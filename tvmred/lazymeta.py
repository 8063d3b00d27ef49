"""What a LazyTensor carries besides its formula (:mod:`tvmred.lazy`): its variables
(:class:`Leaf`), the attributes merged when two are combined (batch shape, ranges, backend),
the split of a reduction's keywords into construction and call options, and the kernel's
argument list."""

from __future__ import annotations

from typing import Any, Optional, Sequence


class Leaf:
    """One variable: an array (i-, j-indexed or parameter), numbers (a parameter whose
    dtype is the data's), or a symbolic variable ``Var(ind, dim, cat)`` given at call time."""

    __slots__ = ("data", "cat", "dim", "ind", "sig")

    def __init__(self, data: Any, cat: int, dim: int, ind: Optional[int] = None) -> None:
        self.data, self.cat, self.dim, self.ind = data, cat, dim, ind
        self.sig = (dim, cat, -1 if ind is None else ind)

    def swapped(self) -> "Leaf":
        """The same data as the other index (i <-> j); parameters stay."""
        return self if self.cat == 2 else Leaf(self.data, 1 - self.cat, self.dim, self.ind)


INIT_KW = ("dtype_acc", "use_double_acc", "sum_scheme", "enable_chunks", "use_fast_math")
INIT_KW += ("optional_flags",)
CALL_KW = ("backend", "device_id", "ranges", "out")


def split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """(Genred constructor options, call options); TypeError for anything else."""
    init, call = {}, {}
    for k, v in kwargs.items():
        if k in INIT_KW:
            init[k] = v
        elif k in CALL_KW:
            call[k] = v
        else:
            raise TypeError(f"unexpected keyword argument {k!r}")
    return init, call


def arguments(lt: Any, leaves: tuple, args: Sequence) -> list:
    """The kernel's arguments: the symbolic ones (``args``), then the data, numbers as
    arrays with the data's dtype and device."""
    out = list(args)
    numbers = False
    for leaf in leaves:
        data = leaf.data
        if data is not None:
            out.append(data)
            numbers = numbers or data.__class__ is list
    if numbers:
        like = None
        for a in out:
            if a.__class__ is not list:
                like = a
                break
        if like is None:
            raise ValueError("a LazyTensor of numbers only has no dtype: give an array")
        out = [lt.param(a, like) if a.__class__ is list else a for a in out]
    return out


def merge_meta(a: dict, b: dict) -> dict:
    """The attributes of a combination: each set in one operand, or equal in both."""
    if a is b or not b:
        return a
    if not a:
        return b
    out = {**a, **b}
    for k in a.keys() & b.keys():
        out[k] = broadcast(a[k], b[k]) if k == "batchdims" else _merge(k, a[k], b[k])
    return out


def _merge(name: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return b if a is None else a
    if name == "ranges":
        if len(a) == len(b) and all(x is y or _same(x, y) for x, y in zip(a, b)):
            return a
    elif a == b:  # (no `is`: torch.compile does not trace it on tuples)
        return a
    raise ValueError(f"incompatible values for attribute {name}: {a} and {b}")


def _same(x: Any, y: Any) -> bool:
    return tuple(x.shape) == tuple(y.shape) and bool((x == y).all())


def broadcast(a: Optional[tuple], b: Optional[tuple]) -> Optional[tuple]:
    """Broadcast batch shapes (numpy's rule); ValueError if they do not broadcast."""
    if a is None or b is None:
        return b if a is None else a
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"incompatible batch dimensions: {a} and {b}")
    return tuple(max(x, y) for x, y in zip(a, b))


def variables(cls: type) -> tuple[Any, ...]:
    """``Var``, ``Vi``, ``Vj``, ``Pm`` building LazyTensors of class ``cls``."""

    def Var(x_or_ind: Any, dim: Optional[int] = None, cat: Optional[int] = None) -> Any:
        """``Var(x, cat=c)``: a LazyTensor of data; ``Var(ind, dim, cat)``: a symbolic
        variable."""
        if dim is None:
            return cls(x_or_ind, axis=cat)
        return cls((x_or_ind, dim, cat))

    def Vi(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """An i-indexed variable: ``Vi(x)`` for x of shape (M, D), or ``Vi(ind, dim)``."""
        return Var(x_or_ind, dim, 0)

    def Vj(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """A j-indexed variable: ``Vj(y)`` for y of shape (N, D), or ``Vj(ind, dim)``."""
        return Var(x_or_ind, dim, 1)

    def Pm(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """A parameter: ``Pm(p)`` for p of shape (D,) or a number, or ``Pm(ind, dim)``."""
        return Var(x_or_ind, dim, 2)

    return Var, Vi, Vj, Pm
