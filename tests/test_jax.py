"""tvmred.jax: every reduction kind's values and gradients against dense float64 references,
under jit, grad (second order included), vmap, and a jitted training step calling tvmred
twice; skipped without jax."""

import numpy as np
import pytest
import torch
from test_reductions import ALL, DIFFERENTIABLE, dense
from test_reductions import routine as reductions_routine

jax = pytest.importorskip("jax", reason="jax is not installed (optional binding)")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

from tvmred.jax import Genred  # noqa: E402


def routine(red, axis):
    return reductions_routine(red, axis, Genred)


def data(M=30, N=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((M, 3)), rng.random((N, 3)), rng.random((N, 2))]


def reference(red, arrays, axis):
    out = dense(red, *(torch.from_numpy(a) for a in arrays), axis)
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", ALL)
def test_values(red, axis):
    arrays = data()
    got = routine(red, axis)(*map(jnp.asarray, arrays))
    want = reference(red, arrays, axis)
    for g, w in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
        if w.dtype == np.int64:
            assert g.dtype == jnp.int64 and (np.asarray(g) == w).all()
        else:
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_gradients(red):
    arrays = data()
    r = routine(red, 1)
    w0 = reference(red, arrays, 1)
    e = np.random.default_rng(1).standard_normal((w0[0] if isinstance(w0, tuple) else w0).shape)

    def loss(*a):
        out = r(*a)
        out = out[0] if isinstance(out, tuple) else out
        return (out * e).sum()

    got = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, arrays))
    ts = [torch.from_numpy(a).requires_grad_() for a in arrays]
    want = dense(red, *ts, 1)
    want = want[0] if isinstance(want, tuple) else want
    ref = torch.autograd.grad((want * torch.from_numpy(e)).sum(), ts, allow_unused=True)
    for g, w, a in zip(got, ref, arrays):
        w = np.zeros_like(a) if w is None else w.numpy()
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-11)


def gauss_dense(x, y, b):
    return jnp.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b


G = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)


def test_jit_second_order_and_vmap():
    x, y, b = map(jnp.asarray, data())

    def loss(f):
        return lambda x, y, b: (f(x, y, b) ** 2).sum()

    np.testing.assert_allclose(jax.jit(G.__call__)(x, y, b), gauss_dense(x, y, b), rtol=1e-12)
    h = jax.grad(lambda x: jax.grad(loss(G))(x, y, b).sum())(x)
    hr = jax.grad(lambda x: jax.grad(loss(gauss_dense))(x, y, b).sum())(x)
    np.testing.assert_allclose(h, hr, rtol=1e-9, atol=1e-10)
    xs = jnp.stack([x, 0.5 * x, x + 1])
    np.testing.assert_allclose(
        jax.vmap(lambda x: G(x, y, b))(xs), jax.vmap(lambda x: gauss_dense(x, y, b))(xs),
        rtol=1e-12,
    )  # fmt: skip


def test_a_jitted_training_step_calling_tvmred_twice():
    x, y, b = map(jnp.asarray, data())
    lse = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="LogSumExp", axis=1)

    def loss(x, y, b, gauss, soft):
        return (gauss(x, y, b) ** 2).sum() + soft(x, y).sum()

    def soft_dense(x, y):
        return jax.scipy.special.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1), 1)[:, None]

    @jax.jit
    def step(x):
        return x - 0.01 * jax.grad(loss)(x, y, b, G, lse)

    def step_dense(x):
        return x - 0.01 * jax.grad(loss)(x, y, b, gauss_dense, soft_dense)

    np.testing.assert_allclose(step(step(x)), step_dense(step_dense(x)), rtol=1e-10)


def test_errors():
    x, y, b = map(jnp.asarray, data())
    with pytest.raises(TypeError, match="dtype int32"):
        G(x.astype(jnp.int32), y, b)
    with pytest.raises(ValueError, match=r"argument 'y'.*shape \(40, 2\)"):
        G(x, y[:, :2], b)
    with pytest.raises(NotImplementedError, match="ranges"):
        G(x, y, b, ranges=(1, 2))


def test_lazytensor_under_jit_and_grad():
    from tvmred.jax import LazyTensor

    x, y, b = map(jnp.asarray, data())

    def lazy(x, y, b):
        X, Y, B = LazyTensor(x[:, None]), LazyTensor(y[None]), LazyTensor(b[None])
        return ((-((X - Y) ** 2).sum(-1)).exp() * B).sum(1)

    def soft(x, y):
        return (-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None])) / 0.1).logsumexp(1)

    def soft_dense(x, y):
        return jax.scipy.special.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) / 0.1, 1)

    np.testing.assert_allclose(jax.jit(lazy)(x, y, b), gauss_dense(x, y, b), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(soft)(x, y)[:, 0], soft_dense(x, y), rtol=1e-12)
    g = jax.grad(lambda x: (lazy(x, y, b) ** 2).sum() + soft(x, y).sum())(x)
    w = jax.grad(lambda x: (gauss_dense(x, y, b) ** 2).sum() + soft_dense(x, y).sum())(x)
    np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def test_float16():
    x, y, b = (jnp.asarray(a, dtype=jnp.float16) for a in data())
    out = G(x, y, b)
    assert out.dtype == jnp.float16
    ref = np.asarray(gauss_dense(*(a.astype(jnp.float64) for a in (x, y, b))))
    err = np.abs(np.asarray(out, dtype=np.float64) - ref)
    assert (err <= 2.0**-11 * np.abs(ref) + 2e-5 * np.abs(ref).max()).all()
