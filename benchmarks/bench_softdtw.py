"""Soft-DTW between every pair of two sets of time series: tvmred's loop operation beside
pykeops 2.3 and a dense torch evaluation of the recursion, in one process.

``K_ij = SoftDTW_SqDist(x_i, y_j, gamma)``, reduced ``sum_j K_ij b_j`` (forward) and its
gradient w.r.t. x, y and gamma (backward), float32 unless ``--dtype float64``, for series of
lengths n = m in ``--lengths``.  pykeops 2.3 has no gradient in gamma: its backward is timed
w.r.t. x and y, tvmred's both ways.  Every answer is first checked against the dense torch
evaluation (float64): a wrong one stops the benchmark.  Each line prints milliseconds and the
ratios pykeops / tvmred and dense / tvmred; results go to ``--out``.

    python benchmarks/bench_softdtw.py [--pairs 1e6] [--lengths 8 32 64] [--out PATH]

M = N = sqrt(pairs x 64 / n^2): the same number of cells for every length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_suite.py / README "Performance"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import machine, min_time  # noqa: E402

from tvmred.torch import Genred  # noqa: E402


def dense(x, y, b, gamma):
    """sum_j softdtw(x_i, y_j) b_j with torch on the (M, N) grid, the recursion's cells in turn
    (its memory: a few (M, N) tensors per cell of a column)."""
    n, m = x.shape[1], y.shape[1]
    prev = None  # r[:, :, j - 1] for the cells of column j - 1
    for j in range(m):
        col = []
        for i in range(n):
            d = (x[:, None, i] - y[None, :, j]) ** 2
            if i == 0 and j == 0:
                r = d
            elif j == 0:
                r = d + col[i - 1]
            elif i == 0:
                r = d + prev[0]
            else:
                stack = torch.stack([prev[i - 1], prev[i], col[i - 1]])
                r = d - gamma * torch.logsumexp(-stack / gamma, 0)
            col.append(r)
        prev = col
    return prev[n - 1] @ b


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=float, default=1e6, help="pairs at n = m = 8")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "softdtw_cpu.json"))
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dt = getattr(torch, a.dtype)
    try:
        from pykeops.torch import Genred as KGenred  # type: ignore
    except ImportError:
        KGenred = None
        print("pykeops not installed: tvmred and dense torch only")
    rows = []
    for length in a.lengths:
        a.m = a.n = int((a.pairs * 64 / length**2) ** 0.5)
        g = torch.Generator().manual_seed(length)
        x = torch.randn(a.m, length, generator=g, dtype=torch.float64)
        y = torch.randn(a.n, length, generator=g, dtype=torch.float64)
        b = torch.rand(a.n, 1, generator=g, dtype=torch.float64)
        gam = torch.tensor([0.5], dtype=torch.float64)
        formula = "SoftDTW_SqDist(x,y,g)*b"
        aliases = [f"x = Vi({length})", f"y = Vj({length})", "g = Pm(1)", "b = Vj(1)"]
        sub = min(200, a.m)  # rows checked, and timed densely (scaled to all rows)
        ref = dense(x[:sub], y, b, gam)
        xs, ys, bs, gs = (t.to(dt).requires_grad_() for t in (x, y, b, gam))
        row = {"length": length, "cells": length * length, "m": a.m, "n": a.n, "dtype": a.dtype}
        tv = Genred(formula, aliases, axis=1)
        out = tv(xs, ys, gs, bs)
        err = ((out[:sub].double() - ref).abs().max() / ref.abs().max()).item()
        if err > (1e-4 if dt == torch.float32 else 1e-10):
            raise SystemExit(f"tvmred, length {length}: WRONG answer (relative error {err:.1e})")
        e = torch.rand_like(out)
        row["tvmred_fwd"] = min_time(lambda: tv(xs, ys, gs, bs), 3)
        row["tvmred_bwd_xy"] = min_time(
            lambda: torch.autograd.grad(tv(xs, ys, gs, bs), [xs, ys], e), 3
        )
        row["tvmred_bwd_xyg"] = min_time(
            lambda: torch.autograd.grad(tv(xs, ys, gs, bs), [xs, ys, gs], e), 3
        )
        if KGenred is not None:
            pk = KGenred(formula, aliases, axis=1)
            gk = gs.detach()  # pykeops raises if gamma requires a gradient
            out = pk(xs, ys, gk, bs, backend="CPU")
            # pykeops 2.3's CPU code for SoftDTW_SqDist is wrong for sequences of 2 or more
            # values (its generated loop over i shadows the reduction's i in the variables'
            # addresses): its error is recorded and its time printed, marked WRONG
            row["pykeops_error"] = ((out[:sub].double() - ref).abs().max() / ref.abs().max()).item()
            row["pykeops_fwd"] = min_time(lambda: pk(xs, ys, gk, bs, backend="CPU"), 3)
            row["pykeops_bwd_xy"] = min_time(
                lambda: torch.autograd.grad(pk(xs, ys, gk, bs, backend="CPU"), [xs, ys], e), 3
            )
        xd = x[:sub].to(dt)
        row["dense_fwd"] = (
            min_time(lambda: dense(xd, ys.detach(), bs.detach(), gam.to(dt)), 1) * a.m / sub
        )
        rows.append(row)
        ms = {k: v * 1e3 for k, v in row.items() if isinstance(v, float)}
        line = f"n = m = {length:3d}, M = N = {a.m}: tvmred fwd {ms['tvmred_fwd']:9.1f} ms, bwd (x, y) {ms['tvmred_bwd_xy']:9.1f} ms, (x, y, gamma) {ms['tvmred_bwd_xyg']:9.1f} ms"
        if "pykeops_fwd" in ms:
            wrong = row["pykeops_error"] > (1e-4 if dt == torch.float32 else 1e-10)
            line += (
                f" | pykeops fwd {ms['pykeops_fwd']:9.1f} ms ({row['pykeops_fwd'] / row['tvmred_fwd']:.1f}x),"
                f" bwd (x, y) {ms['pykeops_bwd_xy']:9.1f} ms ({row['pykeops_bwd_xy'] / row['tvmred_bwd_xy']:.1f}x)"
                + (f" WRONG (error {row['pykeops_error']:.1e})" if wrong else "")
            )
        line += f" | dense torch fwd {ms['dense_fwd']:9.1f} ms ({row['dense_fwd'] / row['tvmred_fwd']:.1f}x)"
        print(line, flush=True)
    Path(a.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
