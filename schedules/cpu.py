"""LLVM (CPU) template.

``cpu_rowblock``: output rows in blocks of ``row_block`` lanes, blocks run in parallel over the
cores; inside a block the loop over the reduced index j is outermost, every per-pair stage is
computed at j for the whole block of lanes (vectorised over the lanes, so each shared
sub-expression is evaluated once per (i, j) pair), and the block's accumulators stay in a local
(register) buffer laid out component-major so each component is one SIMD vector.  The block's
rows of every output-indexed input are copied once, before the j loop, into a component-major
local buffer, so the j loop reads them with contiguous vector loads instead of strided gathers.
K-selections get an early exit after scheduling (``early_exit.py``), a block sum's last
block runs only its own j (``tails.py``), and a unit-weight LogSumExp runs j in blocks of
``TWO_PASS``: the block's F into a local buffer, its max, its sum of exponentials, then one
rescale of the running state a block instead of one a pair (``ReductionShape.two_pass``).
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import TYPE_CHECKING, Any

from .shape import ReductionShape, TargetTemplate, block_partials
from .two_pass import two_pass_at, two_pass_blocks, two_pass_finish

if TYPE_CHECKING:
    import tvm
    from tvm import s_tir


@functools.lru_cache(maxsize=None)
def _registers(target_json: str) -> tuple[int, int]:
    from tvm.target import Target, codegen

    t = Target(json.loads(target_json))
    has = lambda feature: codegen.llvm_cpu_has_features(feature, t)  # noqa: E731
    if has("avx512f"):
        return 32, 512
    if has("avx"):
        return 16, 256
    if has("neon"):
        return 32, 128
    return 16, 128  # SSE2 and anything else


def vector_registers(target: dict) -> tuple[int, int]:
    """(count, bits) of the SIMD registers of the target's CPU, from LLVM's feature list:
    AVX-512 32 x 512, AVX/AVX2 16 x 256, NEON 32 x 128, else 16 x 128."""
    return _registers(json.dumps(target, sort_keys=True))


#: Storage scope of a row block's buffers (its copied inputs, accumulators, a two-pass
#: LogSumExp's block of F).  TVM 0.27 lowers a "local" allocation on the CPU to a
#: TVMBackendAllocWorkspace call (heap, once per row block) and a "global" one under 1 KiB to a
#: stack alloca: LLVM keeps the latter in registers, but stores every update of the former
#: (pointers it cannot prove distinct) -- ArgKMin K=10 with AVX2 kernels was 1.17-1.29x slower
SCOPE = "global"

#: Reduced-index values a pair reads from which a row block spans two vectors at least: each
#: value is broadcast once per j for the whole block, and with one vector the loads bound the
#: loop (KNN at D = 64 with AVX2 kernels: 1.2x faster with two vectors; narrower: KSELECT_BYTES)
WIDE_READS = 16


#: A K-selection's block (K <= KSELECT_K, fewer than WIDE_READS values a pair): KSELECT_BYTES
#: of rows -- 16 float32 or 8 float64, two AVX2 vectors or one AVX-512 vector.  Most j are
#: skipped after one compare of the block's K-th values (early_exit.py); the j's broadcasts,
#: any-lane test and branch are shared by the block's vectors.  ArgKMin D=3, 1e4 x 1e4,
#: 2-vCPU Zen 4, kernel against kernel in one process: AVX2 kernels 16 rows against 8: K=5
#: 1.40x, K=10 1.13x, D=8 1.12x, K=16 1.03x, but K=20 0.85x; float64 8 rows against 4 1.16x
#: (16: 1.12x); AVX-512 one vector is best (two: K=5 0.73x -- the rule before gave K=5 two
#: --, K=10 0.85x, K=20 0.85x, float64 0.87x).  128-bit targets (SSE, NEON) get four
#: vectors: not measured.
KSELECT_BYTES = 64
KSELECT_K = 16

#: Where the target's vectors are 512 bits (AVX-512), the kernel of a K-selection with the
#: dot-product guard (kind "kselect+guard": ``guard.py``) takes one vector of rows.  Its j
#: cost a dot product a row and a compare, except those at which some row of the block takes
#: the pair: there the whole block's exact distances are computed and inserted -- such j
#: grow more frequent and dearer with the block's rows (ArgKMin K=10, D=64, 1e4 x 1e4:
#: 6.7 % of j with 16 rows, 10.8 % with 32, counted on the benchmark's data).  AVX-512's
#: multiply-add takes its broadcast operand from memory, so one vector keeps the dot-product
#: loop at its multiply-add rate (dot products alone, 16 rows against 32: 59 / 61 ms);
#: AVX2's separate broadcast loads bound a one-vector loop (0.56-0.68x), so there the block
#: keeps the kind's rule.  ArgKMin K=10 1e4, 2-vCPU Zen 4, kernel against kernel in one
#: process, AVX-512 one vector against two: D=64 1.25x, D=128 1.25x, float64 D=64 1.12x.
GUARD_ONE_VECTOR_BITS = 512


def vector_lanes(target: dict, dtype: str) -> int:
    """Values of ``dtype`` (float32, else float64) in one SIMD vector of the target."""
    return vector_registers(target)[1] // (32 if dtype == "float32" else 64)


def cpu_row_block(target: dict, dtype: str, width: int = 1, reads: int = 0, kind: str = "") -> int:
    """Lanes per row block: four SIMD vectors of the data type, halved while the block's
    reduction state (``width`` values per row, kept in registers across the j loop) would
    take more vectors than the target has registers -- but never below one vector (two when
    a pair reads ``WIDE_READS`` or more reduced-index values): a half-empty vector costs
    more than spilling part of a wide state (measurements in CHANGELOG.md).  A K-selection
    of K <= ``KSELECT_K`` reading fewer values: ``KSELECT_BYTES`` of rows, one vector at
    least; one with the dot-product guard on AVX-512 (``GUARD_ONE_VECTOR_BITS``).  The
    block's inputs do not count: they are read from a local (L1-resident) copy at every j."""
    count, bits = vector_registers(target)
    size = 32 if dtype == "float32" else 64
    per_vector = bits // size
    lanes = 4 * per_vector
    if kind == "kselect+guard" and bits >= GUARD_ONE_VECTOR_BITS:
        return per_vector
    kind = kind.split("+")[0]
    if kind == "kselect" and width <= 2 * KSELECT_K and reads < WIDE_READS:  # K values, indices
        return max(per_vector, KSELECT_BYTES * 8 // size)
    floor = per_vector * (2 if reads >= WIDE_READS else 1)
    while lanes > floor and lanes * width > count * per_vector:
        lanes //= 2
    return lanes


def cpu_split_row_block(
    target: dict, dtype: str, width: int = 1, reads: int = 0, kind: str = ""
) -> int:
    """The split-j kernel's row block: half of :func:`cpu_row_block`, at least one vector --
    it runs when the row blocks are fewer than the threads, where a half-empty block costs
    more than narrower blocks (M = 32, N = 2e6 Gaussian: 1.7x faster than 64-row blocks)."""
    per_vector = vector_lanes(target, dtype)
    return max(per_vector, cpu_row_block(target, dtype, width, reads, kind) // 2)


def cpu_candidates(target: dict, dtype: str, default: int) -> list[dict]:
    """Row blocks from half a vector to eight vectors (``default`` first)."""
    per_vector = vector_lanes(target, dtype)
    blocks = [per_vector // 2 * 2**k for k in range(5)]
    return [{"row_block": b} for b in [default] + [b for b in blocks if b != default]]


def cpu_rowblock(sch: s_tir.Schedule, shape: ReductionShape, target: dict) -> s_tir.Schedule:
    red = sch.get_sblock("red")
    *s, i, u, j = sch.get_loops(red)  # split-j: s, the chunk loop
    io, ii = sch.split(i, factors=[None, shape.row_block])
    acc = red  # the block accumulating over j, at whose j loop the per-pair stages run
    if shape.block:  # partial sums of blocks of j (acc), added to the total (red) after each
        jb, j = sch.split(j, factors=[None, shape.block])
        sch.reorder(*s, io, jb, j, u, ii)
        acc = block_partials(sch, red, jb)
        *s, io, jb, j, u, ii = sch.get_loops(acc)  # the same loops, now around both blocks
    else:
        sch.reorder(*s, io, j, u, ii)
    jdec = j  # the loop above which the reduction's initialisation goes
    if _unrolled_j(shape):
        jdec, j = sch.split(j, factors=[None, J_UNROLL])
    if s:  # split-j: the (chunk, row block) pairs run in parallel
        io = sch.fuse(*s, io)
    sch.parallel(io)
    two = two_pass_blocks(sch) if shape.two_pass else ()  # per block of j: F, its max, ...
    at = two_pass_at(sch, j, two, SCOPE) if two else j  # where the per-pair stages go
    for name in reversed(shape.stages):  # consumers first, so every stage lands under j
        blk = sch.get_sblock(name)
        sch.compute_at(blk, at)
    # the block's rows of each output-indexed input, copied once per block into a transposed
    # (component-major) local buffer: every read in the j loop is then a contiguous vector
    # load instead of a strided gather
    blocks = [sch.get_sblock(name) for name in (*shape.stages, *two)] + [acc]
    for name, _dim in shape.row_inputs:
        reader = next(b for b in blocks if _reads(sch, b, name))
        cache = sch.cache_read(reader, name, SCOPE)
        sch.compute_at(cache, io)
        sch.transform_layout(cache, ("write", 0), lambda *a: (*a[:-2], a[-1], a[-2]))
    # accumulators in registers, one SIMD vector per state column
    accs = [sch.cache_write(red, k, SCOPE) for k in range(shape.outputs)]
    for k, acc_k in enumerate(accs):
        sch.reverse_compute_at(acc_k, io)
        sch.transform_layout(red, ("write", k), lambda *a: (*a[:-2], a[-1], a[-2]))
    if shape.block:  # the partial sums too, and the total's update vectorised like them
        sch.set_scope(acc, 0, SCOPE)
        sch.transform_layout(acc, ("write", 0), lambda *a: (*a[:-2], a[-1], a[-2]))
        loops = sch.get_loops(red)
        ti, *tu = loops[[sch.get_sref(x) for x in loops].index(sch.get_sref(jb)) + 1 :]
        sch.reorder(*tu, ti)
        for loop in tu:
            sch.unroll(loop)
        sch.vectorize(ti)
    sch.unroll(u)
    sch.vectorize(_native_vectors(sch, ii, shape, target))
    for name in shape.stages:
        sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])
    if shape.block:  # (before the two-pass blocks' own: TVM then no longer sees these as
        # reductions)
        sch.decompose_reduction(acc, j)
        sch.decompose_reduction(red, jb)
    rows = tuple(name for name, _ in shape.row_inputs)
    two_pass_finish(sch, two, SCOPE, vector_lanes(target, shape.acc_dtype), j, rows)
    if not shape.block:
        sch.decompose_reduction(red, jdec)
    if jdec is not j:
        sch.unroll(j)
    return sch


def _native_vectors(sch: s_tir.Schedule, ii: Any, shape: ReductionShape, target: dict) -> Any:
    """The loop to vectorise over a block's rows: ``ii`` itself, or for a Min/Max/ArgMin
    (``select``) block of several SIMD vectors, its inner loop of one vector (the outer
    unrolled).  Their update is a select on a comparison; LLVM legalises a 32-lane boolean
    as bytes on AVX2, packing and unpacking the four vectors' masks at every j (106
    instructions a j for 32 rows, ~45 of them shuffles; 82 as four vectors).  Kernel against
    kernel in one process, 2-vCPU Zen 4, 1e4 x 1e4, same results: AVX2 kernels ArgMin D=3
    1.56x, Max 1.88x, float64 ArgMin 1.40x, Max_ArgMax of an Exp 1.27x, D=64 1.07x; AVX-512
    (mask registers) 1.00x, float64 1.12x.  Sums and LogSumExp: 1.00x either way; K-min
    blocks (one vector as a rule) and the guarded kernel (its pass reads the block's vector)
    keep ``ii``."""
    lanes = vector_lanes(target, shape.acc_dtype)
    if shape.kind != "select" or shape.guard or shape.row_block <= lanes:
        return ii
    iv, ii = sch.split(ii, factors=[None, lanes])
    sch.unroll(iv)
    return ii


#: j per iteration of a plain Sum's loop (the others: 1).  A row block's per-pair chains
#: (an exp's Horner steps) are latency-bound where its few vectors do not keep the FMA units
#: busy: two j per iteration give the out-of-order core twice the independent chains.
#: float64 Gaussian (Exp(-SqDist(x,y))*b), 1e4, 2-vCPU Zen 4, unrolled against not, in one
#: process: AVX2 kernels D=3 1.17-1.24x, D=8 1.31-1.34x, D=16 1.02-1.06x, but D=64 0.44x
#: (twice the block's inputs live: spills), E=16 1.0x; AVX-512 D=3 1.02x, D=8 1.03x, D=16
#: 1.13x.  Hence only for row inputs of at most J_UNROLL_VALUES values and as many state
#: columns.  float32 Sums are block sums (partial sums of 1024 j), not unrolled.
J_UNROLL = 2
J_UNROLL_VALUES = 16


#: Interleaved chains of a float32 sum of many terms (a squared distance, a dot product) on a
#: CPU, against 4 on a GPU: there the adds run on other pipes than the FMAs, and short chains
#: keep the out-of-order window full.  Kernel against kernel in one process, 2-vCPU Zen 4,
#: 1e4 x 1e4, 4 -> 16 chains: Gaussian Exp(-SqDist(x,y))*b D = 32 AVX2 kernels 1.27x,
#: AVX-512 1.20x; D = 64 1.36x / 1.89x (the 4-chain loop spilled ~290 vectors a j, 16 ~10);
#: D = 128 (5e3) 1.29x / 1.77x; D = 16 1.02x / 0.97x; Exp((x|y))*b D = 64 1.01x / 1.02x;
#: ArgKMin D = 64 1.03x / 1.02x.  float64 keeps 4: 16 were 0.93-0.95x (no spills with 4).
CPU_SUM_CHAINS = 16


def cpu_sum_chains(dtype: str, two_pass: int = 0) -> int:
    return CPU_SUM_CHAINS if dtype == "float32" else 4


def _unrolled_j(shape: ReductionShape) -> bool:
    """A plain Sum (no block partials, not split-j, tiled or ranged) of a narrow formula
    runs J_UNROLL j an iteration."""
    plain = not (shape.block or shape.two_pass or shape.split or shape.tile or shape.ranged)
    row_values = sum(d for _, d in shape.row_inputs)
    narrow = row_values <= J_UNROLL_VALUES and shape.cols <= J_UNROLL_VALUES
    return shape.kind == "sum" and plain and narrow and J_UNROLL > 1


def _reads(sch: s_tir.Schedule, block: Any, name: str) -> bool:
    return any(r.source.name == name for r in sch.get(block).reads)


def cpu_finish(mod: tvm.IRModule, shape: ReductionShape, target: dict) -> tvm.IRModule:
    """After scheduling: a block sum's last block cut to its own j (``tails.py``), the
    K-selection early exit (``early_exit.py``) and the dot-product guard (``guard.py``) or
    the box test (``box.py``)."""
    from .early_exit import kselect_early_exit
    from .guard import norm_guard
    from .tails import clip_block_tails

    mod = kselect_early_exit(clip_block_tails(mod, shape, target), shape, target)
    if len(shape.guard) == 1:
        from .box import box_guard

        bits = vector_registers(target)[1]  # x86 AVX / AVX-512 (the mask's vmovmskps)
        return box_guard(mod, shape, BOX_BYTES) if bits >= BOX_MIN_BITS else mod
    return norm_guard(mod, shape, target, vector_registers(target))


#: j per block of a two-pass LogSumExp (ReductionShape.two_pass): 16 beat 8 and 32 with AVX2
#: kernels (1e4 x 1e4 softmin, float32, 2-vCPU Xeon; 32 rows a block, F's block 2 KiB in L1)
TWO_PASS = 16

MIN_CHUNK = 4096  # reduced rows per split-j chunk: below, a row block's setup dominates


def cpu_chunks(blocks: int, n: int, device: Any) -> int:
    """Split-j when there are fewer row blocks than kernel threads: enough chunks of the
    reduced index that every thread gets work twice over (TVM_NUM_THREADS, as TVM)."""
    threads = int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count() or 1)
    if blocks >= threads:
        return 1
    return max(1, min(-(-2 * threads // max(blocks, 1)), n // MIN_CHUNK))


#: K-min calls whose output rows are put in a space-filling curve's order first
#: (tvmred.locality): output-indexed variables of at most LOCAL_DIMS values in all (beyond,
#: a Morton code of 15 bits says little about nearness), at least LOCAL_MIN_M output rows and
#: LOCAL_MIN_N reduced rows (below, the order's fixed cost, ~0.1-0.2 ms, is not repaid)
LOCAL_REDUCTIONS = ("KMin", "ArgKMin", "KMin_ArgKMin")
LOCAL_DIMS = 8
LOCAL_MIN_M = 2048
LOCAL_MIN_N = 256


def cpu_local_rows(red: str, dims: int, m: int, n: int) -> bool:
    return red in LOCAL_REDUCTIONS and dims <= LOCAL_DIMS and m >= LOCAL_MIN_M and n >= LOCAL_MIN_N


#: K-min searches of |x_i - y_j|^2 with at least GUARD_MIN_DIM values a point take the
#: kernel with the dot-product guard (float32 and float64 data).  The launch decides without
#: the target: a cached call imports no TVM.  Guarded against unguarded calls, 1e4 x 1e4,
#: 2-vCPU Zen 4, alternated in one process (float32 unless said): ArgKMin K=10 AVX-512 D=12
#: 0.99x, D=16 1.48x, D=32 1.55x, D=64 1.62x, D=128 1.64x, float64 D=16 1.36x, D=64 1.66x;
#: AVX2 kernels D=12 1.12x, D=16 1.15x, D=32 1.48x, D=64 1.53x, float64 D=16 1.20x;
#: ArgMin AVX-512 D=12 1.18x, D=16 1.27x, D=32 1.37x, float64 D=64 1.23x; AVX2 D=12 1.24x,
#: D=16 1.45x, D=32 1.69x, float64 D=64 2.25x.  D=8: ArgKMin 0.39x (AVX-512), 0.88x (AVX2).
GUARD_MIN_DIM = 12


GUARD_REDUCTIONS = (*LOCAL_REDUCTIONS, "Min", "ArgMin", "Min_ArgMin")

#: A K-min (K <= KSELECT_K) of |x_i - y_j|^2 of at most BOX_MAX_DIM values a point, M and N
#: BOX_MIN_ROWS or more (rows in a curve's order), tests BOX_BYTES of each value of the reduced
#: points at once against a row block's box (``box.py``; x86 vectors of BOX_MIN_BITS or more).
#: ArgKMin K=10 1e4 (uniform in the unit cube unless said), 2-vCPU Zen 4, call against call in
#: one process, same answers, AVX2 / AVX-512 kernels: D=3 1.35-1.63x / 1.48x, Gaussian points
#: 1.36x / 1.37x, D=2 2.38x / 1.25x, D=6 1.34x / 1.23x, K=1 1.57x / 1.49x, float64 1.48x /
#: 1.17x, 1e5 x 1e5 3.66x / 3.91x; M x N = 1e4 x 4096 1.27x / 1.05x, 4096 x 1e4 1.30x / 1.00x,
#: 2048 x 8192 1.08x / 0.97x, 2048 x 1024 0.92x / 0.87x (the j before the K-lists fill all
#: pass); D=8 1.03x, K=30 0.97x (AVX2); 64 bytes a test: AVX-512 0.86-1.33x, AVX2 0.93-0.95x.
BOX_BYTES, BOX_MIN_BITS, BOX_MAX_DIM, BOX_MIN_ROWS = 128, 256, 6, 8192


def cpu_box_guard(red: str, dim: int, dtype: str, k: int) -> int:
    ok = red in LOCAL_REDUCTIONS and dim <= BOX_MAX_DIM <= LOCAL_DIMS and k <= KSELECT_K
    size = {"float32": 4, "float64": 8}.get(dtype) if ok else None
    return BOX_BYTES // size if size else 0


def cpu_norm_guard(red: str, dim: int, dtype: str) -> bool:
    return red in GUARD_REDUCTIONS and dim >= GUARD_MIN_DIM and dtype in ("float32", "float64")


#: The guard's exact computations are for the j at which some row of a block could take a
#: new value: in random order, j enters a row's K best with probability K / j, so a block of
#: R rows has about R K (1 + ln(N / (R K))) such j of N.  The guard where that share is at
#: most GUARD_MAX_SHARE.  Measured (ArgMin D=64, 2-vCPU Zen 4, guarded against not): AVX-512
#: (64 rows) N=1000 (share 0.24) 0.88-0.94x, N=3000 (0.10) 1.07x, N=1e4 (0.04) 1.27x;
#: AVX2 (32 rows) N=256 (0.39) 1.10x, N=1000 (0.14) 1.33-1.41x; ArgKMin K=10, 32 rows,
#: N=1e4 (0.14): AVX-512 1.03x, AVX2 1.47x.
GUARD_MAX_SHARE = 0.15


def guard_share(rows: int, k: int, n: int) -> float:
    """The expected share of the j at which a block of ``rows`` rows takes a new value."""
    first = rows * k
    return 1.0 if n <= first else first * (1 + math.log(n / first)) / n


def cpu_guard_pays(rows: int, k: int, n: int) -> bool:
    return guard_share(rows, k, n) <= GUARD_MAX_SHARE


TEMPLATE = TargetTemplate(
    kind="llvm",
    device="cpu",
    math=lambda target: "avx512" if vector_registers(target)[1] == 512 else "poly",
    make_target=lambda device, host: host,
    row_block=cpu_row_block,
    candidates=cpu_candidates,
    schedule=cpu_rowblock,
    finish=cpu_finish,
    chunks=cpu_chunks,
    split_row_block=cpu_split_row_block,
    ranged=True,
    two_pass=lambda dtype, tile: TWO_PASS,
    # fitted to Exp((Normalize(x)|Normalize(y))*10)*b, N = M, 2-vCPU Zen 5, 2 threads: an
    # operation saved ~3.5 ps a pair (4.1 at D = 3, 2.95 at D = 64), a sub-formula's kernel
    # ~24 us + ~1.7 ns a value; the rule then hoists from M ~ 1200 at D = 3 (14 operations
    # saved a pair) and ~ 400 at D = 64 (258), where hoisting measured 0.79x at 600, 1.10x
    # at 1000 (D = 3), 0.60x at 100 and 1.23x at 300 (D = 64)
    hoist_cost=(6_900_000, 490),
    local_rows=cpu_local_rows,
    norm_guard=cpu_norm_guard,
    box_guard=cpu_box_guard,
    box_pays=lambda m, n: min(m, n) >= BOX_MIN_ROWS,
    guard_pays=cpu_guard_pays,
    sum_chains=cpu_sum_chains,
    two_pass_sums=True,
)
