"""LazyTensor overhead: a LazyTensor reduction vs the same reduction through ``Genred``.

The issue's goal: on tiny inputs (M = N = 100), where the kernel costs little and Python is
most of the time, a LazyTensor reduction -- the LazyTensors built from the tensors on every
call, as in a training loop -- costs at most 1.5x a direct ``Genred`` call.  Both are timed in
one process, interleaved, best call of many.  Also a Sinkhorn step (``logsumexp``) against
dense torch.  Prints the machine description first.

    python benchmarks/bench_lazy.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_suite.py / README "Performance"
if "--threads" in sys.argv:  # TVM reads TVM_NUM_THREADS once: set it before importing tvmred
    os.environ["TVM_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402
from timing import min_time  # noqa: E402

from tvmred.torch import Genred, LazyTensor, Vi, Vj  # noqa: E402


def machine() -> str:
    m = timing.machine()
    return (
        f"{m['cpu']}, {m['cores']} CPUs, torch {m['torch']}, tvmred {m['tvmred']}, "
        f"TVM_NUM_THREADS={m['tvm_threads']}"
    )


def interleaved(fns: dict, rounds: int = 5, calls: int = 2000) -> dict:
    """Best call of each function, over ``rounds`` alternating blocks of ``calls`` calls."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], min_time(fn, calls, warmup=20, max_calls=calls))
    return best


def gaussian_overhead(n: int, grad: bool) -> None:
    """Gaussian convolution, the same formula both ways: the LazyTensor expression is built
    from the tensors on every call (as in a training loop), from views ``x[:, None, :]`` (the
    usual pykeops idiom: three torch views, squeezed back, six torch calls) or with ``Vi(x)``;
    "reduction only" reuses a built expression (``K.sum(dim=1)``)."""
    g = Genred("Exp(-Sum(Square(x-y)))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=1)
    x = torch.rand(n, 3, requires_grad=grad)
    y, b = torch.rand(n, 3), torch.rand(n, 1)

    def build():
        x_i, y_j, b_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None])
        return (-((x_i - y_j) ** 2).sum(-1)).exp() * b_j

    def build_vi():  # Vi(x) / Vj(y): no views of the tensors
        x_i, y_j, b_j = Vi(x), Vj(y), Vj(b)
        return (-((x_i - y_j) ** 2).sum(-1)).exp() * b_j

    K = build()

    def run(fn):
        if not grad:
            return fn
        return lambda: torch.autograd.grad(fn().sum(), x)

    assert torch.allclose(build().sum(dim=1), g(x, y, b))
    t = interleaved(
        {
            "genred": run(lambda: g(x, y, b)),
            "lazy": run(lambda: build().sum(dim=1)),
            "vi": run(lambda: build_vi().sum(dim=1)),
            "reduce": run(lambda: K.sum(dim=1)),
        }
    )
    what = "forward + grad" if grad else "forward"
    print(
        f"Gaussian conv M=N={n} D=3 float32, {what}: Genred {t['genred'] * 1e6:.1f} us, "
        f"LazyTensor(x[:, None, :]) {t['lazy'] * 1e6:.1f} us (ratio {t['lazy'] / t['genred']:.2f}, "
        f"goal <= 1.5), Vi(x) {t['vi'] * 1e6:.1f} us (ratio {t['vi'] / t['genred']:.2f}), "
        f"reduction only {t['reduce'] * 1e6:.1f} us (ratio {t['reduce'] / t['genred']:.2f})"
    )


def sinkhorn_step(n: int) -> None:
    """One softmin of geomloss' online backend: f_i = -eps log sum_j exp(h_j - |x_i-y_j|^2/2eps)."""
    x, y, h = torch.rand(n, 3), torch.rand(n, 3), torch.rand(n)
    eps = 0.05

    def lazy():
        x_i, y_j, h_j = (
            LazyTensor(x[:, None, :]),
            LazyTensor(y[None, :, :]),
            LazyTensor(h[None, :, None]),
        )
        c = ((x_i - y_j) ** 2).sum(-1) / 2
        return -eps * (h_j - c * torch.tensor([1 / eps])).logsumexp(1).view(-1)

    def dense():
        c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2
        return -eps * torch.logsumexp(h[None, :] - c / eps, 1)

    torch.testing.assert_close(lazy(), dense(), rtol=1e-4, atol=1e-4)
    t = interleaved({"lazy": lazy, "dense": dense}, rounds=3, calls=5)
    print(
        f"Sinkhorn softmin N=M={n} D=3 float32: LazyTensor {t['lazy'] * 1e3:.2f} ms, "
        f"dense torch {t['dense'] * 1e3:.2f} ms, dense / LazyTensor {t['dense'] / t['lazy']:.1f}x"
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=None, help="TVM_NUM_THREADS (default: torch's)")
    p.parse_args()
    print(machine())
    gaussian_overhead(100, grad=False)
    gaussian_overhead(100, grad=True)
    sinkhorn_step(5000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
