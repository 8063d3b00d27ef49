"""GPU timings (issue 5's acceptance cases), tvmred beside dense torch in one run.

Gaussian conv ``Exp(-SqDist(x,y))*b``, D=3, float32: M=N in {1e4, 1e5, 1e6} and M=1e3, N=1e6
(time per pair compared with the square case); the reference example forward and gradient.
Timed with CUDA events, min over repeats after a warm-up.  pykeops 2.3 is not run here: it
segfaults at its first GPU compile with CUDA 13.

    python benchmarks/bench_gpu.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cuda_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    return best


def main() -> int:
    from tvmred.torch import Genred

    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/gpu/bench_gpu.json")
    a = p.parse_args()
    dev = torch.device("cuda")
    rows = []
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"], axis=1)
    for M, N in [(10_000, 10_000), (100_000, 100_000), (1_000_000, 1_000_000), (1000, 1_000_000)]:
        x, y, b = (torch.rand(n, 3, device=dev) for n in (M, N, N))
        t = cuda_time(lambda: g(x, y, b), 3 if N >= 1e6 else 10)
        row = {"case": f"gauss D=3 M={M:g} N={N:g}", "tvmred_s": t, "ns_per_pair": t / M / N * 1e9}
        if M * N <= 1e8:
            row["torch_s"] = cuda_time(lambda: torch.exp(-(torch.cdist(x, y) ** 2)) @ b, 10)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ref = Genred(
        "Square(p-a)*Exp(x+y)", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"], axis=1
    )
    x, y, aa, pp = (torch.rand(*s, device=dev) for s in ((3000, 3), (5000, 3), (5000, 1), (1,)))
    y.requires_grad_()
    rows.append({"case": "reference forward", "tvmred_s": cuda_time(lambda: ref(x, y, aa, pp), 10)})
    c = ref(x, y, aa, pp)
    e = torch.rand_like(c)
    rows.append(
        {
            "case": "reference forward+grad y",
            "tvmred_s": cuda_time(lambda: torch.autograd.grad(ref(x, y, aa, pp), y, e), 10),
        }
    )
    for r in rows[-2:]:
        print(json.dumps(r), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
