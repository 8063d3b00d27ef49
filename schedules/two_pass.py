"""A two-pass LogSumExp's blocks on the CPU (``ReductionShape.two_pass``, built by
``tvmred.reductions.lse`` and ``.flash``): per block of j, F of the block's j (``lse_f``),
its max (``lse_bm``), then either the sum of e^(F - max) (``lse_bs``, unit weights) or the
exponentials (``lse_e``) and the block's weighted sums, one block a run of weight columns
(``lse_w0``, ...).  A run of several columns, ``lse_w[rows, u] = sum_k e[rows, k] w[k, u]``,
is a matrix product of the block's, scheduled as a GEMM micro-kernel: a tile of
``TILE_VECTORS`` accumulator vectors (row vectors x columns) in registers over the block's
j, each e vector loaded once for the tile's columns and each weight broadcast once for its
rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .shape import loops_under

if TYPE_CHECKING:
    from tvm import s_tir

#: Accumulator vectors of a weighted sum's register tile (row vectors x columns): half the
#: AVX2 registers, a quarter of AVX-512's, leaving room for the e vectors and broadcasts
TILE_VECTORS = 8


def two_pass_blocks(sch: s_tir.Schedule) -> tuple:
    """The two-pass blocks of this kernel, producers first."""
    from tvm.s_tir.schedule import ScheduleError

    def has(name: str) -> bool:
        try:
            return sch.get_sblock(name) is not None
        except ScheduleError:
            return False

    names = [n for n in ("lse_f", "lse_bm", "lse_e", "lse_bs") if has(n)]
    r = 0
    while has(f"lse_w{r}"):
        names.append(f"lse_w{r}")
        r += 1
    return tuple(names)


def two_pass_at(sch: s_tir.Schedule, j: Any, two: tuple, scope: str) -> Any:
    """The blocks computed at ``j`` (the loop over blocks of j) for the row block, each a loop
    over the block's j around a loop over its rows (vectorised by :func:`two_pass_finish`);
    F's values and the exponentials in buffers of ``scope`` laid out j-major (one SIMD vector
    a j), a run's sums column-major.  Returns F's loop over the block's j, where the per-pair
    stages go (each at one j)."""
    for name in reversed(two):
        sch.compute_at(sch.get_sblock(name), j)
    for name in two:
        blk = sch.get_sblock(name)
        rows, *u, js = loops_under(sch, blk, j)
        sch.reorder(*u, js, rows)
        sch.set_scope(blk, 0, scope)
        if name in ("lse_f", "lse_e"):  # (rows, j) -> (j, rows)
            sch.transform_layout(blk, ("write", 0), lambda *a: (*a[:-2], a[-1], a[-2]))
        elif u:  # a run of columns: (rows, block, u) -> (block, u, rows)
            sch.transform_layout(blk, ("write", 0), lambda *a: (*a[:-3], a[-2], a[-1], a[-3]))
    return loops_under(sch, sch.get_sblock(two[0]), j)[0]


def two_pass_finish(
    sch: s_tir.Schedule, two: tuple, scope: str, lanes: int, j: Any, rows: tuple = ()
) -> None:
    """After the stages are placed: each block's rows vectorised (``lanes`` a vector), its
    reductions initialised before their loop over the block's j, a run of several columns
    in register tiles (:func:`_gemm_tile`) -- of half the vectors where the run reads
    inputs of the output index (``rows``, their names: a blocked Sum's x - y, whose x
    values take as many registers as the sums; AVX2 kernels, Gaussian D = 64 forward + x
    gradient 1e4 x 1e4, Zen 5: 355 -> 322 ms, AVX-512 146.5 against 147.1)."""
    for name in two:
        blk = sch.get_sblock(name)
        loops = loops_under(sch, blk, j)
        if len(loops) == 3:
            reads = any(r.source.name.split("_")[0] in rows for r in sch.get(blk).reads)
            _gemm_tile(sch, blk, scope, lanes, loops, TILE_VECTORS // (2 if reads else 1))
            continue
        sch.vectorize(loops[-1])
        if name not in ("lse_f", "lse_e"):
            sch.decompose_reduction(blk, loops[-2])


def _gemm_tile(
    sch: s_tir.Schedule, blk: Any, scope: str, lanes: int, loops: list, size: int
) -> None:
    """A run's sums (loops u, k, rows): rows in vectors of ``lanes``, u in tiles of columns so
    that a tile holds ``size`` vectors, each tile's sums in a local buffer over k."""
    u, k, rows = loops
    extent = lambda loop: int(sch.get(loop).extent)  # noqa: E731
    width = min(lanes, extent(rows))
    vectors = max(1, extent(rows) // width)
    uo, ui = sch.split(u, factors=[None, max(1, size // vectors)])
    rv, ri = sch.split(rows, factors=[None, width])
    sch.reorder(uo, k, rv, ui, ri)
    tile = sch.cache_write(blk, 0, scope)
    sch.reverse_compute_at(tile, uo)
    sch.vectorize(ri)
    sch.unroll(rv)
    sch.unroll(ui)
    sch.decompose_reduction(blk, k)
    sch.vectorize(sch.get_loops(tile)[-1])
