"""Strong and weak scaling of ``tvmred.torch.distributed`` over CPU processes (gloo), one
kernel thread per process.

Gaussian convolution ``Exp(-SqDist(x,y))*b``, D = E = 3, float32, reduced over j:

* strong scaling: N = M = ``--n`` (1e5) split over P = 1, 2, 4 processes; the baseline is one
  process of one thread running the plain ``tvmred.torch.Genred`` (and, for reference,
  ``DistributedGenred`` in a group of one);
* weak scaling: N = M = ``--weak-n`` * sqrt(P), so every process has the same number of
  pairs (``--weak-n``^2) to evaluate.

Each process runs with ``TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE``.  A
call's time is the slowest rank's (all-reduced max).  The configurations are interleaved over
``--rounds`` rounds of ``--repeats`` calls (after a warm-up call); a configuration's time is
its fastest call (load from other programs only ever slows a call down), its median is shown
too.  For every call the benchmark records how many cores *other* programs used meanwhile
(the machine's busy time from /proc/stat minus the CPU time of this configuration's
processes), reported for the fastest call, with the number of "clean" calls (others below
``--clean`` cores).  P greater than the core count is oversubscribed, and reported so.
Speedup = throughput (pairs/s) over the one-thread baseline's (weak: over P=1's);
efficiency = speedup / P.  ``--summarize FILE [--out NEW]`` prints the table of a saved
result again (and writes it, summarised by this version, to NEW).

    python benchmarks/bench_distributed.py [--n 100000] [--procs 1 2 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMULA, ALIASES = "Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"]


def busy_seconds() -> float:
    """CPU seconds spent by every process of the machine so far (/proc/stat), or nan."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------- one process


def worker(spec: dict, rank: int) -> None:
    """One process of a configuration: print, as JSON, [call time (slowest rank), cores used
    by other programs meanwhile] for each timed call."""
    import torch
    import torch.distributed as dist

    from tvmred.torch import Genred
    from tvmred.torch.distributed import DistributedGenred, rows_of

    n, P = spec["n"], spec["procs"]
    if spec["mode"] == "plain":
        s = slice(0, n)
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
        routine = DistributedGenred(FORMULA, ALIASES, axis=1, timeout=600)
    g = torch.Generator().manual_seed(0)
    x, y, b = (torch.rand(n, 3, generator=g)[s].clone() for _ in range(3))
    calls = []
    with torch.no_grad():
        routine(x, y, b)  # warm-up (and compile, on the first configuration)
        for _ in range(spec["repeats"]):
            if P > 1:
                dist.barrier()
            b0, c0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
            routine(x, y, b)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            ours = torch.tensor([time.process_time() - c0], dtype=torch.float64)
            busy = busy_seconds() - b0
            if P > 1:
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                dist.all_reduce(ours, op=dist.ReduceOp.SUM)
            calls.append([t.item(), max(0.0, busy - ours.item()) / t.item()])
    if rank == 0:
        print(json.dumps(calls), flush=True)
    if spec["mode"] != "plain":
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- driver


def run(mode: str, n: int, procs: int, repeats: int) -> list:
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
        return json.loads(outs[0].strip().splitlines()[-1])


def lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return ""


def summary(calls: list, clean: float) -> dict:
    times = sorted(c[0] for c in calls)
    best = min(calls)
    return {
        "best_s": best[0],
        "median_s": times[len(times) // 2],
        "others_cores_at_best": best[1],
        "clean_calls": sum(c[1] <= clean for c in calls),
        "calls": len(calls),
    }


def table(calls: dict, clean: float, weak_n: int, cores: int) -> list:
    """Print the summary table; return its rows."""
    configs = list(calls)
    stats = {c: summary(calls[c], clean) for c in configs}
    base = stats[configs[0]]["best_s"]
    weak1 = stats.get(("weak", "dist", weak_n, 1), {"best_s": math.nan})["best_s"]
    print(
        f"\n{'':6} {'mode':5} {'N=M':>7} {'P':>2} {'best s':>8} {'median':>7} {'others':>6} "
        f"{'clean':>6} {'Mpairs/s':>9} {'speedup':>8} {'effic.':>7}"
    )
    rows = []
    for c in configs:
        kind, mode, n, P = c
        st = stats[c]
        best = st["best_s"]
        speedup = base / best if kind == "strong" else (n * n / best) / (weak_n**2 / weak1)
        rows.append(
            {
                "scaling": kind,
                "mode": mode,
                "N=M": n,
                "procs": P,
                "oversubscribed": P > cores,
                **st,
                "all_calls_s_and_others_cores": calls[c],
                "pairs_per_s": n * n / best,
                "speedup": speedup,
                "efficiency": speedup / P,
            }
        )
        note = "  (oversubscribed)" if P > cores else ""
        print(
            f"{kind:6} {mode:5} {n:>7} {P:>2} {best:8.3f} {st['median_s']:7.3f} "
            f"{st['others_cores_at_best']:6.2f} {st['clean_calls']:>2}/{st['calls']:<3} "
            f"{n * n / best / 1e6:9.1f} {speedup:8.2f} {speedup / P:7.2f}{note}"
        )
    print(
        "\nbest: the fastest call; others: cores other programs used during it; clean: calls "
        f"during which others used <= {clean} cores"
    )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="N = M of the strong-scaling problem")
    p.add_argument("--weak-n", type=int, default=50_000, help="N = M of the weak-scaling P=1")
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--no-weak", action="store_true", help="strong scaling only")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clean", type=float, default=0.1, help="cores others may use in a clean call")
    p.add_argument("--out", help="JSON result (default benchmarks/results/distributed_cpu.json)")
    p.add_argument("--summarize", metavar="FILE", help="print the table of a saved result")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(json.loads(a.worker[0]), int(a.worker[1]))
        return 0
    if a.summarize:
        saved = json.loads(Path(a.summarize).read_text())
        args = saved["machine"]["args"]
        calls = {
            (r["scaling"], r["mode"], r["N=M"], r["procs"]): r["all_calls_s_and_others_cores"]
            for r in saved["rows"]
        }
        saved["rows"] = table(calls, args["clean"], args["weak_n"], saved["machine"]["cores"])
        if a.out:  # the saved calls, summarised by this version of the script
            Path(a.out).write_text(json.dumps(saved, indent=1))
        return 0
    cores = os.cpu_count() or 1
    configs = [("strong", "plain", a.n, 1)]
    configs += [("strong", "dist", a.n, P) for P in a.procs]
    if not a.no_weak:
        configs += [("weak", "dist", round(a.weak_n * math.sqrt(P)), P) for P in a.procs]
    calls: dict[tuple, list] = {c: [] for c in configs}
    for rnd in range(a.rounds):
        for c in configs:
            got = run(c[1], c[2], c[3], a.repeats)
            calls[c] += got
            shown = ", ".join(f"{t:.3f} s ({o:.2f})" for t, o in got)
            print(f"round {rnd}: {c[0]:6} {c[1]:5} N=M={c[2]:<7} P={c[3]}: {shown}", flush=True)
    rows = table(calls, a.clean, a.weak_n, cores)
    info = {
        "lscpu": lscpu(),
        "cores": cores,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "args": {k: v for k, v in vars(a).items() if k != "worker"},
    }
    out = Path(a.out or REPO / "benchmarks" / "results" / "distributed_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
