"""Each reduction's state combine (``RedDef.combine``): the reduced index split into ranges,
one kernel call per range, the partial states combined, then finalized -- against the dense
float64 references of test_reductions and, with many ties, inf and NaN, against one kernel
call over all the rows."""

import pytest
import torch
from test_reductions import ALL, check, data, dense, routine

from tvmred.launch import run_states
from tvmred.torch import Genred


def split_call(r, args, cuts, order=None):
    """(finalized output, combined states) of ``r`` with the reduced rows cut at ``cuts``."""
    red_cat = 1 - r.out_cat
    n_red = next(a.shape[0] for a, v in zip(args, r.args) if v.params[2] == red_cat)
    bounds = list(zip([0, *cuts], [*cuts, n_red]))
    parts = []
    for lo, hi in bounds:
        sub = [a[lo:hi] if v.params[2] == red_cat else a for a, v in zip(args, r.args)]
        _, states = run_states(r, sub)
        parts.append(r.rdef.shift(states, r.k, lo))
    if order is not None:
        parts = [parts[p] for p in order]
    stacked = [torch.stack(s) for s in zip(*parts)]
    acc, variant = r.resolve(str(args[0].dtype).removeprefix("torch."))
    combined = r.rdef.combine(stacked, variant)
    return r.rdef.finalize(combined, variant, args[0].dtype), combined


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", ALL)
def test_combined_ranges_match_the_dense_reference(red, axis, dtype, tol):
    x, y, b = data(dtype)
    r = routine(red, axis).reduction
    got, _ = split_call(r, [x, y, b], [13, 13, 41])  # an empty range among them
    check(got, dense(red, x, y, b, axis), tol)


def tie_problem(axis, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (23, 1), generator=g).to(dtype)
    y = torch.randint(0, 9, (300, 1), generator=g).to(dtype)
    y[torch.randperm(300, generator=g)[:20]] = float("inf")
    y[torch.randperm(300, generator=g)[:3]] = float("nan")
    if axis == 0:
        return ["x = Vj(1)", "y = Vi(1)"], [x, y]
    return ["x = Vi(1)", "y = Vj(1)"], [x, y]


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("red,k", [("Min_ArgMin", None), ("Max_ArgMax", None), ("KMin_ArgKMin", 5)])
def test_ties_inf_nan_as_one_call(red, k, axis, dtype):
    """Equal values keep the lowest index and NaN propagates, exactly as in one kernel call."""
    al, args = tie_problem(axis, dtype)
    r = Genred("Abs(x-y)", al, reduction_op=red, axis=axis, opt_arg=k).reduction
    whole = run_states(r, args)[0]
    got, _ = split_call(r, args, [7, 100, 101, 250])
    for a, b in zip(got, whole):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_range_order_matters():
    """The ties test discriminates: combining the ranges in reverse order (a wrong combine)
    picks other indices among equal values."""
    al, args = tie_problem(1, torch.float64)
    r = Genred("Abs(x-y)", al, reduction_op="KMin_ArgKMin", axis=1, opt_arg=5).reduction
    whole = run_states(r, args)[0]
    shuffled, _ = split_call(r, args, [7, 100, 101, 250], order=[4, 3, 2, 1, 0])
    assert not torch.equal(shuffled[1], whole[1])
