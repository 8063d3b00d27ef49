"""Strong and weak scaling of ``tvmred.torch.distributed`` over CPU processes (gloo), one
kernel thread per process.

Gaussian convolution ``Exp(-SqDist(x,y))*b``, D = E = 3, float32, reduced over j:

* strong scaling: N = M = ``--n`` (1e5) split over P = 1, 2, 4 processes; the baseline is one
  process of one thread running the plain ``tvmred.torch.Genred`` (and, for reference,
  ``DistributedGenred`` in a group of one);
* weak scaling: N = M = ``--weak-n`` * sqrt(P), so every process has the same number of
  pairs (``--weak-n``^2) to evaluate.

Each process runs with ``TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE``; a
call's time is the slowest rank's (all-reduced max), the best of ``--repeats`` calls after a
warm-up call.  The configurations are interleaved over ``--rounds`` rounds, so load from other
programs spreads over all of them: the summary gives the best round, the spread (worst /
best) and the cores other programs used during the best round (from /proc/stat, minus this
benchmark's processes); ``--wait-idle 90`` waits for a quiet machine before each run.
P greater than the core count is oversubscribed, and reported so.  Speedup = throughput
(pairs/s) over the one-thread baseline's (weak: over P=1's); efficiency = speedup / P.

    python benchmarks/bench_distributed.py [--n 100000] [--procs 1 2 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMULA, ALIASES = "Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"]


# ------------------------------------------------------------------------- one process


def worker(spec: dict, rank: int) -> None:
    """One process of a configuration: print the best call time (slowest rank) as JSON."""
    import torch
    import torch.distributed as dist

    from tvmred.torch import Genred
    from tvmred.torch.distributed import DistributedGenred, rows_of

    n, P = spec["n"], spec["procs"]
    if spec["mode"] == "plain":
        lo_i, hi_i, lo_j, hi_j = 0, n, 0, n
        routine = Genred(FORMULA, ALIASES, axis=1)
    else:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{spec['rendezvous']}",
            rank=rank,
            world_size=P,
            timeout=datetime.timedelta(seconds=600),
        )
        s = rows_of(n)
        lo_i, hi_i, lo_j, hi_j = s.start, s.stop, s.start, s.stop
        routine = DistributedGenred(FORMULA, ALIASES, axis=1, timeout=600)
    g = torch.Generator().manual_seed(0)
    x, y, b = (torch.rand(n, 3, generator=g) for _ in range(3))  # same global data everywhere
    x, y, b = x[lo_i:hi_i].clone(), y[lo_j:hi_j].clone(), b[lo_j:hi_j].clone()
    with torch.no_grad():
        routine(x, y, b)  # warm-up (and compile, on the first configuration)
        best = math.inf
        for _ in range(spec["repeats"]):
            if P > 1:
                dist.barrier()
            t0 = time.perf_counter()
            routine(x, y, b)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            if P > 1:
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            best = min(best, t.item())
    if rank == 0:
        print(json.dumps({"s": best}), flush=True)
    if spec["mode"] != "plain":
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- driver


def run(mode: str, n: int, procs: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "mode": mode,
            "n": n,
            "procs": procs,
            "repeats": repeats,
            "rendezvous": str(Path(tmp) / "rendezvous"),
        }
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "TVM_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
        ps = [
            subprocess.Popen([*cmd, str(r)], env=env, stdout=subprocess.PIPE, text=True)
            for r in range(procs)
        ]
        outs = [p.communicate(timeout=1800)[0] for p in ps]
        if any(p.returncode for p in ps):
            raise RuntimeError(f"{mode} n={n} P={procs} failed")
        return json.loads(outs[0].strip().splitlines()[-1])["s"]


def busy_seconds() -> float:
    """CPU seconds spent by every process of the machine so far (/proc/stat), or nan."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except OSError:
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def wait_idle(pct: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is at least ``pct`` % idle over 3 s;
    return the last idle percentage seen."""
    cores, t_end, idle = os.cpu_count() or 1, time.monotonic() + max_wait, 0.0
    while True:
        b0, t0 = busy_seconds(), time.monotonic()
        time.sleep(3)
        idle = 100 * (1 - (busy_seconds() - b0) / (cores * (time.monotonic() - t0)))
        if idle >= pct or time.monotonic() >= t_end:
            return idle


def measured(mode: str, n: int, procs: int, repeats: int) -> tuple[float, float]:
    """(best call time, cores used by other programs meanwhile, on average)."""
    b0, c0, t0 = busy_seconds(), children_seconds(), time.monotonic()
    s = run(mode, n, procs, repeats)
    wall = time.monotonic() - t0
    return s, max(0.0, (busy_seconds() - b0) - (children_seconds() - c0)) / wall


def lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="N = M of the strong-scaling problem")
    p.add_argument("--weak-n", type=int, default=50_000, help="N = M of the weak-scaling P=1")
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wait-idle", type=float, default=0, help="before each run, wait for %% idle")
    p.add_argument("--max-wait", type=float, default=600, help="seconds, for --wait-idle")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "distributed_cpu.json"))
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(json.loads(a.worker[0]), int(a.worker[1]))
        return 0
    cores = os.cpu_count() or 1
    configs = [("strong", "plain", a.n, 1)]
    configs += [("strong", "dist", a.n, P) for P in a.procs]
    configs += [("weak", "dist", round(a.weak_n * math.sqrt(P)), P) for P in a.procs]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    other: dict[tuple, list[float]] = {c: [] for c in configs}
    loads = []
    for rnd in range(a.rounds):
        for c in configs:
            if a.wait_idle:
                wait_idle(a.wait_idle, a.max_wait)
            loads.append(os.getloadavg()[0])
            t, o = measured(c[1], c[2], c[3], a.repeats)
            times[c].append(t)
            other[c].append(o)
            print(
                f"round {rnd}: {c[0]:6} {c[1]:5} N=M={c[2]:<7} P={c[3]}: {t:.3f} s "
                f"(other programs used {o:.2f} cores meanwhile)",
                flush=True,
            )
    rows = []
    base = min(times[configs[0]])
    weak1 = min(times.get(("weak", "dist", a.weak_n, 1), [math.nan]))
    print(
        f"\n{'':6} {'mode':5} {'N=M':>7} {'P':>2} {'best s':>8} {'spread':>7} "
        f"{'Mpairs/s':>9} {'speedup':>8} {'effic.':>7}"
    )
    for c in configs:
        kind, mode, n, P = c
        best, worst = min(times[c]), max(times[c])
        busy = other[c][times[c].index(best)]
        speedup = base / best if kind == "strong" else n * n / best / (a.weak_n**2 / weak1)
        eff = speedup / P
        row = {
            "scaling": kind,
            "mode": mode,
            "N=M": n,
            "procs": P,
            "oversubscribed": P > cores,
            "best_s": best,
            "worst_s": worst,
            "all_s": times[c],
            "other_programs_cores": other[c],
            "pairs_per_s": n * n / best,
            "speedup_vs_1_thread": speedup,
            "efficiency": eff,
        }
        rows.append(row)
        note = "  (oversubscribed)" if P > cores else ""
        print(
            f"{kind:6} {mode:5} {n:>7} {P:>2} {best:8.3f} {worst / best:7.2f} "
            f"{n * n / best / 1e6:9.1f} {speedup:8.2f} {eff:7.2f} {busy:7.2f}{note}"
        )
    info = {
        "lscpu": lscpu(),
        "cores": cores,
        "load_average_1min_before_each_run": loads,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"\nload average (1 min) before the runs: {min(loads):.2f} .. {max(loads):.2f}")
    print("others: cores used by other programs during the best run (/proc/stat minus ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
