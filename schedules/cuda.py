"""CUDA schedules.

``cuda_rows``: KeOps' 1D scheme without the shared-memory staging — each thread owns one or two
output rows (blocks of 128 threads over the padded rows), the whole j loop sequential in the
thread, every per-pair stage in registers at j, the state accumulators in registers and
written back once.  Reads of the j-variables are the same address across a warp (broadcast
through L1).  Symbolic N needs no tail guard (j is never split), so no oversized shared
buffers appear.  Staging j-tiles through shared memory and the 2D (split-j) scheme need the
reduced index padded and masked; they are the next step (see issue 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the row-block rules run without importing TVM (cached kernels)
    from tvm import s_tir

from .shape import ReductionShape

THREADS = 128  # threads per block


def cuda_row_block(dtype: str, width: int = 1) -> int:
    """Rows per block = ``THREADS`` x rows per thread; the default is one row per thread.
    Rows per thread is a tuning knob (``tvmred tune --device cuda``: row blocks 256 and 512 are
    2 and 4 rows per thread): on an H200, Gaussian D=3 with 2 rows per thread took 0.73 s
    instead of 1.00 s at M=N=1e6 (each j-row read serves two pairs), but 1.33 instead of 1.06 ms
    at 1e4 and 0.69 instead of 0.50 ms for the reference example (half as many blocks to fill
    the 132 SMs) -- M is not known when the kernel is compiled."""
    return THREADS


def cuda_rows(sch: s_tir.Schedule, shape: ReductionShape) -> s_tir.Schedule:
    red = sch.get_sblock("red")
    i, u, j = sch.get_loops(red)
    threads = min(THREADS, shape.row_block)
    per_thread = shape.row_block // threads
    # row = block * row_block + thread * per_thread + r: a thread's rows are adjacent, so its
    # registers (stages, accumulators) compact to per_thread entries
    io, ii, ir = sch.split(i, factors=[None, threads, per_thread])
    sch.reorder(io, ii, j, ir, u)
    sch.bind(io, "blockIdx.x")
    sch.bind(ii, "threadIdx.x")
    for name in reversed(shape.stages):
        blk = sch.get_sblock(name)
        sch.compute_at(blk, j)
        sch.set_scope(blk, 0, "local")
        if per_thread > 1:
            sch.unroll(sch.get_loops(blk)[-1])  # the thread's rows
    accs = [sch.cache_write(red, k, "local") for k in range(shape.outputs)]
    for acc in accs:
        sch.reverse_compute_at(acc, ii)
    sch.unroll(ir)
    sch.unroll(u)
    sch.decompose_reduction(red, j)
    return sch
