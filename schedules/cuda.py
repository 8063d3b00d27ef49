"""CUDA template.

``cuda_rows``: each thread owns one or more adjacent output rows (blocks of 128 threads over
the padded rows), the whole j loop sequential in the thread, every per-pair stage in registers
at j, the state accumulators in registers and written back once.  By default the j-variables
are read from global memory (the same address across a warp: broadcast through L1) and
symbolic N needs no tail guard; with a tile (``TVMRED_CUDA_TILE`` or the ``tile`` knob) they
are staged through shared memory in tiles of whole padded rows (KeOps' 1D scheme).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from .shape import ReductionShape, TargetTemplate, block_partials, loops_under
from .two_pass import two_pass_blocks

if TYPE_CHECKING:
    from tvm import s_tir


THREADS = 128  # threads per block


def cuda_target(device: Any, host: dict) -> dict:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"kind": "cuda", "arch": f"sm_{major}{minor}", "host": host}


def rows_per_thread() -> int:
    """Rows a thread by default: ``$TVMRED_CUDA_ROWS`` (1, 2, 4 or 8), else 1."""
    value = os.environ.get("TVMRED_CUDA_ROWS") or "1"
    if value not in ("1", "2", "4", "8"):
        raise ValueError(f"TVMRED_CUDA_ROWS={value!r}: use 1, 2, 4 or 8 (rows a thread)")
    return int(value)


def two_pass_block() -> int:
    """j per block of a tiled kernel's two-pass LogSumExp: ``$TVMRED_CUDA_TWO_PASS`` (8, 16
    or 32), else 0 -- the online loop.  Opt-in, as the tiles are: by its SASS
    (benchmarks/sass_count.py, sm_90) it pays where the LogSumExp has many weight columns
    (SumSoftMaxWeight D = E = 64: 178 instructions a pair against 245), not with unit ones
    (softmin D = 3: 16.2 against 15.6); not yet timed on a GPU."""
    value = os.environ.get("TVMRED_CUDA_TWO_PASS") or "0"
    if value not in ("0", "8", "16", "32"):
        raise ValueError(f"TVMRED_CUDA_TWO_PASS={value!r}: use 8, 16 or 32 (j a block), or 0")
    return int(value)


def cuda_sum_chains(dtype: str, two_pass: int) -> int:
    """Interleaved chains of a sum of many terms (``tvmred.ops.sum_chains``): 4, whose
    latency a thread's one pair at a time needs; one in a two-pass block, whose ``two_pass``
    pairs are independent chains already -- each further chain starts with an FMUL and ends
    in an FADD (SumSoftMaxWeight D = E = 64, blocks of 16: 178.2 -> 175.2 instructions a
    pair, FFMA 71.8 -> 74.8 %, sm_90 SASS)."""
    return 1 if two_pass else 4


def cuda_row_block(target: dict, dtype: str, width: int = 1, reads: int = 0, kind: str = "") -> int:
    """One row per thread by default (``$TVMRED_CUDA_ROWS`` rows otherwise); rows per thread
    (row_block = THREADS x rows) is also a tuning knob: more rows per thread reuse each
    j-row read (with tiles, one shared-memory load for all rows: sass_count.py), but leave
    fewer blocks to fill the GPU when M is small."""
    return THREADS * rows_per_thread()


def cuda_tile(target: dict, dtype: str) -> int:
    """Reduced rows per shared-memory tile by default: ``$TVMRED_CUDA_TILE``, else 0 (the
    thread-per-row kernel); ``tvmred tune --device cuda`` tries the tiled kernel too
    (checking its answer).  Its status on hardware: README, Platforms."""
    return int(os.environ.get("TVMRED_CUDA_TILE") or 0)


SHARED_BYTES = 48 * 1024  # static shared memory a block may declare without an opt-in
WARP = 32


def cuda_fit_tile(tile: int, row_bytes: int) -> int:
    """The tile a kernel gets: ``tile`` rows of ``row_bytes`` bytes (the reduced-index inputs
    of one j) where they fit the 48 KiB of static shared memory, else as many whole warps of
    rows as fit (a tile of 128 rows of two 64-float vectors would need 64 KiB and fail to
    compile), else 0 -- no tile (the thread-per-row kernel) where not even a warp of rows fits."""
    if tile * row_bytes <= SHARED_BYTES:
        return tile
    return SHARED_BYTES // row_bytes // WARP * WARP


def cuda_candidates(target: dict, dtype: str, default: int) -> list[dict]:
    blocks = [64, 128, 256, 512]
    out = [{"row_block": b} for b in [default] + [b for b in blocks if b != default]]
    out += [{"row_block": rb, "tile": t} for rb in (128, 256) for t in (64, 128, 256)]
    # a LogSumExp's blocks of 16 j in each tile (tune skips these for other reductions)
    return out + [{"row_block": 128, "tile": t, "two_pass": 16} for t in (64, 128)]


def cuda_rows(sch: s_tir.Schedule, shape: ReductionShape, target: dict) -> s_tir.Schedule:
    """Threads own adjacent output rows; with ``shape.tile``, KeOps' 1D scheme: the reduced
    index in tiles of ``tile`` rows -- the block's threads load a tile of every reduced-index
    input into shared memory together (one value per thread per step), then each thread
    reduces its rows (its i-data in registers) over the tile.  A tiled kernel is split-j
    (loops ``s, i, u, j``); the caller pads the reduced-index inputs to whole tiles and the
    reducer masks j >= N (the template's loop partition lifts the mask off whole tiles).
    A block sum (``shape.block``) keeps a partial sum per tile (KeOps' block_sum), or per
    ``block`` consecutive j without tiles, and adds it to the total after each."""
    if shape.two_pass:
        return cuda_two_pass_rows(sch, shape, target)
    red = sch.get_sblock("red")
    threads = min(THREADS, shape.row_block)
    s, io, ii, ir, jo, j, u = _thread_rows(sch, shape, red, shape.tile or shape.block)
    jo = j if jo is None else jo  # the loop over tiles (or over j): the shared copies and
    # the partial sums go there
    acc = red  # the block accumulating over j
    if shape.block:  # partial sums over each tile (as KeOps' block_sum), or each block of j,
        # added to the total (red) after each
        acc = block_partials(sch, red, jo)
        *s, io, ii, jo, j, ir, u = sch.get_loops(acc)  # the same loops, around both blocks
    _bind(sch, s, io, ii)
    readers = _readers(sch, [sch.get_sblock(name) for name in shape.stages] + [acc])
    for name in reversed(shape.stages):
        blk = sch.get_sblock(name)
        sch.compute_at(blk, j)
        for k in range(len(sch.get(blk).writes)):  # a loop operation's block writes several
            sch.set_scope(blk, k, "local")
        if shape.row_block > threads:
            sch.unroll(sch.get_loops(blk)[-1])  # the thread's rows
    accs = [sch.cache_write(red, k, "local") for k in range(shape.outputs)]
    for a in accs:
        sch.reverse_compute_at(a, ii)
    if shape.block:  # the partial sums in registers too; the total's update unrolled
        sch.set_scope(acc, 0, "local")
        for loop in loops_under(sch, red, jo):
            sch.unroll(loop)
    if shape.tile:
        _tiles(sch, shape, readers, jo, ii, threads)
    sch.unroll(ir)
    sch.unroll(u)
    if shape.block:
        sch.decompose_reduction(acc, j)
    sch.decompose_reduction(red, jo)
    return sch


def _thread_rows(sch: s_tir.Schedule, shape: ReductionShape, red: Any, inner: int) -> tuple:
    """``red``'s loops ``s, i, u, j`` (split-j: s, the chunk loop) split and ordered ``s, io,
    ii, jo, j, ir, u`` (returned as ``s, io, ii, ir, jo, j, u``): row = block * row_block +
    thread * per_thread + r -- a thread's rows adjacent, so its registers (stages,
    accumulators) compact to per_thread entries -- and j in blocks of ``inner`` (jo None
    where 0)."""
    *s, i, u, j = sch.get_loops(red)
    threads = min(THREADS, shape.row_block)
    io, ii, ir = sch.split(i, factors=[None, threads, shape.row_block // threads])
    jo = None
    if inner:
        jo, j = sch.split(j, factors=[None, inner])
        sch.reorder(*s, io, ii, jo, j, ir, u)
    else:
        sch.reorder(*s, io, ii, j, ir, u)
    return s, io, ii, ir, jo, j, u


def _bind(sch: s_tir.Schedule, s: list, io: Any, ii: Any) -> None:
    """One thread block per row block (split-j: per chunk and row block), a thread per ``ii``."""
    if s:
        io = sch.fuse(*s, io)
    sch.bind(io, "blockIdx.x")
    sch.bind(ii, "threadIdx.x")


def _readers(sch: s_tir.Schedule, blocks: list) -> dict:
    """Buffer name -> the first of ``blocks`` reading it (where its copies are taken)."""
    readers: dict = {}
    for blk in blocks:
        for region in sch.get(blk).reads:
            readers.setdefault(region.source.name, blk)
    return readers


def _tiles(sch: s_tir.Schedule, shape: ReductionShape, readers: dict, jo: Any, ii: Any,
           threads: int) -> None:  # fmt: skip
    """Each reduced-index input staged in shared memory a tile at a time (at ``jo``, the
    block's threads copying consecutive addresses together; every consumer reads the
    copy; none where ``jo`` is None), the thread's rows of each output-indexed input in
    registers (at ``ii``)."""
    for name in shape.reduced_inputs if jo is not None else ():
        tile = sch.cache_read(readers[name], name, "shared")
        sch.compute_at(tile, jo)
        inner = loops_under(sch, tile, jo)  # rows [, columns]
        fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]  # consecutive addresses
        _, tx = sch.split(fused, factors=[None, threads])
        sch.bind(tx, "threadIdx.x")
    for name, _ in shape.row_inputs:
        regs = sch.cache_read(readers[name], name, "local")
        sch.compute_at(regs, ii)
        for loop in sch.get_loops(regs)[2:]:
            sch.unroll(loop)


@functools.cache
def _multiprocessors(device: Any) -> int:
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


def cuda_chunks(blocks: int, n: int, device: Any) -> int:
    """Split-j when the row blocks would not fill the GPU: enough chunks of the reduced index
    for two blocks per multiprocessor, each chunk at least 4096 reduced rows."""
    sms = _multiprocessors(device)
    if blocks >= sms:
        return 1
    return max(1, min(-(-2 * sms // max(blocks, 1)), n // 4096))


def cuda_finish(mod: Any, shape: ReductionShape, target: dict) -> Any:
    """A K-selection's early exit (``early_exit.py``; imported here: it imports TVM, which a
    process calling cached kernels never does)."""
    from .early_exit import kselect_early_exit

    return kselect_early_exit(mod, shape, target)


TEMPLATE = TargetTemplate(
    kind="cuda",
    device="cuda",
    math=lambda target: "native",
    make_target=cuda_target,
    row_block=cuda_row_block,
    candidates=cuda_candidates,
    schedule=cuda_rows,
    chunks=cuda_chunks,
    tile=cuda_tile,
    fit_tile=cuda_fit_tile,
    two_pass=lambda dtype, tile: two_pass_block() if tile else 0,
    settings=lambda target: {
        **({"rows": r} if (r := rows_per_thread()) != 1 else {}),
        **({"two_pass": b} if (b := two_pass_block()) else {}),
    },
    # the tiled kernels' masks (j < N, marked likely) leave the loop over whole tiles: the
    # tile loop is split into the tiles below N, without the mask, and the last one
    passes={"s_tir.LoopPartition": {"partition_const_loop": True}},
    finish=cuda_finish,
    # predicted, not measured: a GPU does the pairs' work ~30x faster than 2 CPU cores while
    # a kernel's launch and Python cost stay ~tens of microseconds; a value costs less
    hoist_cost=(150_000_000, 1_000),
    sum_chains=cuda_sum_chains,
)


def cuda_two_pass_rows(sch: s_tir.Schedule, shape: ReductionShape, target: dict) -> s_tir.Schedule:
    """A two-pass LogSumExp (``shape.two_pass``): each thread's rows, per block of
    ``two_pass`` j of the shared-memory tile (untiled, a tuned config's: of j, read from
    global memory), F in registers, its max, e^(F - max), the block's weighted sums (k
    outer: each j-row of weights read once for all the thread's rows and columns), then one
    rescale of the running state a block -- the flash-attention layout in FP32 units."""
    red = sch.get_sblock("red")
    threads = min(THREADS, shape.row_block)
    # j: the chunk's blocks (a tiled kernel is split-j); jo: the loop over tiles (None
    # untiled -- a tuned config's: j-rows from global memory)
    s, io, ii, ir, jo, j, u = _thread_rows(sch, shape, red, shape.tile // shape.two_pass)
    _bind(sch, s, io, ii)
    two = two_pass_blocks(sch)
    readers = _readers(sch, [sch.get_sblock(name) for name in (*shape.stages, *two)] + [red])
    for name in reversed(two):
        sch.compute_at(sch.get_sblock(name), j)
    for name in two:
        sch.set_scope(sch.get_sblock(name), 0, "local")
    at = loops_under(sch, sch.get_sblock(two[0]), j)[-1]  # F's loop over the block's j
    for name in reversed(shape.stages):
        sch.compute_at(sch.get_sblock(name), at)
        blk = sch.get_sblock(name)
        for k in range(len(sch.get(blk).writes)):
            sch.set_scope(blk, k, "local")
    for name in two:  # everything under the block of j unrolled: registers, not memory
        blk = sch.get_sblock(name)
        loops = loops_under(sch, blk, j)
        if name not in ("lse_f", "lse_e"):  # a reduction over the block's j, its last loop:
            # first, so each j's weights are read once for all the rows and columns
            if len(loops) > 1:
                sch.reorder(loops[-1], *loops[:-1])
            init = sch.decompose_reduction(blk, loops_under(sch, blk, j)[0])
            for loop in loops_under(sch, init, j):
                sch.unroll(loop)
            loops = loops_under(sch, blk, j)
        for loop in loops:
            sch.unroll(loop)
    for name in shape.stages:
        for loop in loops_under(sch, sch.get_sblock(name), at):
            sch.unroll(loop)
    accs = [sch.cache_write(red, k, "local") for k in range(shape.outputs)]
    for a in accs:
        sch.reverse_compute_at(a, ii)
    _tiles(sch, shape, readers, jo, ii, threads)
    sch.unroll(ir)
    sch.unroll(u)
    sch.decompose_reduction(red, jo if jo is not None else j)
    return sch
