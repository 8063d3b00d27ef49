"""The split-j scheme: chunks of the reduced index reduced in parallel into partial states,
merged by each reduction's combine -- every reduction kind, both axes and dtypes, gradients,
ties/inf/NaN and indices past 2^24, against the dense references (and the one-chunk
kernels); the rule that picks it; the CUDA code it generates."""

import dataclasses

import pytest
import torch
from test_combine import tie_problem
from test_reductions import ALL, DIFFERENTIABLE, check, check_gradients, data, dense, routine

from tvmred import build, schedules
from tvmred.launch import kernel_args, run_states
from tvmred.schedules.cpu import cpu_chunks
from tvmred.targets import cpu_target
from tvmred.torch import Genred


@pytest.fixture
def split(monkeypatch):
    """Force the split-j kernel on the CPU with ``chunks`` chunks (returns a setter)."""

    def force(chunks: int) -> None:
        tpl = dataclasses.replace(schedules.TEMPLATES["llvm"], chunks=lambda b, n, d: chunks)
        monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)

    force(3)
    return force


CASES = [(red, axis, torch.float64, 1e-11) for red in ALL for axis in (1, 0)]
CASES += [
    (red, 1, torch.float32, 2e-5)
    for red in ("Sum", "Min_ArgMin", "KMin_ArgKMin", "LogSumExp", "SumSoftMaxWeight")
]


@pytest.mark.parametrize("red,axis,dtype,tol", CASES)
def test_values(red, axis, dtype, tol, split):
    x, y, b = data(dtype)  # 80 and 60 reduced rows: 3 chunks, the last one shorter
    check(routine(red, axis)(x, y, b), dense(red, x, y, b, axis), tol)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_gradients(red, axis, split):
    check_gradients(red, axis)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize(
    "red,k", [("Min_ArgMin", None), ("Max_ArgMax", None), ("KMin_ArgKMin", 5), ("LogSumExp", None)]
)
def test_ties_inf_nan_as_one_chunk(red, k, axis, split):
    """Equal values keep the lowest index, NaN propagates: exactly the one-chunk result."""
    al, args = tie_problem(axis, torch.float64)
    g = Genred("Abs(x-y)", al, reduction_op=red, axis=axis, opt_arg=k)
    split(1)
    whole = run_states(g.reduction, args)[0]
    for chunks in (2, 7):
        split(chunks)
        got = run_states(g.reduction, args)[0]
        for a, b in zip(
            got if isinstance(got, tuple) else (got,),
            whole if isinstance(whole, tuple) else (whole,),
        ):
            assert torch.equal(a.isnan(), b.isnan())
            assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_indices_past_2_pow_24(split):
    n = 2**24 + 5
    y = torch.zeros(n, 1)
    y[n - 1] = -1.0  # in the last chunk
    y[3] = -0.5  # in the first
    split(4)
    idx = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="ArgKMin", opt_arg=2, axis=1)(
        torch.zeros(2, 1), y
    )
    assert idx.dtype == torch.int64 and idx.tolist() == [[n - 1, 3], [n - 1, 3]]


def test_the_rule(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert cpu_chunks(1, 2_000_000, None) == 4  # one row block for two threads: split
    assert cpu_chunks(1, 6_000, None) == 1  # chunks of at least 4096 rows
    assert cpu_chunks(2, 2_000_000, None) == 1  # as many row blocks as threads: no split
    monkeypatch.setenv("TVM_NUM_THREADS", "8")
    assert cpu_chunks(3, 2_000_000, None) == 6


def test_a_small_m_call_splits_by_default(monkeypatch):
    """M = one row block (as the target's rule sizes it), N = 20000, two threads: the default
    rule takes the split-j kernel, and the answer is the dense one."""
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    m = build.row_block_for(g.reduction.spec("float64"), cpu_target())
    assert cpu_chunks(1, 20_000, None) > 1  # the rule this test relies on: one block, 2 threads
    x, y, b = (
        torch.rand(m, 3, dtype=torch.float64),
        torch.rand(20_000, 3, dtype=torch.float64),
        torch.rand(20_000, 2, dtype=torch.float64),
    )
    c = g(x, y, b)
    assert ("kernel", "float64", x.device, True, ()) in g.reduction.memo  # the split kernel ran
    torch.testing.assert_close(c, torch.exp(-(torch.cdist(x, y) ** 2)) @ b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f", ["x*IntCst(20)", "IntCst(-179)+x*IntCst(0)", "Divide(Acos(x),x)"])
def test_split_stages_cover_the_last_chunk(f, dtype, monkeypatch):
    """A split kernel's last chunk reads j past N: the reduced inputs at N - 1 again, and
    the per-pair stages there -- which spanned only N, so those were never computed (the
    stage's loop guarded by its extent) and the max of a weighted LogSumExp read garbage
    (the weight's stage values, or NaN; fuzz seed 71007).  F of x alone (the same for every
    j), weights a stage of y, 3 chunks of 31 reduced rows, against dense float64."""
    tpl = dataclasses.replace(schedules.TEMPLATES["llvm"], chunks=lambda b, n, d: 3)
    monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.rand(5, 1, generator=gen, dtype=torch.float64) - 1).to(dtype)
    y = (2 * torch.rand(31, 3, generator=gen, dtype=torch.float64) - 1).to(dtype)
    al = ["x = Vi(1)", "y = Vj(3)"]
    g = Genred(f, al, reduction_op="SumSoftMaxWeight", axis=1, formula2="Abs(Mult(x,y))")
    w = (x.double()[:, None, :] * y.double()[None]).abs()  # (5, 31, 3); softmax of F: uniform
    want = w.mean(1)
    torch.testing.assert_close(g(x, y).double(), want, rtol=1e-5, atol=1e-6)
    m = Genred(f + "+Sum(y)*IntCst(0)", al, reduction_op="Max_SumShiftExpWeight", axis=1,
               formula2="Abs(y)")(x, y)  # fmt: skip
    F = {"x*IntCst(20)": 20 * x.double(), "IntCst(-179)+x*IntCst(0)": -179 + 0 * x.double(),
         "Divide(Acos(x),x)": x.double().acos() / x.double()}[f]  # fmt: skip
    torch.testing.assert_close(m[:, :1].double(), F, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m[:, 1:].double(), y.double().abs().sum(0).expand(5, 3),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_last_chunk_reads_in_bounds():
    """S*C >= N: the split kernel's reads of reduced-index inputs are clamped to row N-1 (the
    reducer masks those elements), so the last chunk never reads past the arrays' ends."""
    import re

    from tvmred import lower

    for axis in (0, 1):
        g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=axis)
        text = lower.lower(g.reduction.spec("float32", True), 16).func.script()
        reduced = ("arg0",) if axis == 0 else ("arg1", "arg2")
        reads = re.findall(r"(arg\d)\[([^\]]*)\]", text)
        assert reads
        for name, index in reads:
            if name in reduced and not index.startswith("0:"):
                assert index.startswith("T.min("), (name, index)


# ------------------------------------------------------------------------ tiled kernels
# The CUDA template's j-tiles (schedules/cuda.py, cuda_rows with a tile) change the lowering:
# a chunk's reduced extent is whole tiles, the reduced-index inputs are zero-padded by the
# caller and the reducer masks j >= N.  The same tiled lowering runs on the CPU when the CPU
# template is given a tile: this checks the lowering, the padding and the call path against
# the dense references (the shared-memory schedule itself is checked by
# tests/test_cuda_codegen.py, and on a GPU by benchmarks/gpu_check.sh).


@pytest.fixture
def tiled(monkeypatch):
    """The CPU template with 16-row tiles, ``chunks`` chunks (returns a setter)."""

    def force(chunks: int) -> None:
        tpl = dataclasses.replace(
            schedules.TEMPLATES["llvm"], chunks=lambda b, n, d: chunks, tile=lambda t, d: 16
        )
        monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)

    force(1)
    return force


TILED = [(red, axis, 3) for red in ALL for axis in (1, 0)]  # padded tiles in every chunk
TILED += [(red, 1, 1) for red in ("Sum", "ArgKMin", "SumSoftMaxWeight")]  # one chunk


@pytest.mark.parametrize("red,axis,chunks", TILED)
def test_tiled_values(red, axis, chunks, tiled):
    tiled(chunks)  # 80 and 60 reduced rows: padded to 80 / 64 (one chunk), 96 / 72 (three)
    x, y, b = data(torch.float64)
    g = routine(red, axis)
    check(g(x, y, b), dense(red, x, y, b, axis), 1e-11)
    (k,) = {v[1] for key, v in g.reduction.memo.items() if key[0] == "kernel"}
    assert k.tile == 16  # the tiled kernel ran


@pytest.mark.parametrize("red", ["LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight"])
@pytest.mark.parametrize("tile", [0, 16])
def test_the_last_rows_max_counts_once(red, tile, monkeypatch):
    """A split kernel's masked j (past N, in the last chunk) and a tiled kernel's padding
    re-read the reduced row N - 1 (``Space.duplicates``: the running max takes no mask).
    Here that row holds every output row's max of F and a weight of 1: it must count once
    (dense float64 reference)."""
    over = {"tile": lambda t, d: tile} if tile else {}
    tpl = dataclasses.replace(schedules.TEMPLATES["llvm"], chunks=lambda b, n, d: 3, **over)
    monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)
    x, y, b = data(torch.float64)  # 80 reduced rows in 3 chunks of 27 (of 32 with tiles)
    b[:, 0] = 0.0
    b[-1, 0] = 1.0  # F = 3.5 b_0 - |x - y|^2 (|x - y|^2 <= 3): the last row is every output
    f = "IntCst(7)/IntCst(2)*Elem(b,0) - SqDist(x,y)"  # row's max, not dominating the sums
    al = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]
    F = 3.5 * b[None, :, 0] - ((x[:, None] - y[None]) ** 2).sum(-1)
    if red == "LogSumExp":
        got, want = Genred(f, al, reduction_op=red, axis=1)(x, y, b), F.logsumexp(1, True)
    else:
        got = Genred(f, al, reduction_op=red, axis=1, formula2="b")(x, y, b)
        p = F.softmax(1) if red == "SumSoftMaxWeight" else (F - F.max(1, True).values).exp()
        want = p @ b
        if red == "LogSumExpWeight":
            want = want.log() + F.max(1, True).values
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [20, 60, 61])
def test_no_tiled_chunk_lies_past_n(n, tiled):
    """A tiled call's chunks all start below N: 3 chunks of whole 16-row tiles over 20 or
    60 reduced rows would leave the third past N, where TVM's loop partition (the tiles below
    N, then the rest) starts the rest loop at a negative split point and re-reads the second
    chunk's last tiles -- the CPU two-pass kernel counted 24 and 72 terms.  Raw LogSumExp
    state (max, sum of exp) against dense float64."""
    tiled(3)
    x, y = torch.rand(n, 2, dtype=torch.float64), torch.rand(7, 2, dtype=torch.float64)
    g = Genred("-SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Max_SumShiftExp", axis=0)
    f = -((x[:, None] - y[None]) ** 2).sum(-1)  # (n, 7): reduced over x's rows
    m = f.max(0).values
    check(g(x, y), torch.stack([m, (f - m).exp().sum(0)], 1), 1e-12)
    for chunks in range(2, 9):  # the rule in launch.kernel_args
        k = next(v[1] for key, v in g.reduction.memo.items() if key[0] == "kernel")
        _, state, sizes = kernel_args(g.reduction, k, [x, y], 7, n, chunks)
        s, ct = sizes[2], sizes[3]
        assert (s - 1) * ct * 16 < n <= s * ct * 16 and state[0].shape[0] == s


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,chunks", [(1, 4), (2, 5), (5, 4), (6, 5)])
def test_no_chunk_lies_past_n(n, chunks, dtype, split):
    """More chunks than the reduced rows fill (5 rows in 4 chunks: 3 of 2 rows): a chunk
    wholly past N was launched and its state never written -- a float32 Gaussian sum (block
    sums) gave NaN (shape fuzz seeds 1046, 1111).  Against dense float64, and the chunks the
    launch takes all start below N."""
    split(chunks)
    x, y = torch.rand(9, 3, dtype=dtype), torch.rand(n, 3, dtype=dtype)
    b = torch.rand(n, 2, dtype=dtype)
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    want = torch.exp(-(torch.cdist(x.double(), y.double()) ** 2)) @ b.double()
    check(g(x, y, b), want, 1e-6 if dtype == torch.float32 else 1e-12)
    k = next(v[1] for key, v in g.reduction.memo.items() if key[0] == "kernel")
    _, state, (_, _, s, per_chunk) = kernel_args(g.reduction, k, [x, y, b], 9, n, chunks)
    assert (s - 1) * per_chunk < n <= s * per_chunk and state[0].shape[0] == s


@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_tiled_gradients(red, tiled):
    tiled(3)
    check_gradients(red, 1)


@pytest.mark.parametrize("red,k", [("Min_ArgMin", None), ("KMin_ArgKMin", 5)])
def test_tiled_ties_as_one_call(red, k, tiled):
    al, args = tie_problem(1, torch.float64)
    whole = Genred("Abs(x-y)", al, reduction_op=red, axis=1, opt_arg=k)(*args)
    for chunks in (1, 2):
        tiled(chunks)
        got = Genred("Abs(x-y)", al, reduction_op=red, axis=1, opt_arg=k)(*args)
        for a, b in zip(got, whole):
            assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
