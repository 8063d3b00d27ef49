"""The last block of a block sum (``ReductionShape.block``) runs only its own j.

A block sum splits the loop over j into blocks of ``block`` consecutive j (``jo``, ``ji``); the
last block is partial, so the scheduled loop over ``ji`` keeps its constant extent and its
statements are guarded by ``jo * block + ji < bound`` (``bound``: N, a chunk's length, or -- in
a ranged kernel -- the task's count).  Not every statement is guarded: in a ranged kernel the
per-pair stages are not (their guard is the clamp of the task's rows), so a task of 100 j
computed the exponentials of 1024 (block-diagonal batches of 1000 problems of 64 x 100: 20 us a
task instead of 2).  This pass gives such a loop the extent ``min(block, bound - jo * block)``:
the iterations it drops were those whose guarded statements did nothing, and the stages they
computed (buffers allocated inside the loop's body, read only there) were dead.  Only ranged
kernels: a dense kernel's stages are guarded, so its last block's extra iterations cost a
test each -- less than the pass costs every compile (20-70 ms a Sum kernel)."""

from __future__ import annotations

from typing import Any, Optional

import tvm
from tvm import tirx

from .ranged import first, to_loops
from .shape import ReductionShape


def _guard(cond: Any, var: Any) -> Optional[Any]:
    """``bound - base`` if ``cond`` is ``base + var < bound`` (``likely`` or not), else None."""
    if type(cond).__name__ == "Call" and str(cond.op.name).endswith("likely"):
        cond = cond.args[0]
    if not (isinstance(cond, tirx.LT) and isinstance(cond.a, tirx.Add)):
        return None
    a = cond.a
    base = a.a if a.b.same_as(var) else a.b if a.a.same_as(var) else None
    if base is None or any(v.same_as(var) for v in tirx.analysis.undefined_vars(base, [])):
        return None
    return cond.b - base


def _guard_bound(stmt: Any, var: Any) -> Optional[Any]:
    """``bound - base`` of the first guard ``base + var < bound`` in ``stmt``, else None."""
    return first(
        stmt, lambda n: _guard(n.condition, var) if isinstance(n, tirx.IfThenElse) else None
    )


def _stores_outside(stmt: Any, var: Any, bound: Any, allocated: tuple) -> bool:
    """Whether ``stmt`` stores into a buffer not allocated inside it other than under the
    guard ``base + var < bound`` (the same bound)."""
    if isinstance(stmt, tirx.IfThenElse):
        left = _guard(stmt.condition, var)
        if left is not None and str(left) == str(bound):
            return False
    if isinstance(stmt, tirx.BufferStore):
        return str(stmt.buffer.data) not in allocated  # by name: specialize copies vars
    if isinstance(stmt, tirx.SeqStmt):
        local = allocated
        for s in stmt.seq:  # an allocation in a sequence covers the statements after it
            if type(s).__name__ == "AllocBuffer":
                local = (*local, str(s.buffer.data))
            if _stores_outside(s, var, bound, local):
                return True
        return False
    children = [getattr(stmt, n, None) for n in ("body", "then_case", "else_case")]
    return any(_stores_outside(c, var, bound, allocated) for c in children if c is not None)


def _clip(stmt: Any, block: int) -> tuple[Any, bool]:
    if isinstance(stmt, tirx.SeqStmt):
        parts = [_clip(s, block) for s in stmt.seq]
        if not any(hit for _, hit in parts):
            return stmt, False
        return tirx.SeqStmt([s for s, _ in parts]), True
    if isinstance(stmt, tirx.IfThenElse) and stmt.else_case is None:
        body, hit = _clip(stmt.then_case, block)
        return (tirx.IfThenElse(stmt.condition, body, None), True) if hit else (stmt, False)
    if type(stmt).__name__ == "AllocBuffer" or not isinstance(stmt, tirx.For):
        return stmt, False
    s = stmt
    extent = s.extent
    if isinstance(extent, tirx.IntImm) and int(extent) == block:
        left = _guard_bound(s.body, s.loop_var)
        if left is not None and not _stores_outside(s.body, s.loop_var, left, ()):
            extent = tirx.Min(extent, left)
            return tirx.For(s.loop_var, s.min, extent, s.kind, s.body, s.thread_binding,
                            s.annotations, s.step, s.span), True  # fmt: skip
    body, hit = _clip(s.body, block)
    if not hit:
        return stmt, False
    return tirx.For(s.loop_var, s.min, extent, s.kind, body, s.thread_binding, s.annotations,
                    s.step, s.span), True  # fmt: skip


def clip_block_tails(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    """``mod`` with each guarded loop over a block's j cut to the j below its bound (module
    docstring); unchanged without block sums or when no such loop is found."""
    if not shape.block or not shape.ranged:  # a dense kernel guards its stages too: its
        # masked iterations cost a test each, less than this pass costs every compile
        return mod
    low = to_loops(mod, tvm.target.Target(target))
    func = low["main"]
    body, hit = _clip(func.body, shape.block)
    if not hit:
        return mod
    low["main"] = func.with_body(body)
    return low
