"""Block-sparse reductions: time falls with the fraction of cluster pairs kept.

Gaussian convolution ``Exp(-SqDist(x,y)/s)*b`` on N = M = 20,000 points in the unit square,
sorted into grid clusters; the ``ranges`` keep the cluster pairs whose centroids are within a
radius, for several radii.  Each line: kept fraction of the (i, j) pairs, tvmred time with
ranges, tvmred dense time, pykeops (if installed) with the same ranges, and the ratios
dense/ranges and pykeops/tvmred; all in one process.  Every answer is first compared with a
float64 dense masked reference (first 200 output rows): a wrong one stops the benchmark.

    python benchmarks/bench_ranges.py [--out PATH]
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

from timing import min_time  # noqa: E402

from tvmred.torch import Genred  # noqa: E402
from tvmred.torch.cluster import cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters  # noqa: E402


def best(fn, repeats=5):
    return min_time(fn, repeats)


def check(name, out, x, y, b, mask, rows=200):
    """Stops the benchmark if ``out`` differs from the dense masked float64 answer."""
    x, y, b = (t.double() for t in (x, y, b))
    K = torch.exp(-100 * ((x[:rows, None] - y[None]) ** 2).sum(-1)) * mask[:rows]
    want = K @ b
    err = ((out[:rows].double() - want).abs().max() / want.abs().max()).item()
    if err > 1e-4:
        raise SystemExit(f"{name}: WRONG answer (relative error {err:.1e})")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ranges_cpu.json"))
    p.add_argument("--n", type=int, default=20_000)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    g = torch.Generator().manual_seed(0)
    n = a.n
    x, y, b = (
        torch.rand(n, 2, generator=g),
        torch.rand(n, 2, generator=g),
        torch.rand(n, 1, generator=g),
    )
    (x,), lx = sort_clusters((x,), grid_cluster(x, 0.05))
    (y, b), ly = sort_clusters((y, b), grid_cluster(y, 0.05))
    rx, cx, _ = cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster_ranges_centroids(y, ly)
    d2 = ((cx[:, None] - cy[None]) ** 2).sum(-1)
    formula, aliases = "Exp(-SqDist(x,y)*IntCst(100))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"]
    tv = Genred(formula, aliases, axis=1)
    try:
        from pykeops.torch import Genred as KGenred  # type: ignore

        pk = KGenred(formula, aliases, axis=1)
    except ImportError:
        pk = None
    check("tvmred dense", tv(x, y, b), x, y, b, torch.ones(n, n, dtype=torch.bool))
    dense = best(lambda: tv(x, y, b))
    rows = []
    print(f"{len(rx)} x {len(ry)} clusters; dense tvmred {dense * 1e3:.1f} ms")
    for radius in (0.05, 0.1, 0.2, 0.4, 2.0):
        keep = d2 < radius**2
        ranges = from_matrix(rx, ry, keep)
        frac = (
            keep.float() * (rx[:, 1] - rx[:, 0])[:, None] * (ry[:, 1] - ry[:, 0])[None]
        ).sum() / n**2
        mask = keep[lx][:, ly]
        check(f"tvmred, radius {radius}", tv(x, y, b, ranges=ranges), x, y, b, mask)
        t = best(lambda: tv(x, y, b, ranges=ranges))
        row = {
            "radius": radius,
            "kept_pairs": frac.item(),
            "tvmred_ranges_s": t,
            "tvmred_dense_s": dense,
            "dense/ranges": dense / t,
        }
        line = f"radius {radius:4}: kept {frac * 100:5.1f}% of pairs  tvmred {t * 1e3:8.2f} ms"
        line += f" ({dense / t:5.2f}x faster than dense)"
        if pk is not None:
            check(
                f"pykeops, radius {radius}",
                pk(x, y, b, ranges=ranges, backend="CPU"),
                x,
                y,
                b,
                mask,
            )
            row["pykeops_ranges_s"] = best(lambda: pk(x, y, b, ranges=ranges, backend="CPU"))
            row["pykeops/tvmred"] = row["pykeops_ranges_s"] / t
            line += (
                f"  pykeops {row['pykeops_ranges_s'] * 1e3:8.2f} ms ({row['pykeops/tvmred']:5.2f}x)"
            )
        rows.append(row)
        print(line, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps({"n": n, "clusters": [len(rx), len(ry)], "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
