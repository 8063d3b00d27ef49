"""Ranged (block-sparse) kernels: a split-j kernel whose chunk s is a task -- a block of
output rows starting at ``tasks[s, 0]`` and ``tasks[s, 2]`` reduced rows from ``tasks[s, 1]``
(``tvmred.lower``).  The schedule sees a split-j kernel with chunks of ``C`` rows; once its
blocks are lowered to loops, each task's own count replaces ``C`` inside the loop over tasks,
so every loop over j runs exactly the task's rows (no masked iterations)."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir, tirx

from .shape import ReductionShape


def to_loops(mod: tvm.IRModule, target: tvm.target.Target, more: tuple = ()) -> tvm.IRModule:
    """``mod`` through the start of ``tvm.compile``'s TIR pipeline, its blocks lowered to
    loops, then the passes ``more`` (the pipeline runs them all again on such a module:
    they are no-ops on lowered TIR)."""
    passes = [
        tirx.transform.BindTarget(target),
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        *more,
    ]
    with tvm.transform.PassContext():
        return tvm.ir.transform.Sequential(passes)(mod)


def first(stmt: Any, found: Any) -> Any:
    """The first non-None ``found(node)`` over the statements in ``stmt``, outermost first
    (breadth-first), else None."""
    todo = [stmt]
    while todo:
        node = todo.pop(0)
        hit = found(node)
        if hit is not None:
            return hit
        for name in ("body", "then_case", "else_case"):
            child = getattr(node, name, None)
            if child is not None:
                todo.append(child)
        todo.extend(getattr(node, "seq", ()) or ())
    return None


def _task_loop(stmt: Any) -> Any:
    """The outermost parallel (or thread-bound) loop: the loop over tasks."""
    kinds = (tirx.ForKind.PARALLEL, tirx.ForKind.THREAD_BINDING)
    loop = first(stmt, lambda n: n if isinstance(n, tirx.For) and n.kind in kinds else None)
    if loop is None:
        raise LookupError("ranged kernel: no parallel loop over tasks")
    return loop


def task_counts(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    """``mod`` with ``C`` replaced, inside the loop over tasks, by the task's count."""
    if not shape.ranged:
        return mod
    low = to_loops(mod, tvm.target.Target(target))
    func = low["main"]
    params = {p.name: p for p in func.params}
    loop = _task_loop(func.body)  # one row block per task: the loop over tasks
    count = tirx.BufferLoad(params["tasks"], [loop.loop_var, 2])  # a param is its buffer
    low["main"] = func.specialize({params["C"]: count})
    return low
