"""Sums of many terms (squared distances, dot products, Sum of a vector) built as the target's
count of interleaved chains (``TargetTemplate.sum_chains``, ``tvmred.ops.sum_chains``): the
shape of the sum for each count, that a compile uses its template's count, and the values of
wide float32 kernels against float64 torch."""

import math

import pytest
import torch

from tvmred import build, ops, schedules
from tvmred.frontend import make_reduction
from tvmred.targets import cpu_target
from tvmred.torch import Genred


class Term:
    """A term that knows its value and the longest chain of additions that produced it."""

    def __init__(self, value: float, depth: int = 0):
        self.value, self.depth = value, depth

    def __add__(self, other: "Term") -> "Term":
        return Term(self.value + other.value, max(self.depth, other.depth) + 1)


@pytest.mark.parametrize("d", [1, 3, 8, 64, 100])
@pytest.mark.parametrize("count", [1, 4, 16, 64])
def test_a_sum_is_count_chains_added_pairwise(d, count):
    terms = [Term(float(k + 1)) for k in range(d)]
    with ops.sum_chains(count):
        (total,) = ops._sum_te([terms], (), "float32")
    assert total.value == d * (d + 1) / 2
    chains = min(count, d)
    longest = math.ceil(d / chains) - 1  # additions along the longest chain
    assert total.depth == longest + math.ceil(math.log2(chains))


def test_the_count_is_restored_after_the_block():
    before = ops.SUM_CHAINS.get()
    with ops.sum_chains(before + 7):
        assert ops.SUM_CHAINS.get() == before + 7
    assert ops.SUM_CHAINS.get() == before


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_compile_builds_its_sums_with_the_templates_count(monkeypatch, dtype):
    seen = []
    real = ops._sum_te
    monkeypatch.setattr(ops, "_sum_te", lambda *a: seen.append(ops.SUM_CHAINS.get()) or real(*a))
    r = make_reduction("Exp(-SqDist(x,y))*b", ["x=Vi(64)", "y=Vj(64)", "b=Vj(1)"], "Sum", 1, "auto")
    build.compile_reduction(r.spec(dtype), cpu_target())
    want = schedules.template("llvm").sum_chains(dtype)
    assert seen and set(seen) == {want}
    # GPU: chains for a thread's one pair at a time, one chain in a block of independent pairs
    assert schedules.template("cuda").sum_chains(dtype, 0) == 4
    assert schedules.template("cuda").sum_chains(dtype, 16) == 1


@pytest.mark.parametrize(
    "formula,d",
    [("Exp(-SqDist(x,y))*b", 64), ("Exp(-SqDist(x,y))*b", 130), ("Exp((x|y)*g)*b", 64)],
)
def test_wide_float32_sums_against_float64(formula, d):
    g = torch.Generator().manual_seed(d)
    x = torch.rand(300, d, generator=g, dtype=torch.float64) / d**0.5
    y = torch.rand(401, d, generator=g, dtype=torch.float64) / d**0.5
    b = torch.randn(401, 2, generator=g, dtype=torch.float64)
    gam = torch.tensor([0.25], dtype=torch.float64)
    names = [f"x = Vi({d})", f"y = Vj({d})", "b = Vj(2)", "g = Pm(1)"]
    args = [x, y, b, gam] if "g" in formula.replace("Sq", "") else [x, y, b]
    fn = Genred(formula, names[: len(args)], reduction_op="Sum", axis=1)
    got = fn(*[a.float() for a in args]).double()
    if "SqDist" in formula:
        want = torch.exp(-(torch.cdist(x, y) ** 2)) @ b
    else:
        want = torch.exp((x @ y.T) * gam) @ b
    bound = 1.3 * float(b.abs().sum(0).max())  # every term's exponential is below 1.3
    assert torch.allclose(got, want, rtol=0, atol=2e-6 * bound)
