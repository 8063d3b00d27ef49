"""tvmred vs pykeops vs dense PyTorch on the reference Sum reduction, CPU, float32.

    c_i = sum_j (p - a_j)^2 exp(x_i + y_j),   x (M, 3), y (N, 3), a (N, 1), p (1,),  M=3000, N=5000

Measured in this process (min over ``--repeats`` calls, after warm-up, all cores; tvmred uses a
private, empty kernel cache so that a stale kernel from ``~/.cache/tvmred`` is never timed):

* forward: ``c = routine(x, y, a, p)``;
* forward + gradient: ``c = routine(x, y, a, p); torch.autograd.grad(c, y, e)``.

Measured in fresh subprocesses, each with an empty kernel cache (``TVMRED_CACHE_DIR`` /
``KEOPS_CACHE_FOLDER`` set to a new temporary folder) and a formula never compiled before:

* the import time of the library, torch excluded (tvmred imports TVM lazily, so its row is
  ``import tvmred`` + ``import tvm``);
* the first forward call (parse + compile + run) and the first gradient call (compile of the
  gradient kernel + run).

pykeops (``pip install pykeops==2.3``) is imported lazily; without it its columns are skipped.
Also reports the share of CPU time other processes used meanwhile (from ``/proc/stat``): on a
busy machine every number above can be off by 2x.  Prints a table and writes ``benchmarks/results/reference_cpu.json``
(``reference_cpu_quick.json`` with ``--quick``).

    python benchmarks/bench_reference.py [--quick] [--repeats R] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

# see bench_suite.py / README "Performance": torch's spinning OpenMP threads would steal the
# cores of the next kernel; set before torch loads its OpenMP runtime (and inherited by the
# subprocesses of the cold measurements)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import timing  # noqa: E402
from timing import min_time as _min_time  # noqa: E402

M, N = 3000, 5000
FORMULA = "Square(p-a)*Exp(x+y)"
VARIABLES = ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"]
LIBS = ("tvmred", "pykeops", "torch")


def have_pykeops() -> bool:
    import importlib.util

    return importlib.util.find_spec("pykeops") is not None


# --------------------------------------------------------------------------- warm timings


def min_time(fn: Callable[[], Any], repeats: int) -> float:
    return _min_time(fn, repeats, warmup=2)


def make_routines(use_pykeops: bool) -> dict[str, Callable]:
    """``lib -> f(x, y, a, p)``: the reduction, differentiable w.r.t. ``y``."""
    import torch

    from tvmred.torch import Genred

    def dense(x, y, a, p):
        return (((p - a.T) ** 2)[..., None] * torch.exp(x[:, None, :] + y[None, :, :])).sum(1)

    routines = {"tvmred": Genred(FORMULA, VARIABLES, reduction_op="Sum", axis=1), "torch": dense}
    if use_pykeops:
        from pykeops.torch import Genred as KGenred

        k = KGenred(FORMULA, VARIABLES, reduction_op="Sum", axis=1)
        routines["pykeops"] = lambda x, y, a, p: k(x, y, a, p, backend="CPU")
    return routines


def warm_timings(repeats: int, use_pykeops: bool) -> tuple[dict, dict]:
    """``({"forward": {lib: s}, "forward+grad": {lib: s}}, {lib: max rel. diff vs torch})``."""
    import torch

    torch.manual_seed(0)
    x, y, a, p = torch.rand(M, 3), torch.rand(N, 3), torch.rand(N, 1), torch.rand(1)
    yg = y.clone().requires_grad_(True)
    e = torch.rand(M, 3)
    routines = make_routines(use_pykeops)

    times: dict[str, dict[str, float]] = {"forward": {}, "forward+grad": {}}
    outputs = {}
    for lib, f in routines.items():

        def fwd_grad(f=f):
            return torch.autograd.grad(f(x, yg, a, p), yg, e)[0]

        outputs[lib] = (f(x, y, a, p), fwd_grad())
        times["forward"][lib] = min_time(lambda f=f: f(x, y, a, p), repeats)
        times["forward+grad"][lib] = min_time(fwd_grad, repeats)

    c_ref, g_ref = outputs["torch"]
    errors = {
        lib: max(
            ((c - c_ref).abs() / c_ref.abs()).max().item(),
            ((g - g_ref).abs() / g_ref.abs()).max().item(),
        )
        for lib, (c, g) in outputs.items()
        if lib != "torch"
    }
    return times, errors


# --------------------------------------------------------------------------- cold timings


def cold_child(lib: str, variant: int, restart: bool = False) -> None:
    """Run in a subprocess with an empty cache: time import, first call, first gradient.
    ``restart``: the same formula again in a new process, its kernels now in the cache (what
    every later run of a user's script pays); tvm is then not imported explicitly."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    w = torch.ones(2, requires_grad=True)  # torch's first autograd.grad imports sympy (~0.3 s)
    torch.autograd.grad(2 * w, w, torch.ones(2))
    t1 = time.perf_counter()
    if lib == "tvmred":
        from tvmred.torch import Genred

        if not restart:
            import tvm  # noqa: F401  (tvmred imports it lazily, when it compiles)
    else:
        from pykeops.torch import Genred
    t2 = time.perf_counter()

    torch.manual_seed(0)
    x, a, p = torch.rand(M, 3), torch.rand(N, 1), torch.rand(1)
    y = torch.rand(N, 3, requires_grad=True)
    formula = f"Square(p-a)*Exp(x+y)*IntCst({variant})"  # a formula this cache never saw
    routine = Genred(formula, VARIABLES, reduction_op="Sum", axis=1)
    kw = {"backend": "CPU"} if lib == "pykeops" else {}
    c = routine(x, y, a, p, **kw)
    t3 = time.perf_counter()
    torch.autograd.grad(c, y, torch.rand_like(c))
    t4 = time.perf_counter()
    if restart:
        print(json.dumps({"restart": t4 - t1}))
        return
    print(
        json.dumps(
            {
                "import_torch": t1 - t0,
                "import": t2 - t1,
                "first_call": t3 - t2,
                "first_grad": t4 - t3,
            }
        )
    )


def cold_timings(lib: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in range(runs):
        with tempfile.TemporaryDirectory(prefix=f"bench-{lib}-cache-") as tmp:
            path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, TVMRED_CACHE_DIR=tmp, KEOPS_CACHE_FOLDER=tmp, PYTHONPATH=path)
            for extra in ([], ["--restart"]):  # empty cache, then the same formula cached
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--cold-child",
                        lib,
                        "--variant",
                        str(2 + r),
                        *extra,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"cold {lib} subprocess failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                for k, v in res.items():
                    out.setdefault(k, []).append(v)
    return out


# --------------------------------------------------------------------------- report


def cpu_snapshot() -> Optional[tuple[float, float, float]]:
    """(busy, total) CPU seconds of the whole machine (Linux ``/proc/stat``) and the CPU
    seconds of this process and its finished children; None where unavailable."""
    try:
        jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    hz, t = os.sysconf("SC_CLK_TCK"), os.times()
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    own = t.user + t.system + t.children_user + t.children_system
    return (sum(jiffies) - idle) / hz, sum(jiffies) / hz, own


def foreign_cpu_share(before: Optional[tuple[float, float, float]]) -> Optional[float]:
    """Fraction of the machine's CPU time used by other processes since ``before``."""
    after = cpu_snapshot()
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy, total, own = (a - b for a, b in zip(after, before))
    return max(0.0, busy - own) / total


def git_revision() -> str:
    """``<short hash>[-dirty]`` of the checkout being benchmarked, or ``unknown``."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(REPO), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "tvmred", "schedules")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {**timing.machine(), "tvmred_git": git_revision()}


def ratio(num: Optional[float], den: Optional[float]) -> str:
    return f"{num / den:.2f}x" if num is not None and den else "-"


def print_table(res: dict[str, Any]) -> None:
    mach, cfg = res["machine"], res["config"]
    print(
        f"\nMachine: {mach['cpu']} ({mach['llvm_mcpu']}), {mach['cores']} cores, {mach['platform']}"
    )
    print(
        f"Python {mach['python']}, torch {mach['torch']}, tvm {mach['tvm']}, tvmred "
        f"{mach['tvmred']} ({mach['tvmred_git']}), pykeops {mach.get('pykeops', '-')}"
    )
    print(
        f"Problem: {FORMULA}, M={M}, N={N}, float32, CPU; warm: min of {cfg['repeats']} "
        f"calls; cold: min of {cfg['cold_runs']} fresh subprocesses\n"
    )

    rows: list[tuple[str, dict[str, Optional[float]], float]] = []
    for key, label in (("forward", "forward"), ("forward+grad", "forward + grad wrt y")):
        rows.append((f"{label} [ms]", res["warm"][key], 1e3))
    for key, label in (
        ("import", "import (torch excluded)"),
        ("first_call", "first call, new formula"),
        ("first_grad", "first grad, new formula"),
        ("restart", "new process, cached: all"),
    ):
        rows.append((f"{label} [s]", {lib: min(v[key]) for lib, v in res["cold"].items()}, 1.0))

    head = (
        f"{'':32}{'tvmred':>10}{'pykeops':>10}{'torch':>10}"
        f"{'pykeops/tvmred':>16}{'torch/tvmred':>14}"
    )
    print(head)
    print("-" * len(head))
    for label, t, scale in rows:
        cells = "".join(
            f"{t[lib] * scale:10.{1 if scale > 1 else 3}f}"
            if t.get(lib) is not None
            else f"{'-':>10}"
            for lib in LIBS
        )
        print(
            f"{label:32}{cells}{ratio(t.get('pykeops'), t.get('tvmred')):>16}"
            f"{ratio(t.get('torch'), t.get('tvmred')):>14}"
        )
    print(
        "(cold rows: 'import' is import tvmred + import tvm for tvmred, import pykeops for "
        "pykeops; 'new process, cached': import + first call + first grad of the same formula "
        "in a new process, its kernels in the disk cache)"
    )
    errs = ", ".join(f"{lib} {e:.1e}" for lib, e in res["max_rel_diff_vs_torch"].items())
    print(f"max relative difference vs torch (values and gradients): {errs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, 1 cold run per library")
    ap.add_argument("--repeats", type=int, help="warm repeats (default 10, 3 with --quick)")
    ap.add_argument("--out", type=Path, help="JSON output path")
    ap.add_argument("--cold-child", choices=("tvmred", "pykeops"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--restart", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold_child:
        return cold_child(args.cold_child, args.variant, args.restart)

    repeats = args.repeats or (3 if args.quick else 10)
    cold_runs = 1 if args.quick else 3
    name = "reference_cpu_quick.json" if args.quick else "reference_cpu.json"
    out = args.out or Path(__file__).resolve().parent / "results" / name

    # A private tvmred cache: never time a stale kernel from ~/.cache/tvmred.
    os.environ["TVMRED_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-tvmred-cache-")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # before tvmred's import: it sizes TVM's pool
    use_pykeops = have_pykeops()
    if not use_pykeops:
        print("pykeops is not installed (pip install pykeops==2.3): skipping its columns")

    cold, snap = {}, cpu_snapshot()
    for lib in ("tvmred", "pykeops") if use_pykeops else ("tvmred",):
        print(f"cold start: {lib}, {cold_runs} fresh subprocess(es)...", flush=True)
        cold[lib] = cold_timings(lib, cold_runs)
    busy = {"cold": foreign_cpu_share(snap)}
    print(f"warm timings: {repeats} repeats...", flush=True)
    snap = cpu_snapshot()
    warm, errors = warm_timings(repeats, use_pykeops)
    busy["warm"] = foreign_cpu_share(snap)

    config = {
        "M": M,
        "N": N,
        "dtype": "float32",
        "formula": FORMULA,
        "repeats": repeats,
        "cold_runs": cold_runs,
        "unit": "s",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    res = {
        "machine": machine(),
        "config": config,
        "warm": warm,
        "cold": cold,
        "max_rel_diff_vs_torch": errors,
        "cpu_used_by_other_processes": busy,
    }
    print_table(res)
    shares = {k: v for k, v in busy.items() if v is not None}
    print(
        "CPU time used by other processes during the run: "
        + (", ".join(f"{k} {v:.0%}" for k, v in shares.items()) or "unknown")
    )
    if any(v > 0.05 for v in shares.values()):
        print("warning: the machine was not idle; the timings above may be skewed")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out}")
    shutil.rmtree(os.environ["TVMRED_CACHE_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
