"""The box test of a low-dimensional K-min of squared distances (CPU; ``ReductionShape.guard``
with one buffer: the reduced points again, ``W`` j by ``W`` j, ``BoxGuard``).

A K-nearest-neighbour search in 2 or 3 dimensions (point clouds) computes every pair's
distance and tests it against its row's K-th value, though the rows of a block are neighbours
(their output rows are put in a space-filling curve's order first, ``tvmred/locality.py``) and
almost every j is far from them all.  This pass bounds the block's rows by their box
(``lo_d <= x_id <= hi_d``) and tests ``W`` j at once against it, from the reduced points
stored ``W`` j by ``W`` j (each value of ``W`` consecutive j contiguous: one vector load a
value) by the caller:

    |x_i - y_j|^2 >= sum_d max(lo_d - y_jd, y_jd - hi_d, 0)^2 = b_j  for every row i,

so where ``b_j >= kmax`` (the largest K-th value of the block's rows) no row can take j and it
is skipped; the others (visited lowest first, from the bits of the vector's test) run the
kernel's own code -- the exact distance, the early exit's test, the insertion -- and after an
insertion ``kmax`` is read again.  The answers are the exact kernel's, bit for bit: with ``u``
the unit roundoff, each difference is within ``u`` of its value and the sum of squares within
``gamma_{D+1}``, a row's computed distance within ``gamma_{D+2}`` of its own, so a j with
``b_j >= kmax (1 + 16 (D + 4) u) + eta`` (``eta`` the absolute error of underflowing products)
has, in every row, a computed distance not below its K-th value.  The caller passes only finite
points whose squared norms are at most a quarter of the dtype's largest value, in blocks of
``cpu.BOX_BYTES`` of each value (``tvmred.normguard.guard_norms``): no overflow, no NaN in the
test.  The last ``N mod W`` j run without it.
"""

from __future__ import annotations

from typing import Any, Optional

import tvm
from tvm import tirx

from .guard import _ROUNDOFF, _kth, _spacing, _terms
from .shape import ReductionShape


def _reduce(name: str, v: Any, dt: str) -> Any:
    return tirx.call_llvm_pure_intrin(dt, f"llvm.vector.reduce.{name}", v)


class _Box:
    def __init__(self, blocks: Any, dtype: str, width: int) -> None:
        self.blocks, self.dtype, self.width, self.done = blocks, dtype, width, False

    def stmt(self, s: Any) -> Any:
        if isinstance(s, tirx.SeqStmt):
            out: list = []
            for x in s.seq:
                new = self.stmt(x)
                out.extend(new if isinstance(new, list) else [new])
            return tirx.SeqStmt(out)
        if isinstance(s, tirx.For):
            hit = None if self.done else self.loop(s)
            if hit is not None:
                return hit
            body = self.stmt(s.body)
            body = tirx.SeqStmt(body) if isinstance(body, list) else body
            return tirx.For(s.loop_var, s.min, s.extent, s.kind, body, s.thread_binding,
                            s.annotations, s.step, s.span)  # fmt: skip
        return s

    def loop(self, loop: Any) -> Optional[list]:
        """The j loop ``[..., s = F(j), if any(s < kth): update]`` tested a box at a time
        (module docstring), as statements; None for any other loop."""
        seq = list(loop.body.seq) if isinstance(loop.body, tirx.SeqStmt) else [loop.body]
        if len(seq) < 2 or not isinstance(seq[-2], tirx.BufferStore):
            return None
        store, test = seq[-2], seq[-1]
        if not isinstance(test, tirx.IfThenElse):  # the early exit (a Min's update: not here)
            return None
        kth, j = _kth([test], store.buffer), loop.loop_var  # the guard's reading of it
        if kth is None or not (isinstance(loop.min, tirx.IntImm) and loop.min.value == 0):
            return None
        terms: list = []
        if _terms(store.value, lambda a, b, first: terms.append((a, b)) or a, j) is None:
            return None
        spacing = _spacing(terms)
        dims, dt, lanes = len(terms), self.dtype, int(kth.ty.dtype.lanes)
        if spacing is None or dims != int(self.blocks.shape[-1]) or lanes < 2:
            return None
        _, _, _, xb, x0, sb = spacing
        u, eta = _ROUNDOFF[dt]
        w, n = self.width, loop.extent

        def x(d: int) -> Any:  # the row block's vector of value d
            return tirx.BufferLoad(xb, [tirx.Ramp(x0 + d * sb, 1, lanes)])

        box = tirx.decl_buffer((2 * dims,), dt, name="box_edges", scope="local")
        bound = tirx.decl_buffer((1,), dt, name="box_bound", scope="local")
        mask = tirx.decl_buffer((1,), "int32", name="box_mask", scope="local")
        flat = tirx.decl_buffer((n * dims,), dt, name="box_y", data=self.blocks.data)

        def edge(k: int) -> Any:
            return tirx.Broadcast(tirx.BufferLoad(box, [k]), w)

        def kmax() -> Any:  # the threshold: the block's largest K-th value, made larger
            big = _reduce("fmax", kth, dt) * tirx.const(1 + 16 * (dims + 4) * u, dt)
            return tirx.BufferStore(bound, big + tirx.const(eta, dt), [0])

        pre = [tirx.DeclBuffer(flat, data=self.blocks.data), tirx.AllocBuffer(box),
               tirx.AllocBuffer(bound), tirx.AllocBuffer(mask), kmax()]  # fmt: skip
        for d in range(dims):
            pre += [tirx.BufferStore(box, _reduce("fmin", x(d), dt), [d]),
                    tirx.BufferStore(box, _reduce("fmax", x(d), dt), [dims + d])]  # fmt: skip
        jv = tirx.Var("box_jv", j.ty.dtype)
        gaps = None
        for d in range(dims):
            yd = tirx.BufferLoad(flat, [tirx.Ramp(jv * (w * dims) + d * w, 1, w)])
            gap = tirx.max(tirx.max(edge(d) - yd, yd - edge(dims + d)),
                           tirx.Broadcast(tirx.const(0.0, dt), w))  # fmt: skip
            gaps = gap * gap if gaps is None else gaps + gap * gap
        # the lanes that pass as the bits of an int, visited lowest first: one branch a
        # passing j (a test a lane was mispredicted about twice a passing j)
        lim = tirx.Broadcast(tirx.BufferLoad(bound, [0]), w)
        near = _mask(gaps, lim, dt, w)
        m = tirx.BufferLoad(mask, [0])
        lane = tirx.call_llvm_pure_intrin("int32", "llvm.cttz", m, tirx.const(True, "bool"))
        update = tirx.IfThenElse(test.condition, tirx.SeqStmt([test.then_case, kmax()]), None)
        each = tirx.While(m != 0, tirx.SeqStmt([
            tirx.Bind(j, jv * w + lane.astype(j.ty.dtype)),
            tirx.BufferStore(mask, m & (m - 1), [0]), *seq[:-1], update]))  # fmt: skip
        main = tirx.For(jv, 0, tirx.floordiv(n, w), loop.kind,
                        tirx.SeqStmt([tirx.BufferStore(mask, near, [0]), each]))  # fmt: skip
        rest = tirx.floordiv(n, w) * w
        self.done = True
        return [*pre, main, tirx.For(j, rest, n - rest, loop.kind, loop.body)]


def _mask(gaps: Any, lim: Any, dt: str, w: int) -> Any:
    """The lanes where ``gaps < lim`` as the bits of an int32: the sign bits of ``gaps - lim``
    (negative exactly there: finite values, and a difference that flushes to zero keeps its
    sign), a ``vmovmskps`` (``vmovmskpd``) a 256-bit half (a reduction of selected bits cost
    nine instructions)."""
    diff = gaps - lim
    per = 256 // tvm.DataType(dt).bits
    name = "llvm.x86.avx.movmsk." + ("ps" if dt == "float32" else "pd") + ".256"
    out = None
    for h in range(0, w, per):
        half = tirx.Shuffle([diff], [tirx.IntImm("int32", h + k) for k in range(per)])
        m = tirx.call_llvm_pure_intrin("int32", name, half)
        m = m if h == 0 else m << tirx.const(h, "int32")
        out = m if out is None else out | m
    return out


def box_guard(mod: tvm.IRModule, shape: ReductionShape, nbytes: int) -> tvm.IRModule:
    """``mod`` with the box test (module docstring) of ``nbytes`` of each value (the j of a
    block of the reduced points ``shape.guard`` names); unchanged otherwise or if the IR has
    another shape.  For x86 CPUs with AVX or AVX-512 (``cpu.BOX_MIN_BITS``: the caller)."""
    if len(shape.guard) != 1 or shape.kind != "kselect" or shape.split:
        return mod
    func = mod["main"]
    blocks = {p.name: p for p in func.params}.get(shape.guard[0])
    if blocks is None or shape.dtype not in _ROUNDOFF:
        return mod
    b = _Box(blocks, shape.dtype, nbytes * 8 // tvm.DataType(shape.dtype).bits)
    body = b.stmt(func.body)
    if not b.done:
        return mod
    out = tvm.IRModule(dict(mod.functions))
    out["main"] = func.with_body(body)
    return tirx.transform.ConvertSSA()(out)  # j defined by the tested loop and the tail
