"""
k-means with ``argmin``
=======================

Lloyd's algorithm on 100,000 points in 2D: each iteration assigns every point to its nearest
centroid, :math:`\\ell_i = \\arg\\min_k |x_i - c_k|^2` -- one ``argmin`` reduction of a
LazyTensor, the ``(N, K)`` distance matrix never stored -- then moves each centroid to the mean
of its points.  The script runs it with tvmred and with dense PyTorch from the same
initialisation, prints whether the labels agree and the timings, and saves
``lazy_kmeans.png``.
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

N, K, ITERS = 100_000, 50, 10
torch.manual_seed(0)
x = 0.7 * torch.randn(N, 2) + torch.randn(10, 2).repeat_interleave(N // 10, 0)


def kmeans(x: torch.Tensor, assign) -> tuple[torch.Tensor, torch.Tensor]:
    c = x[:K].clone()
    for _ in range(ITERS):
        labels = assign(x, c)
        counts = torch.bincount(labels, minlength=K).clamp(min=1)[:, None]
        c = torch.zeros_like(c).index_add_(0, labels, x) / counts
    return labels, c


def assign_lazy(x, c):
    return LazyTensor(x[:, None, :]).sqdist(LazyTensor(c[None, :, :])).argmin(dim=1).view(-1)


def assign_dense(x, c):
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)


res = {}
for name, assign in (("tvmred LazyTensor", assign_lazy), ("dense torch", assign_dense)):
    assign(x[:10], x[:K])  # warm-up (the first tvmred call compiles the kernel)
    t0 = time.perf_counter()
    res[name] = kmeans(x, assign)
    print(f"{name:18s} {ITERS} iterations: {time.perf_counter() - t0:6.3f} s")
(labels, c), (labels_d, c_d) = res.values()
same = (labels == labels_d).float().mean()
print(
    f"same labels as dense torch: {100 * same:.3f} %, max centroid difference {(c - c_d).abs().max():.1e}"
)
assert same > 0.999

fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(x[::10, 0], x[::10, 1], c=labels[::10], s=1, cmap="tab20")
ax.scatter(c[:, 0], c[:, 1], c="k", s=15)
ax.set_title(f"k-means, K = {K} (tvmred argmin)")
out = Path(__file__).with_suffix(".png")
fig.savefig(out, dpi=100)
print(f"saved {out}")
