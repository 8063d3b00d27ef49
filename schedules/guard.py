"""The dot-product guard of a K-min or Min of squared distances (CPU; ``ReductionShape.guard``).

A K-nearest-neighbour search ``ArgKMin_j |x_i - y_j|^2`` (or a nearest one, ``ArgMin``: a
k-means assignment) computes, for each pair, a subtraction and a multiply-add per dimension,
although after a few hundred j almost no pair enters its row's K-list (the early exit,
``early_exit.py``, then skips the list's update).  This pass
computes first, for a whole row block at j, the cheap bound ``|y_j|^2 - 2 x_i . y_j`` (one
multiply-add per dimension; ``|y_j|^2`` is an input, computed by the caller) and computes the
exact distance -- with the kernel's own expression, in its own order -- only when some row of
the block could insert it:

    if any(|y_j|^2 (1 - d) - 2 x_i . y_j  <  kth_i (1 + 4u) + eta - |x_i|^2 (1 - d)):
        s = |x_i - y_j|^2 (exact, as before);  if any(s < kth_i): insert

(``kth_i`` the row's K-th value, ``|x_i|^2`` computed once per row block before the j loop).
The answers are the exact kernel's, bit for bit: a pair is skipped only if its exact value,
computed as the kernel computes it, is not below ``kth_i``.  Proof sketch (u the unit
roundoff, S = |x|^2 + |y|^2, gamma_n = n u / (1 - n u)): the exact value E' of E = |x-y|^2
has |E' - E| <= gamma_{D+2} E in any summation order, so E' < kth implies
E - kth < gamma_{D+2} E' <= 2.01 gamma_{D+2} S; the computed dot product is within
gamma_D S / 2 of the true one, the norms within gamma_D of theirs, and the few operations of
the test add at most 2.02 u S on the left and take nothing from the right (kth is scaled up
by 4u first, all values >= 0); with d = 8 (D + 4) u > 4.02 gamma_{D+2} + 2.02 u the left
side is then below the right one.  ``eta`` (2^59 subnormal units) covers the absolute error
of underflowing products.  Norms must not overflow: the caller passes only inputs whose
squared norms are at most a quarter of the dtype's largest value, else the general kernel.

The pass works on the vectorised TIR after the early exit: in the j loop, a stage store
``s[...] = sum of (a - b) * (a - b)`` (one term per dimension, ``a`` read at j and ``b`` not,
or the reverse) followed by the early exit's ``if any(s < kth)`` (a Min: by its update, whose
first binding keeps the state ``kth`` unless ``s`` is below it: ``_kth``).  The row norms are that
expression with each term ``b * b``; the dot products run in a loop over the dimensions for
two to eight j at once (``MAX_STEP``; each row-block vector loaded once for all:
``_Guard.paired``; the loops: ``guard_dots.py``, in 16-bit integers where the caller
passes the quantized points, ``NormGuardQ``, and the CPU has AVX-512 VNNI or AVX2), then the guarded
body runs for each j; the exact expression reads the
points through a second pointer (``NormGuard``'s third argument), so that LLVM does not keep
the dot product's broadcasts live until it.  Any other shape: the module unchanged (correct,
slower).
"""

from __future__ import annotations

from typing import Any, Optional

import tvm
import tvm_ffi
from tvm import tirx

from . import guard_dots
from .shape import ReductionShape

#: j a step of the dot-product loop (``_Guard.step``): the largest power of two up to
#: MAX_STEP whose accumulators (step x registers a row-block vector) fit in half the vector
#: registers; each row-block vector is loaded once for them all.  ArgKMin K=10 D=64 1e4,
#: 2-vCPU Zen 4, kernel against kernel in one process: AVX-512, one zmm of rows, 8 j
#: against 4 (the rule before) 1.04x, 16 j 0.95x; two zmm 2 j 0.90x of 4.
MAX_STEP = 8

#: Independent multiply-add chains a step keeps at least (``_Guard.chains``): two FMA pipes
#: of latency 4.  Two partial sums per dot product where 16 accumulators would have fitted
#: (AVX-512, two zmm of rows, 4 j) were 0.96x of one (8 chains).
MIN_CHAINS = 8

#: unit roundoff and the absolute slack ``eta`` per dtype (see the module docstring)
_ROUNDOFF = {"float32": (2.0**-24, 2.0**-90), "float64": (2.0**-53, 2.0**-1015)}


def _terms(e: Any, pair: Any, j: Any) -> Optional[Any]:
    """``e`` with each term ``(a - b) * (a - b)`` replaced by ``pair(at_j, other)``; None if
    ``e`` is not a tree of additions of such terms."""
    if isinstance(e, tirx.Add):
        a, b = _terms(e.a, pair, j), _terms(e.b, pair, j)
        return None if a is None or b is None else a + b
    if not (isinstance(e, tirx.Mul) and isinstance(e.a, tirx.Sub) and isinstance(e.b, tirx.Sub)):
        return None
    p, q = e.a.a, e.a.b
    if not (tvm_ffi.structural_equal(p, e.b.a) and tvm_ffi.structural_equal(q, e.b.b)):
        return None
    at_p = _uses(p, j)
    if at_p == _uses(q, j):  # one side must vary with j, the other not
        return None
    return pair(p, q, True) if at_p else pair(q, p, False)


def _uses(e: Any, v: Any) -> bool:
    return any(x.same_as(v) for x in tirx.analysis.undefined_vars(e, []))


def _kth(update: list, stage: Any) -> Optional[Any]:
    """The current smallest (K-th smallest) value vector of the update after the store of
    stage buffer ``stage``: a K-min's early exit ``if any(s < kth)``, or a Min's (ArgMin's)
    first binding ``Select(... kth <= s ..., kth, s)`` (the state kept unless s is below);
    None for anything else (a Max, another reduction)."""
    if not update:
        return None
    first = update[0]
    if isinstance(first, tirx.IfThenElse) and first.else_case is None:  # K-min early exit
        cond = first.condition
        if isinstance(cond, tvm.ir.Call) and len(cond.args) and isinstance(cond.args[-1], tirx.LT):
            lt = cond.args[-1]
            if _loads(lt.a, stage):
                return lt.b
        return None
    if isinstance(first, tirx.Bind) and isinstance(first.value, tirx.Select):
        sel = first.value
        kth = sel.true_value
        if _loads(sel.false_value, stage) and _has_le(sel.condition, kth, stage):
            return kth
    return None


def _loads(e: Any, stage: Any) -> bool:
    """``e`` is a load (TVM 0.27: TensorLoad, its buffer ``source``) of ``stage``."""
    return getattr(e, "source", None) is not None and e.source.same_as(stage)


def _has_le(cond: Any, kth: Any, stage: Any) -> bool:
    """``cond`` (ands and ors) holds ``kth <= stage``."""
    if isinstance(cond, tirx.LE):
        return tvm_ffi.structural_equal(cond.a, kth) and _loads(cond.b, stage)
    if isinstance(cond, (tirx.And, tirx.Or)):
        return _has_le(cond.a, kth, stage) or _has_le(cond.b, kth, stage)
    return False


class _Guard:
    def __init__(self, norms: Any, again: Any, dtype: str, registers: tuple, quant: Any) -> None:
        self.norms, self.again, self.dtype = norms, again, dtype
        self.registers = registers  # (vector registers, their bits): the target's
        self.quant, self.xq = quant, None  # (yq, qc, isa): int16 dot products (guard_dots.py)
        self.done = False

    @property
    def chains(self) -> int:
        """Partial sums per dot product: one where the step's accumulators are MIN_CHAINS
        independent multiply-adds or more (every target's rule as measured), else enough."""
        return max(1, -(-MIN_CHAINS // (self.step * self.per_vector)))

    @property
    def step(self) -> int:
        """j a step of the dot-product loop: the largest power of two up to MAX_STEP whose
        accumulators fit in half the vector registers (AVX-512: one zmm of rows 8 j, four
        zmm 4 j; AVX2: two ymm 4 j), 2 at least."""
        step = MAX_STEP
        while step > 2 and step * self.per_vector > self.registers[0] // 2:
            step //= 2
        return step

    @property
    def per_vector(self) -> int:
        """Registers a row-block vector takes."""
        return max(1, self.lanes * tvm.DataType(self.dtype).bits // self.registers[1])

    def again_load(self, e: Any) -> Optional[Any]:
        """``e``, a (broadcast) flat load of a reduced row's value, read from ``again``
        instead: a second pointer to the same points, so that LLVM does not keep the dot
        product's broadcasts live (spilled) until the rare exact computation reuses them."""
        if isinstance(e, tirx.Broadcast):
            v = self.again_load(e.value)
            return None if v is None else tirx.Broadcast(v, e.lanes)
        idx = getattr(e, "indices", None)
        if getattr(e, "source", None) is None or idx is None or len(idx) != 1:
            return None
        dim = self.again.shape[-1]
        return tirx.BufferLoad(self.again, [tirx.floordiv(idx[0], dim), tirx.floormod(idx[0], dim)])

    def seq(self, stmts: list, j: Any) -> tuple[list, list]:
        """(statements, pending row-norm bindings for the enclosing j loop's sequence)."""
        out: list = []
        pending: list = []
        for n, s in enumerate(stmts):
            if j is not None and not self.done and isinstance(s, tirx.BufferStore):
                hit = self.guard(s, stmts[n + 1 :], j)
                if hit is not None:  # the store and the update after it, guarded
                    out.append(hit[0])
                    return out, [*pending, *hit[1]]
            new, pend = self.stmt(s, j)
            if pend and isinstance(s, tirx.For):
                out.extend(pend)  # the row norms: once per row block, before its j loop
                pend = []
            out.append(new)
            pending.extend(pend)
        return out, pending

    def stmt(self, s: Any, j: Any) -> tuple[Any, list]:
        if isinstance(s, tirx.SeqStmt):
            seq, pend = self.seq(list(s.seq), j)
            return (seq[0] if len(seq) == 1 else tirx.SeqStmt(seq)), pend
        if isinstance(s, tirx.For):
            body, pend = self.stmt(s.body, s.loop_var)
            if not self.done:
                return s, []
            if s.loop_var.same_as(self.j):
                if not (isinstance(s.min, tirx.IntImm) and s.min.value == 0):
                    raise ValueError("guard: a j loop not from 0")  # the module as it is
                return self.paired(s, body), pend
            new = tirx.For(s.loop_var, s.min, s.extent, s.kind, body, s.thread_binding,
                           s.annotations, s.step, s.span)  # fmt: skip
            return new, pend
        return s, []

    def paired(self, loop: Any, body: Any) -> Any:
        """The j loop in steps of S = ``step`` j: their dot products computed together (each
        row block value read once for all, so the loop is bound by multiply-adds, not
        loads), then the guarded body for each (the K-th values change in between)::

            for jj in range((N + S - 1) // S):
                acc = dot products of j = S jj + p, p < S (at most N - 1)
                for j in range(S jj, min(S jj + S, N)):
                    dot = acc[j - S jj];  <body>
        """
        n, step = loop.extent, self.step
        jj = tirx.Var("guard_jj", loop.loop_var.ty.dtype)
        first = jj * step
        js = [first] + [tirx.min(first + p, n - 1) for p in range(1, step)]
        if self.xq is not None:
            pairs = (self.dims + 1) // 2
            stmts, acc = guard_dots.int16_pairs(self.quant[0], js, self.xq, pairs, self.lanes,
                                                self.quant[2])  # fmt: skip
        else:
            stmts, acc = guard_dots.float_pairs(self.spacing, self.dims, self.j, js, self.lanes,
                                                self.dtype, self.chains)  # fmt: skip
        dot = acc(loop.loop_var - first)
        inner = tirx.For(loop.loop_var, first, tirx.min(n - first, step), tirx.ForKind.SERIAL,
                         tirx.SeqStmt([tirx.Bind(self.dotv, dot), body]))  # fmt: skip
        outer = tirx.SeqStmt([*stmts, inner])
        return tirx.For(jj, 0, tirx.floordiv(n + step - 1, step), loop.kind, outer,
                        loop.thread_binding, loop.annotations)  # fmt: skip

    def guard(self, store: Any, update: list, j: Any) -> Optional[tuple]:
        kth = _kth(update, store.buffer)
        if kth is None:
            return None
        terms: list = []  # (read at j, the row's), one pair per dimension
        found = _terms(store.value, lambda a, b, first: terms.append((a, b)) or a, j)
        row = _terms(store.value, lambda a, b, first: b * b, j)
        if found is None or row is None or _uses(row, j):
            return None
        dims, lanes = len(terms), store.value.ty.dtype.lanes
        self.lanes = lanes  # before per_vector
        if lanes < 2:
            return None
        spacing = _spacing(terms)
        if spacing is None or any(self.again_load(a) is None for a, _ in terms):
            return None

        def exact(a: Any, b: Any, first: bool) -> Any:
            d = self.again_load(a) - b if first else b - self.again_load(a)
            return d * d

        store = tirx.BufferStore(store.buffer, _terms(store.value, exact, j), store.indices)
        u, eta = _ROUNDOFF[self.dtype]
        d = 8 * (dims + 4) * u
        vec = f"{self.dtype}x{lanes}"

        def c(v: float) -> Any:
            return tirx.Broadcast(tirx.const(v, self.dtype), lanes)

        nx = tirx.Var("guard_row_norms", vec)
        ny = tirx.BufferLoad(self.norms, [j, 0])
        self.spacing, self.dims, self.j = spacing, dims, j
        self.dotv = tirx.Var("guard_dot", vec)
        _, _, sa, xb, x0, sb = spacing
        isa = self.quant and self.quant[2]
        ok = isa and lanes * 32 % isa[1] == 0 and sa == 1 and dims == int(self.again.shape[-1])
        if ok and vec == f"float32x{lanes}":
            qc = self.quant[1]  # int16 dot products (guard_dots.py): ny_j is the caller's bound

            def q(k: int) -> Any:
                return tirx.Broadcast(tirx.BufferLoad(qc, [k]), lanes)

            def x(v: int) -> Any:  # the row block's vector of value v
                return tirx.BufferLoad(xb, [tirx.Ramp(x0 + v * sb, 1, lanes)])

            pack, self.xq, l1 = guard_dots.pack_rows(x, dims, lanes, qc)
            l1 = l1 * c(1 + 2 * (dims + 2) * u)
            binds = [*pack, tirx.Bind(nx, row * c(1 - d) - (l1 * q(2) + q(3)))]
            lhs = tirx.Broadcast(ny, lanes) - self.dotv * q(1)
        else:
            binds = [tirx.Bind(nx, row * c(1 - d))]
            lhs = tirx.Broadcast(ny * tirx.const(1 - d, self.dtype), lanes) - self.dotv * c(2.0)
        rhs = kth * c(1 + 4 * u) + c(eta) - nx
        cond = tirx.call_llvm_pure_intrin("bool", "llvm.vector.reduce.or", lhs < rhs)
        self.done = True
        return tirx.IfThenElse(cond, tirx.SeqStmt([store, *update]), None), binds


def _offset(e: Any, base: Any) -> Optional[int]:
    from tvm.sym.analyzer import Analyzer

    v = Analyzer().simplify(e - base)
    return int(v.value) if isinstance(v, tirx.IntImm) else None


def _spacing(terms: list) -> Optional[tuple]:
    """(y buffer, y index of d = 0, its step in d, x buffer, x ramp base of d = 0, its step)
    if every term is ``Broadcast(y[i0 + d * sa]) (op) x[Ramp(r0 + d * sb)]`` for d = 0..D-1
    in some order; else None."""

    def parts(a: Any, b: Any) -> Optional[tuple]:
        if not (isinstance(a, tirx.Broadcast) and getattr(a.value, "source", None) is not None):
            return None
        ia, ib = a.value.indices, getattr(b, "indices", None)
        if len(ia) != 1 or ib is None or len(ib) != 1 or not isinstance(ib[0], tirx.Ramp):
            return None
        return a.value.source, ia[0], b.source, ib[0].base

    got = [parts(a, b) for a, b in terms]
    if any(p is None for p in got):
        return None
    ya, yi, xb, xi = got[0]
    if any(not p[0].same_as(ya) or not p[2].same_as(xb) for p in got):
        return None
    offs = [(_offset(p[1], yi), _offset(p[3], xi)) for p in got]
    if any(None in o for o in offs):
        return None
    order = sorted(offs)
    sa, sb = (order[1][0] - order[0][0], order[1][1] - order[0][1]) if len(order) > 1 else (1, 1)
    if order != [(order[0][0] + d * sa, order[0][1] + d * sb) for d in range(len(order))]:
        return None
    return ya, yi + order[0][0], sa, xb, xi + order[0][1], sb


def norm_guard(
    mod: tvm.IRModule, shape: ReductionShape, target: dict, registers: tuple
) -> tvm.IRModule:
    """``mod`` with the dot-product guard (module docstring) where ``shape.guard`` names the
    reduced rows' squared norms and points; unchanged otherwise or if the IR has another
    shape.  ``registers``: (count, bits) of the target's vector registers."""
    if (
        len(shape.guard) not in (2, 4)
        or shape.kind not in ("kselect", "select")
        or shape.split
        or shape.dtype not in _ROUNDOFF
    ):
        return mod
    vectorised = mod
    if shape.kind == "select":  # a K-min's early exit has vectorised it already
        from .early_exit import _to_vectorised

        vectorised = _to_vectorised(mod, tvm.target.Target(target))
    func = vectorised["main"]
    params = {p.name: p for p in func.params}  # a param is its buffer
    norms, again = (params.get(name) for name in shape.guard[:2])
    if norms is None or again is None:
        return mod
    quant = tuple(params.get(name) for name in shape.guard[2:])
    isa = guard_dots.int16_isa(target) if len(quant) == 2 and None not in quant else None
    quant = (*quant, isa) if isa else None
    g = _Guard(norms, again, shape.dtype, registers, quant)  # 2-D loads: flattened by tvm.compile
    try:
        body, _ = g.stmt(func.body, None)
    except ValueError:  # an index it cannot move to a step's other j, a j loop not from 0
        return mod
    if not g.done:
        return mod
    out = tvm.IRModule(dict(vectorised.functions))
    out["main"] = func.with_body(body)
    return out
