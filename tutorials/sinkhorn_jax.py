"""
Sinkhorn in JAX with ``jit`` and ``grad``
=========================================

Entropic optimal transport between two point clouds, cost :math:`C_{ij} = |x_i - y_j|^2`,
by log-domain Sinkhorn iterations on the dual potentials -- each a ``logsumexp`` reduction of
a ``tvmred.jax.LazyTensor`` formula, inside ``jax.jit`` -- and the gradient of the OT cost
with respect to the points x by ``jax.grad`` (through the iterations: tvmred's symbolic
gradients of each reduction).  Beside it, when ott-jax is installed, ott's ``PointCloud`` in
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


def sinkhorn_cost(x, y):
    x_i, y_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    C = x_i.sqdist(y_j)  # symbolic (N, M) cost

    def step(_, fg):
        f, g = fg
        f = -EPS * (LazyTensor(log_b[None, :, None]) + (LazyTensor(g[None, :, None]) - C) / EPS
                    ).logsumexp(dim=1)[:, 0]  # fmt: skip
        g = -EPS * (LazyTensor(log_a[:, None, None]) + (LazyTensor(f[:, None, None]) - C) / EPS
                    ).logsumexp(dim=0)[:, 0]  # fmt: skip
        return f, g

    f, g = jax.lax.fori_loop(0, ITERS, step, (jnp.zeros(N), jnp.zeros(M)))
    return f.mean() + g.mean()


def sinkhorn_cost_dense(x, y):
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    lse = jax.scipy.special.logsumexp

    def step(_, fg):
        f, g = fg
        f = -EPS * lse(log_b[None, :] + (g[None, :] - C) / EPS, 1)
        g = -EPS * lse(log_a[:, None] + (f[:, None] - C) / EPS, 0)
        return f, g

    f, g = jax.lax.fori_loop(0, ITERS, step, (jnp.zeros(N), jnp.zeros(M)))
    return f.mean() + g.mean()


def ott_cost(x, y, batch_size=512):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = pointcloud.PointCloud(x, y, epsilon=EPS, batch_size=batch_size)  # online: batches
    solver = sinkhorn.Sinkhorn(min_iterations=ITERS, max_iterations=ITERS, threshold=-1.0,
                               inner_iterations=1)  # fmt: skip
    return solver(linear_problem.LinearProblem(geom)).reg_ot_cost


try:
    import ott  # noqa: F401

    other, other_name = ott_cost, "ott-jax PointCloud (online)"
    try:
        jax.eval_shape(jax.value_and_grad(ott_cost), x, y)
    except AttributeError as e:  # ott-jax 0.6's online mode calls an API jax 0.10 removed
        print(f"ott-jax's online PointCloud fails with this jax ({e}); its dense one instead")
        other, other_name = lambda x, y: ott_cost(x, y, None), "ott-jax PointCloud (dense)"
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
