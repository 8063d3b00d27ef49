"""LLVM (CPU) schedules.

``cpu_rowblock``: output rows in blocks of ``row_block`` lanes, blocks run in parallel over the
cores; inside a block the loop over the reduced index j is outermost, every per-pair stage is
computed at j for the whole block of lanes (vectorised over the lanes, so each shared
sub-expression is evaluated once per (i, j) pair), and the block's accumulators stay in a local
(register) buffer laid out component-major so each component is one SIMD vector.  The block's
rows of every output-indexed input are copied once, before the j loop, into a component-major
local buffer, so the j loop reads them with contiguous vector loads (reading ``x[i, d]`` for 16
rows directly is a strided gather, re-executed at every j when the block's inputs do not fit
in registers: Gaussian D = 64 ran 2.2x slower).  K-selections get an early exit after
scheduling (``early_exit.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the row-block rules run without importing TVM (cached kernels)
    from tvm import s_tir

from .shape import ReductionShape

REGISTER_FLOATS = 512  # what 32 AVX-512 registers hold, in float32


def cpu_row_block(dtype: str, width: int = 1) -> int:
    """Lanes per row block: four AVX-512 vectors of the data type, fewer when the block's
    reduction state (``width`` values per row, kept in registers across the j loop) would not
    fit in the registers.  The block's inputs do not count: they are read from a local
    (L1-resident) copy at every j.  Measured on the 2-core AVX-512 machine (kernel alone,
    N = M = 1e4): Gaussian D = 3 64 lanes 15.2 ms, 32 lanes 17.6 ms; Gaussian D = 64 64 lanes
    51 ms, 8 lanes 125 ms; ArgKMin K = 10 (20 state values) 16 lanes 6.6 ms, 32 lanes 13.8 ms;
    float64 Gaussian 32 lanes 29.4 ms, 16 lanes 34.1 ms."""
    lanes = 64 if dtype == "float32" else 32
    budget = REGISTER_FLOATS if dtype == "float32" else REGISTER_FLOATS // 2
    while lanes > 8 and lanes * width > budget:
        lanes //= 2
    return lanes


def cpu_rowblock(sch: s_tir.Schedule, shape: ReductionShape) -> s_tir.Schedule:
    red = sch.get_sblock("red")
    i, u, j = sch.get_loops(red)
    io, ii = sch.split(i, factors=[None, shape.row_block])
    sch.reorder(io, j, u, ii)
    sch.parallel(io)
    for name in reversed(shape.stages):  # consumers first, so every stage lands under j
        blk = sch.get_sblock(name)
        sch.compute_at(blk, j)
    # the block's rows of each output-indexed input, copied once per block into a transposed
    # (component-major) local buffer: every read in the j loop is then a contiguous vector
    # load instead of a strided gather
    blocks = [sch.get_sblock(name) for name in shape.stages] + [red]
    for name, _dim in shape.row_inputs:
        reader = next(b for b in blocks if _reads(sch, b, name))
        cache = sch.cache_read(reader, name, "local")
        sch.compute_at(cache, io)
        sch.transform_layout(cache, ("write", 0), lambda a, b: (b, a))
    # accumulators in registers, one SIMD vector per state column
    accs = [sch.cache_write(red, k, "local") for k in range(shape.outputs)]
    for k, acc in enumerate(accs):
        sch.reverse_compute_at(acc, io)
        sch.transform_layout(red, ("write", k), lambda a, b: (b, a))
    sch.unroll(u)
    sch.vectorize(ii)
    for name in shape.stages:
        sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])
    sch.decompose_reduction(red, j)
    return sch


def _reads(sch: s_tir.Schedule, block, name: str) -> bool:
    return any(r.source.name == name for r in sch.get(block).reads)
