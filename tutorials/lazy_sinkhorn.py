"""
A Sinkhorn loop with ``logsumexp``
==================================

Entropic optimal transport between two point clouds :math:`\\alpha = \\sum_i a_i \\delta_{x_i}`
and :math:`\\beta = \\sum_j b_j \\delta_{y_j}`, cost :math:`C_{ij} = |x_i - y_j|^2 / 2`: the
Sinkhorn iterations on the dual potentials, in the log domain,

.. math::

   f_i \\leftarrow -\\varepsilon \\log \\sum_j \\exp\\big(\\log b_j + (g_j - C_{ij}) / \\varepsilon\\big),
   \\qquad g_j \\leftarrow -\\varepsilon \\log \\sum_i \\exp\\big(\\log a_i + (f_i - C_{ij}) / \\varepsilon\\big),

are ``logsumexp`` reductions over j and over i of one LazyTensor formula (as in geomloss'
``online`` backend).  The script runs them with tvmred and with dense PyTorch, prints the OT
cost, the difference and the timings, and saves ``lazy_sinkhorn.png`` (the potentials and
the largest entries of the transport plan).
"""

import os
import time
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tvmred.torch import LazyTensor  # noqa: E402

N, M, EPS, ITERS = 2000, 2500, 0.01, 30
torch.manual_seed(0)
x = torch.randn(N, 2) * 0.5
y = torch.randn(M, 2) * 0.3 + torch.tensor([1.0, 0.0])
log_a, log_b = (
    torch.full((N,), -torch.log(torch.tensor(float(N)))),
    torch.full((M,), -torch.log(torch.tensor(float(M)))),
)


def sinkhorn_lazy(x, y, iters=ITERS):
    x_i, y_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    C = x_i.sqdist(y_j) / 2  # symbolic (N, M) cost
    f, g = torch.zeros(N), torch.zeros(M)
    for _ in range(iters):
        g_j, lb_j = LazyTensor(g[None, :, None]), LazyTensor(log_b[None, :, None])
        f = -EPS * (lb_j + (g_j - C) / EPS).logsumexp(dim=1).view(-1)
        f_i, la_i = LazyTensor(f[:, None, None]), LazyTensor(log_a[:, None, None])
        g = -EPS * (la_i + (f_i - C) / EPS).logsumexp(dim=0).view(-1)
    return f, g


def sinkhorn_dense(x, y, iters=ITERS):
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2
    f, g = torch.zeros(N), torch.zeros(M)
    for _ in range(iters):
        f = -EPS * torch.logsumexp(log_b[None, :] + (g[None, :] - C) / EPS, 1)
        g = -EPS * torch.logsumexp(log_a[:, None] + (f[:, None] - C) / EPS, 0)
    return f, g


res = {}
for name, fn in (("tvmred LazyTensor", sinkhorn_lazy), ("dense torch", sinkhorn_dense)):
    fn(x, y, iters=1)  # warm-up (the first tvmred calls compile the kernels)
    t0 = time.perf_counter()
    f, g = fn(x, y)
    print(f"{name:18s} {ITERS} Sinkhorn iterations: {time.perf_counter() - t0:6.2f} s")
    res[name] = (f, g)
(f, g), (fd, gd) = res.values()
cost, cost_d = f.mean() + g.mean(), fd.mean() + gd.mean()  # uniform weights a, b
print(f"OT cost <a,f> + <b,g>: tvmred {cost:.6f}, dense {cost_d:.6f}")
print(
    f"max |f - f_dense| = {(f - fd).abs().max():.1e}, max |g - g_dense| = {(g - gd).abs().max():.1e}"
)
assert (f - fd).abs().max() < 1e-3 and (g - gd).abs().max() < 1e-3

fig, ax = plt.subplots(figsize=(7, 4))
ax.scatter(x[:, 0], x[:, 1], c=f, s=2, cmap="viridis")
ax.scatter(y[:, 0], y[:, 1], c=g, s=2, cmap="magma")
# each x_i to the y_j of largest plan entry, pi_ij ~ exp((f_i + g_j - C_ij) / eps)
C_i = LazyTensor(x[:200, None, :]).sqdist(LazyTensor(y[None, :, :])) / 2
j = (C_i - LazyTensor(g[None, :, None])).argmin(dim=1).view(-1).tolist()
for i in range(0, 200, 4):
    ax.plot([x[i, 0], y[j[i], 0]], [x[i, 1], y[j[i], 1]], "k-", lw=0.3)
ax.set_title("Sinkhorn potentials f (left), g (right)")
out = Path(__file__).with_suffix(".png")
fig.savefig(out, dpi=100)
print(f"saved {out}")
