"""What a schedule is allowed to know about a reduction (its shape, never its formula), and
the record that describes a target."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import tvm
    from tvm import s_tir


@dataclass(frozen=True)
class ReductionShape:
    """A reduction ``out[i, u] = Red_j F_u(i, j)`` as lowered by ``tvmred.lower``.

    The lowered PrimFunc has one reduction block named ``red`` (loops ``i, u, j``: output row,
    state column, reduced index; split-j: ``s, i, u, j``, chunk first) writing ``outputs``
    buffers and zero or more per-pair blocks (``stages``, in producer-before-consumer order),
    each computing shared sub-expressions of F over ``(i, j)``.  Output rows are padded to a
    multiple of ``row_block`` (the PrimFunc takes ``Mb`` = rows / row_block), so splitting
    ``i`` by ``row_block`` never needs a tail.  With ``tile`` > 0 (always split-j) a chunk's
    ``j`` extent is a multiple of ``tile`` and the reduced-index inputs (``reduced_inputs``)
    are padded to whole tiles, so splitting ``j`` by ``tile`` needs no tail either.

    With ``block`` > 0 (a Sum, pykeops' ``block_sum``) the reduction block is a plain sum and
    the schedule must add its terms in partial sums of ``block`` consecutive j, each added to
    the total once complete (:func:`block_partials`: ``rfactor`` of j split by ``block``).

    With ``two_pass`` > 0 (a LogSumExp, :attr:`TargetTemplate.two_pass`) the reduction block
    ``red`` runs over blocks of ``two_pass`` consecutive j (its ``j`` loop is the block's
    index) and combines each block's (max, sums) state into the running one; blocks per
    j-block come before it: ``lse_f`` (F of the block's j, ``(rows, blocks * two_pass)``,
    -inf past N), ``lse_bm`` (the block's max, a reduction over the block), then with unit
    weights ``lse_bs`` (its sum of exp(F - max), a reduction over the block), with weights
    ``lse_e`` (exp(F - max), shaped as ``lse_f``) and ``lse_w0``, ``lse_w1``, ... (the
    weighted sums of each run of weight columns: ``(rows, blocks)`` for one column, ``(rows,
    blocks, width)`` for a run of an input's columns -- a matrix product of the block's);
    the per-pair ``stages`` are read by ``lse_f`` at one j each.  Split-j: the same within
    each chunk, every one of these tensors indexed by the chunk first.
    """

    kind: str  # reduction kind tag: "sum", "select", "kselect", "lse"
    cols: int  # columns of each state buffer
    outputs: int  # number of state buffers the reduction block writes
    dtype: str  # data dtype
    acc_dtype: str  # accumulator / output dtype
    row_block: int  # output-row padding multiple
    stages: tuple[str, ...]  # names of the per-pair blocks
    n_inputs: int  # number of tensor inputs
    row_inputs: tuple[tuple[str, int], ...] = ()  # (buffer name, dim) of the output-indexed inputs
    split: bool = False  # split-j: loops (s, i, u, j), outputs (S, rows, cols), j < C
    tile: int = 0  # reduced rows per tile (0: j is not tiled)
    reduced_inputs: tuple[str, ...] = ()  # buffer names of the reduced-index inputs
    block: int = 0  # > 0: a Sum in partial sums of ``block`` consecutive j each (see below)
    ranged: bool = False  # split-j whose chunk s is a task (see tvmred.lower): C is its count
    two_pass: int = 0  # > 0: LogSumExp in blocks of ``two_pass`` j, max then sum (see above)
    guard: tuple[str, ...] = ()  # K-selection of squared distances: the buffers of the reduced
    # rows' squared norms and of their points again, for the dot-product guard (``guard.py``),
    # or of the reduced points in blocks, for the box test (``box.py``)


def _as_is(mod: "tvm.IRModule", shape: ReductionShape, target: dict) -> "tvm.IRModule":
    return mod


@dataclass(frozen=True)
class TargetTemplate:
    """Everything tvmred knows about one TVM target kind."""

    kind: str  # TVM target kind ("llvm", "cuda")
    device: str  # the torch device type whose tensors its kernels take ("cpu", "cuda")
    math: Callable[[dict], str]  # target -> how kernels evaluate exp: "poly" / "avx512",
    # tvmred's SIMD exp (tvmred.mathfns), or "native", the target's own
    make_target: Callable[[Any, dict], dict]  # (torch device, host CPU target) -> target dict
    row_block: Callable[[dict, str, int, int, str], int]  # (target, dtype, state width,
    # reduced-index values read per pair, reduction kind) -> rows per block
    candidates: Callable[[dict, str, int], list]  # (target, dtype, default rows) -> knob dicts
    schedule: Callable[["s_tir.Schedule", ReductionShape, dict], "s_tir.Schedule"]
    finish: Callable[["tvm.IRModule", ReductionShape, dict], "tvm.IRModule"] = _as_is
    chunks: Callable[[int, int, Any], int] = lambda blocks, n, device: 1  # split-j: chunks of
    # the reduced index for (row blocks, reduced rows, torch device); 1: no split
    tile: Callable[[dict, str], int] = lambda target, dtype: 0  # (target, dtype) -> default
    # reduced rows per tile (0: no tiles); the "tile" knob of a tuned config overrides it
    fit_tile: Callable[[int, int], int] = lambda tile, row_bytes: tile  # (tile, bytes of one
    # reduced row) -> the tile the kernel gets (fewer rows where the tile would not fit, 0: none)
    passes: dict = dataclasses.field(default_factory=dict)  # tvm.compile PassContext config
    ranged: bool = False  # compiles ranged (block-sparse) kernels: ranges in one launch
    split_row_block: Callable[[dict, str, int, int, str], int] | None = None  # the split-j
    # kernel's rows per block (it runs when there are few rows: less padding pays), None:
    # ``row_block``'s
    two_pass: Callable[[str, int], int] = lambda dtype, tile: 0  # (compute dtype, the kernel's
    # reduced rows per tile, 0: untiled) -> j per block of a two-pass LogSumExp
    # (ReductionShape.two_pass), 0: the online one-pass loop
    local_rows: Callable[[str, int, int, int], bool] = lambda red, dims, m, n: False  # (reduction,
    # summed dims of the output-indexed variables, output rows, reduced rows) -> whether a
    # call's output rows go in a space-filling curve's order first (tvmred.locality)
    norm_guard: Callable[[str, int, str], bool] = lambda red, dim, dtype: False  # (reduction,
    # dimension of the squared distance, data dtype) -> whether a K-min of |x_i - y_j|^2 takes
    # the dot-product guard (ReductionShape.guard)
    box_guard: Callable[[str, int, str, int], int] = lambda red, dim, dtype, k: 0  # (reduction,
    # dimension of the squared distance, data dtype, K) -> j a box test of a low-dimensional
    # K-min of |x_i - y_j|^2 (``box.py``; where the target's vectors suit it), 0: none
    box_pays: Callable[[int, int], bool] = lambda m, n: False  # (output rows, reduced rows) ->
    # whether the box test pays for this call
    guard_pays: Callable[[int, int, int], bool] = lambda rows, k, n: True  # (rows a block of
    # the guarded kernel, K, reduced rows) -> whether the guard pays for this call
    hoist_cost: tuple = (6_900_000, 490)  # (per kernel, per value it writes): the cost, in
    # scalar operations of the pair kernel, of computing one-index sub-formulas by kernels of
    # their own (tvmred.hoist) -- a call runs them where the pairs times the operations a
    # pair saves reach the sum over its sub-formulas
    two_pass_sums: bool = False  # a Sum of a scalar times many columns runs in blocks of j
    # (tvmred.reductions.sum.scaled), as a two-pass LogSumExp with weights does
    sum_chains: Callable[[str, int], int] = lambda dtype, two_pass: 4  # (compute dtype, j a
    # two-pass block) -> interleaved chains of a sum of many terms (a dot product, a squared
    # distance: tvmred.ops.sum_chains)
    settings: Callable[[dict], dict] = lambda target: {}  # environment settings that change
    # the template's default kernels (they go into the cache key), e.g. CUDA's rows a thread


def loops_under(sch: "s_tir.Schedule", block: Any, at: Any) -> list:
    """The loops of ``block`` nested inside the loop ``at``."""
    loops = sch.get_loops(block)
    return loops[[sch.get_sref(x) for x in loops].index(sch.get_sref(at)) + 1 :]


def block_partials(sch: "s_tir.Schedule", red: Any, piece: Any) -> Any:
    """Factor the reduction block ``red`` over ``piece``, the outer loop of its j loop split
    by ``block``: a new block ``red_rf`` (returned) sums each piece of ``block`` consecutive
    j into a partial sum (its buffer indexed by the piece first) in the loops of ``red``;
    ``red`` adds each partial sum to the total, right after it is complete (under
    ``piece``)."""
    depth = [sch.get_sref(x) for x in sch.get_loops(red)].index(sch.get_sref(piece))
    rf = sch.rfactor(piece, 0)
    sch.reverse_compute_at(red, sch.get_loops(rf)[depth])
    return rf
