"""CUDA schedules.

``cuda_rows``: KeOps' 1D scheme without the shared-memory staging — one thread per output row
(blocks of ``row_block`` threads over the padded rows), the whole j loop sequential in the
thread, every per-pair stage in registers at j, the state accumulators in registers and
written back once.  Reads of the j-variables are the same address across a warp (broadcast
through L1).  Symbolic N needs no tail guard (j is never split), so no oversized shared
buffers appear.  Staging j-tiles through shared memory and the 2D (split-j) scheme need the
reduced index padded and masked; they are the next step (see issue 5).
"""

from __future__ import annotations

from tvm import s_tir

from .shape import ReductionShape


def cuda_row_block(dtype: str, width: int = 1) -> int:
    return 128


def cuda_rows(sch: s_tir.Schedule, shape: ReductionShape) -> s_tir.Schedule:
    red = sch.get_sblock("red")
    i, u, j = sch.get_loops(red)
    io, ii = sch.split(i, factors=[None, shape.row_block])
    sch.reorder(io, ii, j, u)
    sch.bind(io, "blockIdx.x")
    sch.bind(ii, "threadIdx.x")
    for name in reversed(shape.stages):
        blk = sch.get_sblock(name)
        sch.compute_at(blk, j)
        sch.set_scope(blk, 0, "local")
    accs = [sch.cache_write(red, k, "local") for k in range(shape.outputs)]
    for acc in accs:
        sch.reverse_compute_at(acc, ii)
    sch.unroll(u)
    sch.decompose_reduction(red, j)
    return sch
