"""K-selection early exit for the CPU and CUDA schedules (reduction kind ``kselect``).

An insertion into a sorted K-list changes the state only if the new value is below the current
K-th value.  Once a few hundred j are seen that is rare, yet the vectorised update computes the
whole insertion chain (2K compares, 4K selects per SIMD vector of rows) for every j.  This pass
wraps the update in ``if any(lane: new < kth)`` -- one compare and a mask test per vector --
which skips it for most j.  A CUDA thread's rows are scalar: ``if new < kth`` (a warp runs
the update when one of its threads does; SASS, sm_90: K = 10 from 64.5 to 22 instructions
a pair, ``benchmarks/sass_count.py``).

The rewrite is exact: the state is sorted (``v_0 <= ... <= v_{K-1}``, no NaN), so if no lane
has ``new < v_{K-1}`` then no lane has ``new < v_k`` for any k and the update is the identity.

It works on the vectorised TIR, so it runs the s_tir pipeline's passes up to ``VectorizeLoop``
first (``tvm.compile`` then runs the whole pipeline again; on lowered TIR its earlier passes are
no-ops).  The update is found by the names TE gives a tuple reduction named ``red``: bindings
``v_red.v0 .. v_red.v{2K-1}``, the K-th value's binding a ``Select(new < v_{K-1}, ...)``.  If
the IR has another shape the module is returned unchanged (correct, only slower).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from .ranged import to_loops
from .shape import ReductionShape


def _to_vectorised(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    return to_loops(
        mod,
        target,
        (
            tirx.transform.FlattenBuffer(),
            tirx.transform.NarrowDataType(32),
            s_tir.transform.LoopPartition(),
            tirx.transform.VectorizeLoop(True),
        ),
    )


def _guard_seq(stmts: list, first: str, last: str) -> tuple[list, bool]:
    names = [s.var.name if isinstance(s, tirx.Bind) else None for s in stmts]
    if first not in names or last not in names:
        done = False
        out = []
        for s in stmts:
            s, hit = _guard(s, first, last)
            out.append(s)
            done |= hit
        return out, done
    a = names.index(first)
    kth = stmts[names.index(last)].value
    if not isinstance(kth, tirx.Select):
        return stmts, False
    cond = kth.condition
    chain = {s.var for s in stmts[a:] if isinstance(s, tirx.Bind)}
    if any(v in chain for v in tirx.analysis.undefined_vars(cond, [])):
        return stmts, False
    scalar = cond.ty.is_scalar()
    test = cond if scalar else tirx.call_llvm_pure_intrin("bool", "llvm.vector.reduce.or", cond)
    # the binding chain and the state stores after it: only the update
    return stmts[:a] + [tirx.IfThenElse(test, _seq(stmts[a:]), None)], True


def _seq(stmts: list):
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _guard(stmt, first: str, last: str):
    if isinstance(stmt, tirx.IfThenElse) and stmt.else_case is None:  # split-j: j < N
        body, hit = _guard(stmt.then_case, first, last)
        return (tirx.IfThenElse(stmt.condition, body, None), True) if hit else (stmt, False)
    if isinstance(stmt, tirx.SeqStmt):
        seq, hit = _guard_seq(list(stmt.seq), first, last)
        return (_seq(seq), True) if hit else (stmt, False)
    if isinstance(stmt, tirx.AttrStmt):  # CUDA: the thread bindings
        body, hit = _guard(stmt.body, first, last)
        s = stmt
        return (
            (tirx.AttrStmt(s.node, s.attr_key, s.value, body, s.span), True) if hit else (s, False)
        )
    if isinstance(stmt, tirx.For):
        body, hit = _guard(stmt.body, first, last)
        if not hit:
            return stmt, False
        s = stmt
        return tirx.For(
            s.loop_var,
            s.min,
            s.extent,
            s.kind,
            body,
            s.thread_binding,
            s.annotations,
            s.step,
            s.span,
        ), True
    return stmt, False


def kselect_early_exit(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    """``mod`` with the K-selection update skipped when no lane would insert (see the module
    docstring); unchanged if ``shape`` is not a K-selection or the update is not found."""
    if shape.kind != "kselect":
        return mod
    k = shape.outputs // 2  # K value columns, then K index columns
    if target["kind"] == "cuda":  # scalar: the loops as they are
        low = to_loops(mod, tvm.target.Target(target))
    else:
        low = _to_vectorised(mod, tvm.target.Target(target))
    func = low["main"]
    body, hit = _guard(func.body, "v_red.v0", f"v_red.v{k - 1}")
    if not hit:
        return mod
    low["main"] = func.with_body(body)
    return low
