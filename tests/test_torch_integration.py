"""torch integration: the ``tvmred::reduce`` custom op (``torch.library.opcheck``),
``torch.compile(fullgraph=True, dynamic=True)`` through LazyTensor and Genred reductions and
their backward, ``torch.func`` transforms (vmap, grad, jacrev, jvp, jacfwd, hessian) and
forward-mode derivatives of every differentiable reduction, against dense torch."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_reductions import DIFFERENTIABLE, data, dense, routine
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

from tvmred.torch import Genred, LazyTensor
from tvmred.torch.library import REGISTRY, key_of

F64 = torch.float64
GAUSS = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)


def gauss_dense(x, y, b):
    return torch.exp(-((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)) @ b


def gauss_lazy(x, y, b):
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None])
    return ((-((x_i - y_j) ** 2).sum(-1)).exp() * b_j).sum(dim=1)


def xyb(M=6, N=8):
    return torch.rand(M, 3, dtype=F64), torch.rand(N, 3, dtype=F64), torch.rand(N, 2, dtype=F64)


@pytest.mark.parametrize(
    "red", ["Sum", "Min_ArgMin", "KMin", "LogSumExpWeight", "SumSoftMaxWeight"]
)
def test_opcheck(red):
    r = routine(red, 1).reduction
    res = torch.library.opcheck(torch.ops.tvmred.reduce.default, (key_of(r), data(M=5, N=7)))
    assert all(v == "SUCCESS" for v in res.values()), res


def test_keys_rebuild_their_reduction_in_any_process():
    r = GAUSS.reduction
    key = key_of(r)
    del REGISTRY[key]  # as in a process that loads a compiled graph from torch's cache
    x, y, b = xyb()
    (out,) = torch.ops.tvmred.reduce(key, [x, y, b])
    torch.testing.assert_close(out, gauss_dense(x, y, b))
    with pytest.raises(KeyError, match="not a reduction key"):
        torch.ops.tvmred.reduce("bogus", [x, y, b])


def loss(x, y, b):
    """Two LazyTensor reductions (one with a float parameter) and a Genred call."""
    x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None])
    K = (-((x_i - y_j) ** 2).sum(-1) * 0.5).exp()
    lse = (x_i.sqdist(y_j) - b_j[0]).logsumexp(dim=1)
    return ((K * b_j).sum(dim=1) ** 2).sum() + lse.sum() + GAUSS(x, y, b).sum()


def test_compile_fullgraph_dynamic_forward_and_backward():
    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss)(*xyb())
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for M, N in ((6, 8), (9, 5)):  # a second size: dynamic shapes, no recompilation needed
        x, y, b = xyb(M, N)
        x.requires_grad_()
        got = compiled(x, y, b)
        (g,) = torch.autograd.grad(got, x)
        want = loss(x, y, b)
        (w,) = torch.autograd.grad(want, x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g, w)


def kernel_times_tensor(x, y, b):
    """pykeops' ``K @ b``: a LazyTensor times a torch tensor, and ``t * K`` / ``K * t``."""
    K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
    two = torch.full((1,), 2.0, dtype=x.dtype)
    return (K @ b).sum() + (two * K).sum(dim=1).sum() + (K * two).sum(dim=1).sum()


@pytest.mark.parametrize("dynamic", [False, True])
def test_lazytensor_times_tensor_in_a_full_graph(dynamic):
    torch._dynamo.reset()
    x, y, b = xyb()
    x.requires_grad_()
    got = torch.compile(kernel_times_tensor, fullgraph=True, dynamic=dynamic)(x, y, b)
    K = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1))
    want = (K @ b).sum() + 4 * K.sum()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])
    with pytest.raises(TypeError):  # a tensor times a LazyTensor: not a LazyTensor operation
        b.T @ LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))


@pytest.mark.slow  # two fresh processes compiling (about a minute)
def test_compiled_graph_from_the_cache_in_a_new_process(tmp_path):
    """A fresh process loading the compiled forward and backward graphs from torch's on-disk
    caches finds the gradient reductions by their keys (it never traced them)."""
    script = textwrap.dedent(
        """
        import torch
        from tvmred.torch import LazyTensor
        def f(x, y):
            return (-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))).exp().sum(dim=1).sum()
        x, y = torch.rand(5, 3, dtype=torch.float64, requires_grad=True), torch.rand(7, 3, dtype=torch.float64)
        (g,) = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, y), x)
        (w,) = torch.autograd.grad(f(x, y), x)
        torch.testing.assert_close(g, w)
        print("ok")
        """
    )
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("impl", ["genred", "lazy"])
def test_torch_func_transforms(impl):
    fn = (lambda x, y, b: GAUSS(x, y, b)) if impl == "genred" else gauss_lazy
    x, y, b = xyb()
    torch.testing.assert_close(
        grad(lambda x: fn(x, y, b).sum())(x), grad(lambda x: gauss_dense(x, y, b).sum())(x)
    )
    torch.testing.assert_close(
        jacrev(lambda y: fn(x, y, b))(y), jacrev(lambda y: gauss_dense(x, y, b))(y)
    )
    torch.testing.assert_close(
        jacfwd(lambda b: fn(x, y, b))(b), jacfwd(lambda b: gauss_dense(x, y, b))(b)
    )
    t = torch.randn_like(x)
    torch.testing.assert_close(
        jvp(lambda x: fn(x, y, b), (x,), (t,))[1],
        jvp(lambda x: gauss_dense(x, y, b), (x,), (t,))[1],
    )
    torch.testing.assert_close(
        hessian(lambda x: fn(x, y, b).sum())(x), hessian(lambda x: gauss_dense(x, y, b).sum())(x)
    )
    xs = torch.rand(4, 6, 3, dtype=F64)
    torch.testing.assert_close(vmap(lambda x: fn(x, y, b))(xs), gauss_dense(xs, y, b))
    ys = torch.rand(8, 3, 4, dtype=F64)  # batched along dim 2
    torch.testing.assert_close(
        vmap(lambda y: fn(x, y, b), in_dims=2)(ys), gauss_dense(x, ys.movedim(2, 0), b)
    )
    gv = vmap(grad(lambda x, y: fn(x, y, b).sum()))(xs, ys.movedim(2, 0))
    gd = vmap(grad(lambda x, y: gauss_dense(x, y, b).sum()))(xs, ys.movedim(2, 0))
    torch.testing.assert_close(gv, gd)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", DIFFERENTIABLE + ["ArgKMin"])
def test_forward_mode_every_reduction(red, axis):
    ts = data()
    tangents = tuple(torch.randn_like(t) for t in ts)
    r = routine(red, axis)
    _, got = jvp(lambda *a: r(*a), tuple(ts), tangents)
    _, want = jvp(lambda *a: dense(red, *a, axis), tuple(ts), tangents)
    got, want = (got[0], want[0]) if isinstance(want, tuple) else (got, want)
    if want.dtype == torch.int64:
        assert not got.is_floating_point()  # index outputs carry no tangent
        return
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_forward_mode_unsupported_reduction_says_so():
    ts = data()
    r = routine("Max_SumShiftExp", 1)
    with pytest.raises(NotImplementedError, match="Max_SumShiftExp has no forward-mode"):
        jvp(lambda *a: r(*a), tuple(ts), tuple(torch.randn_like(t) for t in ts))
