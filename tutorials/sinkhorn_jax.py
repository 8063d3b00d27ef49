"""
Sinkhorn in JAX with ``jit`` and ``grad``
=========================================

Entropic optimal transport between two point clouds, cost :math:`C_{ij} = |x_i - y_j|^2`,
by log-domain Sinkhorn iterations on the dual potentials -- each a ``logsumexp`` reduction of
a ``tvmred.jax.LazyTensor`` formula, inside ``jax.jit`` -- and the gradient of the OT cost
with respect to the points x by ``jax.grad`` (the envelope theorem: one last differentiated
update, tvmred's symbolic gradients of two reductions).  Beside it, when ott-jax is installed, ott's ``PointCloud`` in
its online mode (the cost recomputed in batches, never stored) with the same number of
iterations; else dense ``jax.numpy``.  The script prints both costs, the gradient's
difference and the times.

    python tutorials/sinkhorn_jax.py
"""

import time

import jax
import jax.numpy as jnp

from tvmred.jax import LazyTensor

jax.config.update("jax_enable_x64", True)
N, M, EPS, ITERS = 2000, 2500, 0.05, 100
kx, ky = jax.random.split(jax.random.PRNGKey(0))
x = jax.random.normal(kx, (N, 2)) * 0.5
y = jax.random.normal(ky, (M, 2)) * 0.3 + jnp.array([1.0, 0.0])
log_a, log_b = jnp.full((N,), -jnp.log(N)), jnp.full((M,), -jnp.log(M))


def sinkhorn(x, y, C, lse):
    """ITERS log-domain Sinkhorn updates on the points held fixed (no derivative through the
    loop), then one last update of both potentials from the points themselves: the OT cost
    <a, f> + <b, g>, whose derivative w.r.t. the points is then the envelope theorem's (the
    gradient at the optimum, as geomloss and ott-jax's implicit differentiation give), for
    the cost of one extra iteration.  ``C(x, y)`` is the cost, ``lse(t, axis)`` the
    log-sum-exp over the axis (the LazyTensor and dense versions below)."""

    def T(pot, logw, Cxy, axis):  # -eps LSE over `axis` of log w + (pot - C) / eps
        i = (slice(None), None, None) if axis == 0 else (None, slice(None), None)
        return -EPS * lse(logw[i] + (pot[i] - Cxy) / EPS, axis)

    def update(f, g, Cxy):
        f = T(g, log_b, Cxy, 1)
        return f, T(f, log_a, Cxy, 0)

    C0 = C(jax.lax.stop_gradient(x), jax.lax.stop_gradient(y))
    f, g = jax.lax.fori_loop(0, ITERS, lambda _, fg: update(*fg, C0), (jnp.zeros(N), jnp.zeros(M)))
    Cxy = C(x, y)
    return T(g, log_b, Cxy, 1).mean() + T(f, log_a, Cxy, 0).mean()


def sinkhorn_cost(x, y):  # tvmred: C a symbolic (N, M) LazyTensor, never stored
    def C(x, y):
        return LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))

    def lse(t, axis):  # t: a LazyTensor; arrays broadcast into it become LazyTensors
        return t.logsumexp(dim=axis)[:, 0]

    return sinkhorn(x, y, C, lse)


def sinkhorn_cost_dense(x, y):  # the reference: the (N, M) matrix in memory
    def C(x, y):
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1, keepdims=True)

    return sinkhorn(x, y, C, lambda t, axis: jax.scipy.special.logsumexp(t, axis)[:, 0])


def ott_cost(x, y, batch_size=512):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = pointcloud.PointCloud(x, y, epsilon=EPS, batch_size=batch_size)  # online: batches
    solver = sinkhorn.Sinkhorn(min_iterations=ITERS, max_iterations=ITERS, threshold=-1.0,
                               inner_iterations=1)  # fmt: skip
    return solver(linear_problem.LinearProblem(geom)).reg_ot_cost


try:
    import jax._src.interpreters.batching as _batching
    import jax.interpreters.batching
    import ott  # noqa: F401

    # ott-jax 0.6's online mode calls jax.interpreters.batching.is_vmappable, which jax 0.10
    # removed from that public module; jax's own function is still there, under jax._src
    if not hasattr(jax.interpreters.batching, "is_vmappable"):
        jax.interpreters.batching.is_vmappable = _batching.is_vmappable
    other, other_name = ott_cost, "ott-jax PointCloud (online)"
except ImportError:
    other, other_name = sinkhorn_cost_dense, "dense jax.numpy (ott-jax is not installed)"


def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile (XLA and, the first time, tvmred's kernels)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


value_and_grad = jax.jit(jax.value_and_grad(sinkhorn_cost))
(cost, grad), t_ours = timed(value_and_grad, x, y)
(cost_o, grad_o), t_other = timed(jax.jit(jax.value_and_grad(other)), x, y)
(cost_d, grad_d), _ = timed(jax.jit(jax.value_and_grad(sinkhorn_cost_dense)), x, y)
print(f"{ITERS} Sinkhorn iterations + gradient w.r.t. x, N = {N}, M = {M}, eps = {EPS}")
print(f"tvmred.jax LazyTensor        : cost {float(cost):.8f}  {t_ours:6.2f} s")
print(f"{other_name:29s}: cost {float(cost_o):.8f}  {t_other:6.2f} s  "
      f"({t_other / t_ours:.1f}x tvmred's time)")  # fmt: skip
print(f"gradient vs dense jax.numpy: max |difference| {float(jnp.abs(grad - grad_d).max()):.1e}")
assert abs(float(cost) - float(cost_d)) < 1e-8 and float(jnp.abs(grad - grad_d).max()) < 1e-6
