"""Other CPUs: the row-block rule follows the target's vector registers; kernels compiled for
an AVX2 CPU run correctly here; AArch64, macOS and Windows code generation works (cross,
not run)."""

import re
from pathlib import Path

import pytest
import torch

from tvmred import build
from tvmred.frontend import make_reduction
from tvmred.launch import kernel_args
from tvmred.schedules.cpu import KSELECT_K, cpu_row_block, vector_lanes, vector_registers
from tvmred.targets import cpu_target

AVX512 = {"kind": "llvm", "mcpu": "znver5"}
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}
SSE2 = {"kind": "llvm", "mcpu": "x86-64"}

GAUSS = ("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"], "Sum", None)
KNN = ("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], "ArgKMin", 10)
LSE = ("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], "LogSumExp", None)


@pytest.mark.parametrize(
    "target,regs", [(AVX512, (32, 512)), (AVX2, (16, 256)), (NEON, (32, 128)), (SSE2, (16, 128))]
)
def test_vector_registers_follow_the_target(target, regs):
    assert vector_registers(target) == regs


@pytest.mark.parametrize(
    "target,gauss,knn",
    [(AVX512, 64, 16), (AVX2, 32, 16), (NEON, 16, 16), (SSE2, 16, 16)],
)
def test_row_blocks_follow_the_target(target, gauss, knn):
    """Four vectors, fewer while the state would not fit the registers, at least one vector:
    Gaussian conv (3 state values per row); a K-selection of K <= KSELECT_K: 64 bytes of
    rows (ArgKMin K=10: 16 float32 rows, one AVX-512 vector, two AVX2 ones, four of 128
    bits); past KSELECT_K the general rule (K=20: 40 state values a row)."""
    lanes = vector_registers(target)[1] // 32
    for case, want in ((GAUSS, gauss), (KNN, knn)):
        r = make_reduction(*case[:3], 1, "auto", case[3])
        assert build.row_block_for(r.spec("float32"), target) == want
        # the narrow split-j kernel (few output rows): half as many rows, at least one vector
        assert build.row_block_for(r.spec("float32", True, narrow=True), target) == max(
            lanes, want // 2
        )
    # a pair reading 64 reduced-index values: two vectors at least, however wide the state
    wide = make_reduction("SqDist(x,y)", ["x = Vi(64)", "y = Vj(64)"], "ArgKMin", 1, "auto", 10)
    assert build.row_block_for(wide.spec("float32"), target) == 2 * lanes
    # its dot-product guard's kernel: one vector where the FMA reads its broadcast from memory
    # (512-bit vectors), the plain kernel's block elsewhere; the guard's extra inputs (norms,
    # points again) are read at few pairs and do not count as the pair's reads
    for dt in ("float32", "float64"):
        one = vector_lanes(target, dt)
        guarded = build.row_block_for(wide.spec(dt, guard=True), target)
        assert guarded == (one if target is AVX512 else build.row_block_for(wide.spec(dt), target))
    small = make_reduction("SqDist(x,y)", ["x = Vi(12)", "y = Vj(12)"], "ArgKMin", 1, "auto", 10)
    assert build.row_block_for(small.spec("float32", guard=True), target) == (
        lanes if target is AVX512 else build.row_block_for(small.spec("float32"), target)
    )
    assert cpu_row_block(AVX2, "float64", 3) == 16  # four float64 vectors of 4
    assert cpu_row_block(target, "float64", 20, 3, "kselect") == max(lanes // 2, 8)
    big = make_reduction(*KNN[:3], 1, "auto", KSELECT_K + 4)
    want = lanes * 4
    while want > lanes and want * 2 * (KSELECT_K + 4) > vector_registers(target)[0] * lanes:
        want //= 2
    assert build.row_block_for(big.spec("float32"), target) == want


def cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def dense(case, args):
    x, y = (a.double() for a in args[:2])
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    if case is GAUSS:
        return torch.exp(-d2) @ args[2].double()
    if case is KNN:
        return d2.topk(10, dim=1, largest=False).indices
    return torch.logsumexp(-d2, 1, keepdim=True)


@pytest.mark.parametrize("case", [GAUSS, KNN, LSE], ids=["gauss", "argkmin", "logsumexp"])
def test_avx2_kernels_run_here(case):
    """Kernels compiled for haswell (16 ymm registers, no AVX-512) give the right values on
    this machine; the code really is AVX2 code."""
    if not cpu_has("avx2"):
        pytest.skip("this CPU has no AVX2 (or no /proc/cpuinfo to tell)")
    r = make_reduction(*case[:3], 1, "auto", case[3])
    spec = r.spec("float32")
    ex, meta = build.compile_reduction(spec, AVX2)
    asm = ex.mod.inspect_source("asm")
    assert "%ymm" in asm and "%zmm" not in asm
    kern = build.make_kernel(ex.mod["main"], spec, meta["row_block"])
    g = torch.Generator().manual_seed(0)
    M, N = 301, 523
    args = [torch.rand(M if "Vi" in a else N, int(a[-2]), generator=g) for a in case[1]]
    call, state, sizes = kernel_args(r, kern, args, M, N)
    kern.fn(*call, *state, *sizes)
    out = r.rdef.finalize([s[:M] for s in state], spec.variant, torch.float32)
    want = dense(case, args)
    if want.dtype == torch.int64:
        assert (out == want).float().mean() > 0.999  # float32 distances: rare near-ties
    else:
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [GAUSS, KNN], ids=["gauss", "argkmin"])
def test_a_row_blocks_buffers_are_not_heap_allocated(case):
    """The row block's accumulators and its copy of the output-indexed inputs (a few hundred
    bytes) are stack buffers that LLVM keeps in registers: no TVMBackendAllocWorkspace call
    (with it, every update of a K-selection's state was stored through its pointers)."""
    r = make_reduction(*case[:3], 1, "auto", case[3])
    ex, _ = build.compile_reduction(r.spec("float32"), AVX2)
    assert "TVMBackendAllocWorkspace" not in ex.mod.inspect_source("ll")


@pytest.mark.parametrize(
    "target,isa",
    [
        (NEON, r"\bfmla\s+v\d+\.4s"),
        # Apple's assembler syntax puts the arrangement on the mnemonic
        ({"kind": "llvm", "mtriple": "arm64-apple-macos", "mcpu": "apple-m1"}, r"\bfmla\.4s\s"),
        ({"kind": "llvm", "mtriple": "x86_64-pc-windows-msvc", "mcpu": "haswell"}, r"%ymm"),
    ],
    ids=["linux-aarch64", "macos-arm64", "windows-x86_64"],
)
def test_cross_compiles(target, isa):
    """Code generation for other platforms (not run: no such machine here)."""
    r = make_reduction(*GAUSS[:3], 1, "auto")
    ex, _ = build.compile_reduction(r.spec("float32"), target)
    assert re.search(isa, ex.mod.inspect_source("asm"))


def test_a_division_by_a_parameter_is_a_multiply():
    """(f - C) / eps, Sinkhorn's exponent: LLVM's arcp flag (targets.codegen_target) turns a
    division by a value the j loop does not change into one reciprocal and a multiply a
    pair -- no vector division left in the kernel -- with values within float32 rounding of
    float64's."""
    from tvmred.torch import Genred

    formula = "(f - SqDist(x,y)) / e"
    aliases = ["f = Vj(1)", "x = Vi(3)", "y = Vj(3)", "e = Pm(1)"]
    r = make_reduction(formula, aliases, "LogSumExp", 1, "auto")
    ex, _ = build.compile_reduction(r.spec("float32"), AVX2)
    assert "vdivps" not in ex.mod.inspect_source("asm")
    g = torch.Generator().manual_seed(0)
    f, x, y = torch.rand(700, 1, generator=g), torch.rand(500, 3, generator=g), torch.rand(700, 3)
    eps = torch.tensor([0.01])
    got = Genred(formula, aliases, reduction_op="LogSumExp", axis=1)(f, x, y, eps)
    d2 = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
    want = torch.logsumexp((f.double().T - d2) / 0.01, 1, keepdim=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_the_benchmarks_clock_is_measured():
    """bench_suite's share of peak divides by a multiply-add rate it measures (chains of
    independent vector FMAs) and its clock by a chain of dependent one-cycle integer
    operations, not /proc/cpuinfo's, often the nominal one in a VM."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import timing

    hz = timing.measured_clock()
    assert hz is not None and 2e8 < hz < 1e10  # any CPU of the last twenty years
    # the peak: one core's measured multiply-add rate with the target's vectors, x 2 x cores
    rate = timing.measured_fma_rate(32)
    peak, how = timing.peak_flops(32, 2)
    assert rate is not None and how.endswith("(measured)")
    assert peak == pytest.approx(2 * 2 * rate)
    # one or two vectors a cycle (Zen 4's 512-bit ops take both 256-bit pipes: one), a busy
    # host's share of it at worst
    vectors = rate / hz / (vector_registers(cpu_target())[1] // 32)
    assert 0.2 < vectors < 2.2


@pytest.mark.parametrize("n", [1, 2, 3, 31, 1001])
def test_a_plain_sum_unrolled_over_j_keeps_every_term(n):
    """A narrow float64 Sum runs two j an iteration (schedules.cpu.J_UNROLL): an odd N's
    last j is still added once, an even one's last pair too -- against the dense answer."""
    from tvmred.torch import Genred

    f = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    x, y = torch.rand(37, 3, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64)
    b = torch.rand(n, 2, dtype=torch.float64)
    want = torch.exp(-(torch.cdist(x, y) ** 2)) @ b
    torch.testing.assert_close(f(x, y, b), want, rtol=1e-13, atol=1e-15)


def test_the_j_unroll_rule(monkeypatch):
    """Narrow float64 Sums are unrolled over j, wide ones (64 values a row: spills) and block
    sums (float32) are not."""
    from tvmred.schedules import cpu as cpu_schedule

    seen = []
    real = cpu_schedule._unrolled_j
    monkeypatch.setattr(cpu_schedule, "_unrolled_j", lambda s: seen.append(real(s)) or seen[-1])
    for formula, d, dtype, want in [
        ("Exp(-SqDist(x,y))*b", 3, "float64", True),
        ("SqDist(x,y)*b", 64, "float64", False),
        ("Exp(-SqDist(x,y))*b", 3, "float32", False),
    ]:
        al = [f"x = Vi({d})", f"y = Vj({d})", "b = Vj(1)"]
        r = make_reduction(formula, al, "Sum", 1, "auto")
        build.compile_reduction(r.spec(dtype), cpu_target())
        assert seen[-1] is want, (formula, d, dtype)
