"""Where a reduction block runs: its reduced index (all of it, split-j chunks, or ranged
tasks), and the TIR helpers the reducers share (masking, column selection, infinities)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .._tvm import tirx


@dataclass(frozen=True)
class Space:
    """The reduced index of a kernel: all of ``[0, n)``, or -- the split-j scheme, with
    ``chunks = (S, C)`` -- chunk s of S, ``j = s*C + jj`` for ``jj`` in ``[0, C)`` and
    ``j < n``: the kernel then writes one partial state per chunk (outputs ``(S, rows,
    cols)``), merged by the reduction's ``combine``.  With ``tasks`` (ranged), chunk s is
    the row block ``tasks[s, 0]`` (rows ``(block, i)``) and ``j = tasks[s, 1] + jj`` for
    ``jj < tasks[s, 2]``."""

    n: Any
    chunks: Optional[tuple] = None
    tasks: Any = None  # ranged: (tasks (S, 3) int32 (row block, first j, number of j), blocks)
    #: a masked j (j >= n, split-j) reads the reduced-index inputs' last row again: split-j
    #: kernels clamp their reads to n - 1, and tiled kernels' callers pad with copies of the
    #: last row (``tvmred.launch``) -- so an element enters a max as a duplicate of the element
    #: at j = n - 1, and a max needs no mask (LogSumExp's: its masked select, copied into
    #: every weight column's update, made a 3-column kernel compile for 15 s instead of 0.2)
    duplicates: bool = False
    #: > 0 (not ranged): a reducer with a two-pass form (``RedDef.two_pass``) runs j -- each
    #: chunk's, split-j -- in blocks of this many: a block's max, then its sum (ReductionShape)
    two_pass: int = 0
    #: the reduced-index inputs are padded to whole chunks (tiled kernels: ``tvmred.launch``
    #: pads with copies of the last row), so a read past n needs no clamp
    padded: bool = False

    def blocks(self) -> tuple:
        """A two-pass kernel's blocks of j: (leading index -- split-j: the chunk s --, the
        first j of chunk s, its j below n, blocks of ``two_pass`` j a chunk);
        chunk s has ``j = s C + jj`` for ``jj < min(C, n - s C)``, which may be <= 0 (tiled,
        padded: the chunk's blocks end at its end, whole tiles of whole blocks)."""
        t, n, B = tirx(), self.n, self.two_pass
        if self.chunks is None:
            return (), (lambda: 0), (lambda: n), (n + B - 1) // B
        size = self.chunks[1]
        first = lambda s: s * size  # noqa: E731
        count = (lambda s: n - s * size) if self.padded else (lambda s: t.min(size, n - s * size))  # noqa: E731
        return self.chunks[:1], first, count, (size + B - 1) // B

    def compute(self, te: Any, rows: Any, cols: int, body: Callable) -> Any:
        """``te.compute`` of the reduction block ``red``: ``body(i, u, axis, j, where)``
        returns the reducer call over ``axis`` of the element at global index ``j``, which
        counts only where ``where`` holds (None: everywhere) -- the reducers put their
        identity element there (:func:`_masked`: ``te.create_prim_func`` drops the ``where``
        of a tuple reducer)."""
        if self.chunks is None:
            j = te.reduce_axis((0, self.n), name="j")
            return te.compute((rows, cols), lambda i, u: body(i, u, j, j.var, None), name="red")
        S, C = self.chunks
        jj = te.reduce_axis((0, C), name="j")

        def chunk(s, i, u):
            if self.tasks is not None:  # C stands for the task's count, set after scheduling
                # clamped (the caller's tasks are in bounds): the schedule can then prove
                # every access in bounds, and guards none
                tasks, blocks = self.tasks
                block = _clamp(tasks[s, 0], blocks)
                return body((block, i), u, jj, _clamp(tasks[s, 1] + jj.var, self.n), None)
            j = s * C + jj.var
            return body(i, u, jj, j, j < self.n)

        return te.compute((S, rows, cols), chunk, name="red")


def _clamp(x: Any, n: Any) -> Any:
    return tirx().max(tirx().min(x, n - 1), 0)


def masked(where: Any, x: Any, identity: Any) -> Any:
    """The element ``x``, or the reducer's identity where ``where`` is false."""
    return x if where is None else tirx().Select(tirx().likely(where), x, identity)


def by_column(u: Any, exprs: list) -> Any:
    """exprs[u] for the column loop variable u (folded away once the schedule unrolls u)."""
    e = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        e = tirx().Select(u == k, exprs[k], e)
    return e


def inf(dt: str, sign: float = 1.0) -> Any:
    return tirx().const(sign * math.inf, dt)
