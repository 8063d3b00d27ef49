"""The per-call path of a compiled reduction: the argument check remembered per call
signature (class, dtype, shape, device) must answer exactly as the full check, and the
zero padding of output rows to whole row blocks must not change a value."""

import numpy as np
import pytest
import torch

from tvmred import launch
from tvmred.arrays import Numpy, Torch
from tvmred.numpy import Genred as NumpyGenred
from tvmred.torch import Genred

FORMULA = "Exp(-SqDist(x,y))*b"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]


def dense(x, y, b):
    x, y, b = (t.double() for t in (x, y, b))
    return torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b


def test_a_remembered_check_still_refuses_what_the_full_check_refuses():
    g = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    x, y, b = torch.randn(7, 3), torch.randn(9, 3), torch.randn(9, 2)
    torch.testing.assert_close(g(x, y, b).double(), dense(x, y, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="same dtype"):
        g(x, y, b.double())  # one dtype differs from the remembered call's
    with pytest.raises(ValueError, match="inconsistent N"):
        g(x, y, torch.randn(8, 2))  # one shape differs
    with pytest.raises(ValueError, match="has shape"):
        g(x, y, torch.randn(9, 3))
    with pytest.raises(TypeError, match="must be a tensor"):
        g(x, y, b.tolist())
    with pytest.raises(ValueError, match="takes 3 arguments"):
        g(x, y)
    # refusals are not remembered: the same call raises again
    with pytest.raises(TypeError, match="same dtype"):
        g(x, y, b.double())


def test_the_remembered_checks_are_bounded_and_answer_per_signature():
    g = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    r = g.reduction
    for m in range(1, 2 * launch.CHECKS + 3):
        x, y, b = torch.randn(m, 3), torch.randn(m + 1, 3), torch.randn(m + 1, 2)
        assert launch.check_args(r, (x, y, b)) == ("float32", m, m + 1)
        assert launch.check_args(r, (x.double(), y.double(), b.double())) == ("float64", m, m + 1)
    assert 0 < len(r.memo["checked"]) <= launch.CHECKS
    x, y, b = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5, 2)
    torch.testing.assert_close(g(x, y, b).double(), dense(x, y, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ns", [Torch, Numpy])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_pad_rows_adds_zero_rows_after_the_data(ns, dtype):
    data = np.arange(1, 16, dtype=dtype).reshape(5, 3)
    a = torch.from_numpy(data) if ns is Torch else data
    p = ns.pad_rows(a, 12)
    got = np.asarray(p)
    assert got.shape == (12, 3) and got.dtype == data.dtype
    np.testing.assert_array_equal(got[:5], data)
    np.testing.assert_array_equal(got[5:], np.zeros((7, 3), dtype))
    assert ns.data_ptr(p) % 64 == 0  # the kernels load with aligned SIMD loads


@pytest.mark.parametrize("m", [1, 31, 33, 100])
def test_rows_padded_to_whole_blocks_do_not_leak_into_the_result(m):
    g = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    x, y, b = torch.randn(m, 3), torch.randn(50, 3), torch.randn(50, 2)
    torch.testing.assert_close(g(x, y, b).double(), dense(x, y, b), rtol=1e-5, atol=1e-5)
    gn = NumpyGenred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    got = gn(x.numpy(), y.numpy(), b.numpy())
    np.testing.assert_allclose(got, dense(x, y, b).numpy(), rtol=1e-5, atol=1e-5)
