"""The data model of reductions: each reduction is one :class:`RedDef` with all its rules
(registered by its family's module), and a :class:`Reduction` is one use of it (formula,
output index, arguments).

A reduction ``out_i = Red_j F(i, j)`` (or over i) is lowered as one reduction block ``red``
over the kernel's output rows and the ``cols`` columns of its state buffers.  A record gives

* ``state``    -- the kernel's output buffers ``[(cols, dtype), ...]`` from (dim F, variant,
  dtype, accumulator dtype); ``width`` -- how many of those values per row a kernel keeps in
  registers (the schedule sizes its row blocks with it);
* ``compute``  -- the TE reducer (``te.sum`` or a ``te.comm_reducer`` on a tuple state);
* ``finalize`` -- array code (torch or numpy: :mod:`tvmred.arrays`) turning the state
  buffers into pykeops' outputs;
* ``combine``  -- array code merging partial states of disjoint ranges of the reduced index
  (split-j schemes, distributed reductions): ``states[p]`` for ranges in increasing order;
* ``vjp``      -- the gradient rule: the reductions that compute the gradient of a
  :class:`Reduction` w.r.t. one argument (a :class:`Chain` or a :class:`Gathered`), None
  when the reduction has none;
* ``kind``     -- the tag schedules read (they never see the formula);
* ``tree``     -- how the kernel's formula is built from F and the weight G (``formula2``).

Vector formulas: Sum, Max, Min, Arg*, KMin* reduce each component separately (as pykeops);
the LogSumExp family needs a scalar F and takes an optional weight G.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..arrays import compute_dtype, xp
from ..diff import diff as sym_diff
from ..ops import add, make
from ..tree import Node, var
from .plans import Chain, Gathered, Plan, Step, plan_reductions  # noqa: F401  (re-exported)
from .space import Space, by_column, inf, masked, tirx  # noqa: F401  (the reducers' helpers)


@dataclass(frozen=True)
class Variant:
    """Compile-time options of a reduction kernel: ``k``, the K of the K-min reductions;
    ``scheme``, the summation scheme of Sum ("direct", "block" or "kahan"); ``split``, the
    split-j kernel (partial states of chunks of the reduced index, see :class:`Space`);
    ``ranged``, the block-sparse kernel (a split-j kernel whose chunks are tasks: a block of
    output rows and a range of the reduced index each)."""

    k: Optional[int] = None
    scheme: Optional[str] = None
    split: bool = False
    ranged: bool = False
    narrow: bool = False  # split-j with the template's narrower row block (few output rows)
    nonneg: tuple = ()  # positions of parameters whose values are all >= +0 (checked at the
    # call): an Exp of a never-positive argument under that assumption is e^-y (ops.signs)

    def key(self) -> dict:
        return {n: v for n, v in dataclasses.asdict(self).items() if v not in (None, False, ())}

    @property
    def sequential(self) -> bool:
        """A Sum scheme whose terms are added one after another (Kahan's compensation,
        the -0-started copy): no blocks of j."""
        return self.scheme in ("kahan", "copy")


def xp_of(states: Sequence) -> Any:
    """The array namespace (:mod:`tvmred.arrays`) of a list of state buffers."""
    return xp(states[0])


def tangent_diff(r: "Reduction", node: Node, ks: tuple) -> Node:
    """dF = sum_k (dF/dv_k) t_k, the tangent t_k of argument k at position nargs + n (a JVP
    plan is a Chain whose steps take, after the forward call's arguments, the tangents of the
    arguments ``ks`` ("tangents"), then the forward output ("out") or earlier results)."""
    out = None
    for n, k in enumerate(ks):
        d = sym_diff(node, r.args[k], r.tangent(n, k))
        out = d if out is None else add(out, d)
    return out


# ------------------------------------------------------------------------------ registry


def plain_variant(opt_arg, sum_scheme, dtype, acc) -> Variant:
    return Variant()


@dataclass(frozen=True)
class RedDef:
    name: str
    kind: str  # schedule tag
    kernel: str  # reductions with the same kernel name share compiled kernels (Min, ArgMin...)
    state: Callable[[int, Variant, str, str], list]  # (dim F, variant, dtype, acc) -> [(cols, dt)]
    compute: Callable[..., list]  # (te, root, rows, Space, dim, variant, dtype, acc) -> [tensor]
    finalize: Callable[..., Any]  # (states: [arrays], variant, dtype name) -> output(s)
    combine: Callable[[list, Variant], list]  # partial states (P, rows, cols) -> states
    vjp: Optional[Callable[["Reduction", int], Plan]]  # None: no gradient
    grad_doc: str  # the README's "gradient" column
    jvp: Optional[Callable[["Reduction", tuple], Plan]] = None  # forward mode; None: none
    index_states: Optional[Callable[[Optional[int]], slice]] = None  # K -> the state buffers
    # holding positions along the reduced index (int32, -1: none), K of them
    variant: Callable[..., Variant] = plain_variant  # (opt_arg, sum_scheme, dtype, acc) -> Variant
    width: Optional[Callable[[int, Variant, str, str], int]] = None  # default: all state columns
    tree: Callable[[Node, Optional[Node]], Node] = lambda main, weight: main
    columns: Callable[[Node, int, int], Node] = lambda f, a, n: make("Extract", f, params=(a, n))
    # (kernel formula, start, n) -> the formula of state columns start..start+n-1 alone
    weight: Optional[str] = None  # None: no formula2; "optional"; "required"
    needs_k: bool = False
    scalar: bool = False  # F must have dim 1
    root_uses: Optional[Callable[[int], list]] = None  # per root component, if not 1 each
    partial: Callable[[Variant], int] = lambda v: 0  # > 0: ReductionShape.block (Sum)
    two_pass: Optional[Callable[[Node, str], bool]] = None  # whether the kernel of this formula
    # and input dtype has a two-pass form over blocks of j (Space.two_pass; ``compute`` builds
    # it): LSE whose weight is made of variables and constants
    join: Optional[Callable[[list], list]] = None  # the states of column chunks, side by
    # side (default: each buffer's columns concatenated)
    chunking: Optional[Callable[[Node, Variant, str, str, bool], tuple]] = None  # (formula,
    # variant, dtype, accumulator dtype, whether the target has two-pass kernels) -> (formula
    # columns, the most one kernel takes) for column chunks; default: every buffer has one
    # column per formula column, launch.MAX_STATE state values a kernel
    doc: str = ""

    def blocked(self, formula: Node, dtype: str) -> bool:
        """Whether this formula's kernel for inputs of ``dtype`` has a two-pass form."""
        return self.two_pass is not None and bool(self.two_pass(formula, dtype))

    def selected(self, states: list, k: Optional[int]) -> Any:
        """The positions along the reduced index that the state holds, (n, K, D) int64."""
        x = xp_of(states)
        return x.astype(x.stack(states[self.index_states(k)], 1), "int64")

    def shift(self, states: list, k: Optional[int], offset: int) -> list:
        """States of a range of the reduced index starting at ``offset``, with positions made
        global (for :attr:`combine`)."""
        if self.index_states is None or offset == 0:
            return list(states)
        sl = self.index_states(k)
        out = list(states)
        out[sl] = [xp_of(states).where(t >= 0, t + offset, t) for t in states[sl]]
        return out

    def join_states(self, parts: list) -> list:
        """The states of a reduction's column chunks (``launch.column_chunks``) as one."""
        if self.join is not None:
            return self.join(parts)
        x = xp_of(parts[0])
        return [x.cat(b, 1) for b in zip(*parts)]

    def registers(self, dim: int, v: Variant, dtype: str, acc: str) -> int:
        """State values per output row that a kernel keeps in registers across the j loop."""
        if self.width is not None:
            return self.width(dim, v, dtype, acc)
        return sum(c for c, _ in self.state(dim, v, dtype, acc))


REDUCTIONS: dict[str, RedDef] = {}


def reduction(name: str, **kw: Any) -> None:
    REDUCTIONS[name] = RedDef(name=name, **kw)


# ------------------------------------------------------------------- a use of a reduction


@dataclass(frozen=True)
class KernelSpec:
    """What one kernel computes: the reduction ``red`` of ``formula`` over the index of
    category ``1 - out_cat``, on ``dtype`` data with ``acc`` accumulators, in ``variant``."""

    formula: Node
    red: str
    out_cat: int
    dtype: str
    acc: str
    variant: Variant

    @property
    def rdef(self) -> "RedDef":
        return REDUCTIONS[self.red]

    def state(self) -> list:
        """The kernel's state buffers [(cols, dtype), ...]."""
        return self.rdef.state(self.formula.dim, self.variant, compute_dtype(self.dtype), self.acc)

    def registers(self) -> int:
        return self.rdef.registers(
            self.formula.dim, self.variant, compute_dtype(self.dtype), self.acc
        )

    def text_key(self, device_type: str) -> tuple:
        """A hashable key made of text (formula) and plain values, per device type."""
        return (
            str(self.formula),
            self.red,
            self.out_cat,
            self.dtype,
            self.acc,
            self.variant,
            device_type,
        )


LABEL = {0: "Vi", 1: "Vj", 2: "Pm"}  # pykeops' name of each variable category


@dataclass(frozen=True, eq=False)
class Reduction:
    """``red`` of ``formula`` over the index of category ``1 - out_cat``.

    ``formula`` is ``RedDef.tree(main, weight)``: for the LogSumExp family ``Concat(F, G)``
    (``main`` = F, ``weight`` = G, the user's ``formula2``; for SumSoftMaxWeight
    ``Concat(F, Concat(1, G))``, as in KeOps).
    ``memo`` holds what is derived from it (gradient plans, compiled kernels): per instance,
    so a dropped Reduction takes them along."""

    formula: Node
    red: str
    out_cat: int  # 0: output indexed by i (axis=1), 1: by j (axis=0)
    args: tuple[Node, ...]  # declared variable per position
    names: tuple[str, ...]  # for error messages
    dtype_acc: str = "auto"
    k: Optional[int] = None  # K of the K-min reductions
    main: Optional[Node] = None
    weight: Optional[Node] = None
    sum_scheme: str = "auto"
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    cats: tuple = field(init=False, repr=False, compare=False)  # category per argument

    def __post_init__(self) -> None:
        object.__setattr__(self, "cats", tuple(v.params[2] for v in self.args))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "memo": {}}  # compiled kernels do not pickle

    @property
    def nargs(self) -> int:
        return len(self.args)

    @property
    def rdef(self) -> RedDef:
        return REDUCTIONS[self.red]

    def describe(self, k: int) -> str:
        pos, dim, cat = self.args[k].params
        return f"'{self.names[k]}' (argument {k}, declared {LABEL[cat]}({dim}))"

    def extra(self, dim: int, offset: int = 0) -> Node:
        """A new output-indexed argument (incoming gradient, saved output) at position
        ``nargs + offset``."""
        return var(self.nargs + offset, dim, self.out_cat)

    def resolve(self, dtype: str) -> tuple[str, Variant]:
        """(accumulator dtype, kernel variant) for data of ``dtype``."""
        hit = self.memo.get(("resolve", dtype))
        if hit is None:
            cdt = compute_dtype(dtype)
            acc = cdt if self.dtype_acc == "auto" else self.dtype_acc  # checked by check_options
            variant = self.rdef.variant(self.k, self.sum_scheme, cdt, acc)
            hit = self.memo["resolve", dtype] = (acc, variant)
        return hit

    def spec(
        self,
        dtype: str,
        split: bool = False,
        ranged: bool = False,
        narrow: bool = False,
        nonneg: tuple = (),
        guard: bool | str = False,
    ) -> KernelSpec:
        """The kernel of this reduction for data of ``dtype`` (``split``: the split-j one,
        ``narrow``: with narrower row blocks; ``ranged``: the block-sparse one, a split-j
        kernel over tasks; ``nonneg``: for parameters at these positions all >= +0;
        ``guard``: the formula as ``NormGuard(F, n, y)``, two extra arguments after the others:
        n the reduced rows' squared norms, y their points again -- a K-min of squared
        distances, see normguard.guard_norms; "int16": ``NormGuardQ(F, n, y, yq, qc)``, four,
        the guard's dot products in integers, schedules/guard_dots.py; "box": ``BoxGuard(F,
        y)``, one, the reduced points in blocks of the box test, schedules/box.py)."""
        acc, variant = self.resolve(dtype)
        formula = self.formula
        if guard:
            cat = 1 - self.out_cat
            dim = next(v.params[1] for v in self.args if v.params[2] == cat)
            norms, again = var(self.nargs, 1, cat), var(self.nargs + 1, dim, cat)
            if guard == "box":
                formula = make("BoxGuard", formula, var(self.nargs, dim, cat))
            elif guard == "int16":
                yq, qc = var(self.nargs + 2, (dim + 1) // 2, cat), var(self.nargs + 3, 4, 2)
                formula = make("NormGuardQ", formula, norms, again, yq, qc)
            else:
                formula = make("NormGuard", formula, norms, again)
        if split or ranged:
            variant = dataclasses.replace(variant, split=True, ranged=ranged, narrow=narrow)
        if nonneg:
            variant = dataclasses.replace(variant, nonneg=tuple(nonneg))
        return KernelSpec(formula, self.red, self.out_cat, dtype, acc, variant)

    def grad_axis(self, k: int) -> int:
        """Output category of the gradient w.r.t. argument k (parameters: per output row,
        summed afterwards)."""
        cat = self.args[k].params[2]
        return cat if cat in (0, 1) else self.out_cat

    def sum_of(self, formula: Node, extra: Sequence[tuple[Node, str]], k: int) -> "Reduction":
        """A Sum of ``formula`` over the arguments plus ``extra``, giving the gradient w.r.t.
        argument k (so indexed like it)."""
        return Reduction(
            formula,
            "Sum",
            self.grad_axis(k),
            (*self.args, *(v for v, _ in extra)),
            (*self.names, *(n for _, n in extra)),
            self.dtype_acc,
            sum_scheme=self.sum_scheme,
        )

    def tangent(self, n: int, k: int) -> Node:
        """The tangent of argument k, the n-th tangent argument (position ``nargs + n``)."""
        pos, dim, cat = self.args[k].params
        return var(self.nargs + n, dim, cat)

    def tangent_extra(self, ks: Sequence[int]) -> list[tuple[Node, str]]:
        return [(self.tangent(n, k), f"tangent of {self.names[k]}") for n, k in enumerate(ks)]

    def sum_with(self, formula: Node, extra: Sequence[tuple[Node, str]]) -> "Reduction":
        """A Sum of ``formula`` over the same index as this reduction, over the arguments plus
        ``extra``."""
        return Reduction(
            formula,
            "Sum",
            self.out_cat,
            (*self.args, *(v for v, _ in extra)),
            (*self.names, *(n for _, n in extra)),
            self.dtype_acc,
            sum_scheme=self.sum_scheme,
        )

    def jvp(self, ks: tuple[int, ...]) -> Plan:
        """How to compute the forward-mode derivative (JVP) given tangents of the arguments
        ``ks`` (memoised).  Raises NotImplementedError for a reduction without a rule."""
        rule = self.rdef.jvp
        if rule is None:
            raise NotImplementedError(
                f"{self.red} has no forward-mode derivative (jvp); Sum, Min, Max, KMin and "
                "their Arg pairs, LogSumExp and SumSoftMaxWeight have one"
            )
        key = ("jvp", tuple(ks))
        if key not in self.memo:
            self.memo[key] = rule(self, tuple(ks))
        return self.memo[key]

    def vjp(self, k: int) -> Plan:
        """How to compute the gradient w.r.t. argument k (memoised); None: identically zero.
        Raises NotImplementedError for a reduction without a gradient rule."""
        rule = self.rdef.vjp
        if rule is None:
            raise NotImplementedError(
                f"{self.red} has no gradient (as in pykeops); use LogSumExp or SumSoftMaxWeight"
            )
        key = ("vjp", k)
        if key not in self.memo:
            self.memo[key] = rule(self, k)
        return self.memo[key]
