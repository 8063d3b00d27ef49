"""The dot-product guard's loops of dot products (``guard.py``): in the data's float type,
and in 16-bit integers on CPUs with AVX-512 VNNI or AVX2.

A 16-bit integer multiply-add instruction (``vpdpwssd``: 32 products of int16 pairs summed
into 16 int32 lanes) does twice the work of a float32 one at the same rate on CPUs with
AVX-512 VNNI (45.2 against 22.6 multiply-adds a cycle in a loop of the guard's shape on Zen
4), AVX2's ``vpmaddwd`` and an add 1.65x (34.8 against 21.1 with 256-bit registers there;
Haswell runs ``vpmaddwd`` on one port: no gain predicted), and the guard needs only a lower
bound.  The caller quantizes the reduced points, ``yq = round(y sy)`` with ``|yq| <= 2^b - 1``
(b bits, ``tvmred.normguard.int16_args``), two values a 32-bit word; the kernel quantizes
each row block once, ``xq = round(x sx)``, and sums ``I = xq . yq`` exactly in int32
(``D (2^b - 1)^2 < 2^31``).  With ``e_x``, ``e_y`` the
quantization steps' half widths (``|x_d - xq_d / sx| <= e_x``),

    x . y <= I / (sx sy) + e_x |y|_1 + e_y |x|_1 + D e_x e_y,

so the guard's lower bound of ``|x - y|^2`` becomes ``ny_j - I c1 + nx_i`` with, from the
caller, ``ny_j = |y_j|^2' (1 - d) (1 - (D + 2) u) - 2 e_x |y_j|_1`` rounded down (``|y_j|^2'``
the float guard's computed norm) and ``qc = (sx, c1 = 2 / (sx sy), c2 = 2 e_y, c3 = 2 D e_x
e_y)``, c1 rounded to nearest, c2, c3 and the |.|_1 margins made larger by ``1 + 64u``, and in
the kernel ``nx_i = |x_i|^2 (1 - d) - c2 |x_i|_1 (1 + 2 (D + 2) u) - c3`` (its sums in
float32: within gamma_D).  The float rounding of the test's few operations is covered as in
``guard.py``: there ``d`` has ~4 D u of slack, more than the few u of |x|^2 + |y|^2 that
c1's rounding, I's conversion and the products add, and the 64 u cover the roundings of the
margins themselves.  Only the guard's test changes: a pair it passes is computed exactly as
before, so the answers stay the exact kernel's.
"""

from __future__ import annotations

from typing import Any, Optional

from tvm import tirx


def int16_isa(target: dict) -> Optional[tuple[str, int]]:
    """How the target's CPU sums int16 products, (kind, register bits): AVX-512 VNNI
    ``vpdpwssd`` ("vnni", 512), else AVX2 ``vpmaddwd`` and an add ("pmadd", 256); None
    for AVX-512 without VNNI (its ``vpmaddwd`` runs on one port of Skylake-X's two FMA
    ones: no gain predicted) and anything else (the float guard)."""
    from tvm.target import Target, codegen

    t = Target(target)
    has = lambda f: bool(codegen.llvm_cpu_has_features(f, t))  # noqa: E731
    if has("avx512f"):
        return ("vnni", 512) if has("avx512vnni") else None
    return ("pmadd", 256) if has("avx2") else None


def pack_rows(x: Any, dims: int, lanes: int, qc: Any) -> tuple[list, Any, Any]:
    """(statements, packed buffer, |x|_1 expression) for a row block: ``x(d)`` the block's
    vector of value d; the buffer holds, for each pair k of values, the lanes' int16 pair
    ``(round(x(2k) sx), round(x(2k+1) sx))`` as int32 (high half 0 past ``dims``)."""
    pairs = (dims + 1) // 2
    buf = tirx.decl_buffer((pairs * lanes,), "int32", name="guard_xq", scope="local")
    sx = tirx.Broadcast(tirx.BufferLoad(qc, [0]), lanes)
    mask = tirx.Broadcast(tirx.const(0xFFFF, "int32"), lanes)

    def q(d: Any) -> Any:
        return tirx.Cast(f"int32x{lanes}", tirx.round(x(d) * sx))

    def store(k: Any, word: Any) -> Any:
        return tirx.BufferStore(buf, word, [tirx.Ramp(k * lanes, 1, lanes)])

    # loops, so that a wide point's kernel compiles as fast; |x|_1 summed alongside
    l1 = tirx.decl_buffer((lanes,), "float32", name="guard_l1", scope="local")
    at = [tirx.Ramp(0, 1, lanes)]

    def add(*vals: Any) -> Any:
        total = tirx.BufferLoad(l1, at)
        for v in vals:
            total = total + tirx.abs(v)
        return tirx.BufferStore(l1, total, at)

    k = tirx.Var("guard_pack", "int32")
    sixteen = tirx.Broadcast(tirx.const(16, "int32"), lanes)
    word = (q(2 * k) & mask) | (q(2 * k + 1) << sixteen)
    zero = tirx.Broadcast(tirx.const(0, l1.dtype), lanes)
    body = tirx.SeqStmt([store(k, word), add(x(2 * k), x(2 * k + 1))])
    stmts = [tirx.AllocBuffer(buf), tirx.AllocBuffer(l1), tirx.BufferStore(l1, zero, at),
             tirx.For(k, 0, dims // 2, tirx.ForKind.SERIAL, body)]  # fmt: skip
    if dims % 2:  # the last value alone, its high half 0
        stmts += [store(dims // 2, q(dims - 1) & mask), add(x(dims - 1))]
    return stmts, buf, tirx.BufferLoad(l1, at)


def int16_pairs(
    yq: Any, js: list, xq: Any, pairs: int, lanes: int, isa: tuple[str, int]
) -> tuple[list, Any]:
    """(statements, acc) summing ``xq . yq[j']`` in int32 for each j' of ``js`` in a loop
    over the value pairs (the row block's words loaded once for all j'; ``isa`` from
    :func:`int16_isa`: a ``vpdpwssd``, or a ``vpmaddwd`` and an add, a register of lanes, j'
    and pair); ``acc(p)`` is the sum of ``js[p]`` as a float32 vector."""
    step = len(js)
    buf = tirx.decl_buffer((step * lanes,), "int32", name="guard_iacc", scope="local")
    kind, bits = isa
    c = bits // 32  # int32 lanes a register
    name = {("vnni", 512): "llvm.x86.avx512.vpdpwssd.512",
            ("pmadd", 256): "llvm.x86.avx2.pmadd.wd"}[isa]  # fmt: skip

    def slot(p: Any) -> list:
        return [tirx.Ramp(p * lanes, 1, lanes)]

    def half(v: Any) -> Any:
        return tirx.reinterpret(f"int16x{2 * c}", v)

    k = tirx.Var("guard_k", "int32")
    body = []
    for p, jp in enumerate(js):
        y = half(tirx.Broadcast(tirx.reinterpret("int32", tirx.BufferLoad(yq, [jp, k])), c))
        for h in range(0, lanes, c):  # a register's lanes at a time
            x = half(tirx.BufferLoad(xq, [tirx.Ramp(k * lanes + h, 1, c)]))
            at = [tirx.Ramp(p * lanes + h, 1, c)]
            old = tirx.BufferLoad(buf, at)
            if kind == "vnni":
                new = tirx.call_llvm_pure_intrin(f"int32x{c}", name, old, x, y)
            else:
                new = old + tirx.call_llvm_pure_intrin(f"int32x{c}", name, x, y)
            body.append(tirx.BufferStore(buf, new, at))
    zero = tirx.Broadcast(tirx.const(0, "int32"), lanes)
    stmts = [tirx.AllocBuffer(buf), *[tirx.BufferStore(buf, zero, slot(p)) for p in range(step)]]
    stmts.append(tirx.For(k, 0, pairs, tirx.ForKind.SERIAL, tirx.SeqStmt(body)))

    def acc(p: Any) -> Any:
        return tirx.Cast(f"float32x{lanes}", tirx.BufferLoad(buf, slot(p)))

    return stmts, acc


def float_pairs(
    spacing: tuple, dims: int, j: Any, js: list, lanes: int, dt: str, chains: int
) -> tuple:
    """(statements, acc) computing sum_d y[j', d] x[d], d < ``dims``, for each j' of ``js``
    (``j`` replaced in the y index; the reads as ``guard._spacing`` gives them) in a loop over
    d, ``chains`` partial sums each in a local buffer, each
    x vector loaded once for all ``js``; ``acc(p)`` is the dot product of ``js[p]``.  As
    one expression (the exact value's tree with y * x for each term), LLVM hoisted a D = 64
    search's 64 broadcasts to the loop's top and spilled them at every j."""
    ya, y0, sa, xb, x0, sb = spacing
    ys = [_replace(y0, j, jp) for jp in js]  # y's index of d = 0 at each j'
    buf = tirx.decl_buffer((len(js) * chains * lanes,), dt, name="guard_acc", scope="local")
    zero = tirx.Broadcast(tirx.const(0, dt), lanes)

    def slot(p: Any, c: int) -> list:
        return [tirx.Ramp((p * chains + c) * lanes, 1, lanes)]

    def add(p: int, c: int, d: Any) -> Any:
        y = tirx.Broadcast(tirx.BufferLoad(ya, [ys[p] + d * sa]), lanes)
        x = tirx.BufferLoad(xb, [tirx.Ramp(x0 + d * sb, 1, lanes)])
        return tirx.BufferStore(buf, tirx.BufferLoad(buf, slot(p, c)) + y * x, slot(p, c))

    g = tirx.Var("guard_d", "int32")
    steps = dims // chains
    body = [add(p, c, g * chains + c) for c in range(chains) for p in range(len(js))]
    stmts = [tirx.AllocBuffer(buf)]
    stmts += [
        tirx.BufferStore(buf, zero, slot(p, c)) for p in range(len(js)) for c in range(chains)
    ]
    stmts.append(tirx.For(g, 0, steps, tirx.ForKind.SERIAL, tirx.SeqStmt(body)))
    stmts += [add(p, d % chains, d) for d in range(steps * chains, dims) for p in range(len(js))]

    def acc(p: Any) -> Any:
        total = tirx.BufferLoad(buf, slot(p, 0))
        for c in range(1, chains):
            total = total + tirx.BufferLoad(buf, slot(p, c))
        return total

    return stmts, acc


def _replace(e: Any, v: Any, by: Any) -> Any:
    """``e``, an index expression linear in ``v`` (``v * s + rest``), at ``v = by``."""
    from tvm.sym.analyzer import Analyzer

    an = Analyzer()
    at0 = an.simplify(_subst(e, v, tirx.const(0, v.ty.dtype)))
    step = an.simplify(_subst(e, v, tirx.const(1, v.ty.dtype)) - at0)
    return at0 + by * step


def _subst(e: Any, v: Any, by: Any) -> Any:
    """``e`` (arithmetic of vars, constants and loads) with ``v`` replaced by ``by``."""
    if isinstance(e, tirx.Var):
        return by if e.same_as(v) else e
    for cls in (tirx.Add, tirx.Sub, tirx.Mul):
        if isinstance(e, cls):
            return cls(_subst(e.a, v, by), _subst(e.b, v, by))
    if not any(x.same_as(v) for x in tirx.analysis.undefined_vars(e, [])):
        return e
    raise ValueError(f"guard: cannot substitute in {e}")
