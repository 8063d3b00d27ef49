"""Start-up: what a new process pays before its first answer, tvmred beside pykeops 2.3.

Each step runs in a fresh process (several runs; the median and the best are printed), the
same small script for both libraries -- one Gaussian-kernel Sum and its gradient:

* ``import``: ``from tvmred.torch import Genred`` after ``import torch`` (torch's own import
  is timed apart and excluded everywhere);
* ``warm call`` / ``warm grad``: the first call and the first gradient, the kernels in the
  disk cache (a previous run compiled them);
* ``warm total``: import + first call + first gradient, the acceptance number;
* ``numpy import``: ``import tvmred.numpy`` (whether it imported torch is shown);
* ``new, server up``: import + first call of a never-seen formula in a fresh process while
  the compile server (started by an earlier process) runs: the compile, not TVM's import;
  pykeops (no server): import + its compile of a new formula in a warm build folder;
* ``cold call``: the first call of a never-seen formula in a fresh process and an empty
  cache, TVM's import and the compile included (no server); ``second formula``: another new
  formula in the same process.

Printed: one row per step with tvmred's and pykeops' times and their ratio, the modules the
warm process imported (``torch._dynamo``, ``tvm``, ``tvm_ffi``, ``ml_dtypes``: none should be),
and the machine; ``--json PATH`` writes the numbers (``benchmarks/results/startup_cpu.json``).

    python benchmarks/bench_startup.py [--runs 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HEAVY = ("torch._dynamo", "tvm", "tvm_ffi", "ml_dtypes")

SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
if LIB == "tvmred":
    from tvmred.torch import Genred
else:
    from pykeops.torch import Genred
t2 = time.perf_counter()
import os
if LIB == "pykeops":  # its own build folder, fresh or warm as tvmred's cache dir
    import pykeops
    pykeops.set_build_folder(os.environ["TVMRED_CACHE_DIR"])
t2b = time.perf_counter()
torch.manual_seed(0)
x, y = torch.rand(1000, 3), torch.rand(2000, 3, requires_grad=True)
b = torch.rand(2000, 2)
g = Genred(FORMULA, ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], reduction_op="Sum", axis=1)
c = g(x, y, b)
t3 = time.perf_counter()
(gy,) = torch.autograd.grad(c.sum(), y)
t4 = time.perf_counter()
out = {"torch": t1 - t0, "import": t2 - t1, "call": t3 - t2b, "grad": t4 - t3}
if SECOND:
    g2 = Genred("Exp(-SqDist(x,y)*IntInv(2))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                reduction_op="Sum", axis=1)
    t5 = time.perf_counter()
    g2(x, y, b)
    out["second"] = time.perf_counter() - t5
out["modules"] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(out))
"""

NUMPY = r"""
import json, sys, time
t0 = time.perf_counter()
import LIBNAME.numpy
out = {"numpy": time.perf_counter() - t0, "torch_imported": "torch" in sys.modules}
print(json.dumps(out))
"""


def run(code: str, env: dict) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def script(lib: str, formula: str, second: bool) -> str:
    head = f"LIB = {lib!r}\nFORMULA = {formula!r}\nSECOND = {second}\nHEAVY = {HEAVY!r}\n"
    return head + SCRIPT


def available(lib: str) -> bool:
    from importlib.util import find_spec

    return find_spec(lib) is not None


def measure(lib: str, runs: int) -> dict:
    """Every step's times over ``runs`` fresh processes (lists of seconds).  Every process
    imports from bytecode (``.pyc``) as an installed package does -- written by the first run
    into a private cache (``PYTHONPYCACHEPREFIX``), whatever ``PYTHONDONTWRITEBYTECODE`` says:
    without it an editable install compiles tvmred's ~60 modules from source at every import
    (55 ms of a 0.11 s import measured so), while pip-installed pykeops reads its .pyc."""
    with tempfile.TemporaryDirectory() as pyc:
        base = {**os.environ, "TVMRED_COMPILE_SERVER": "0", "PYTHONPYCACHEPREFIX": pyc}
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        return _measure(lib, runs, base)


def _measure(lib: str, runs: int, base: dict) -> dict:
    times: dict[str, list] = {}
    modules = set()
    with tempfile.TemporaryDirectory() as warm_dir:
        env = {**base, "TVMRED_CACHE_DIR": warm_dir}
        formula = "Exp(-SqDist(x,y))*b"
        run(script(lib, formula, False), env)  # fills the disk cache (or pykeops' build dir)
        for _ in range(runs):
            r = run(script(lib, formula, False), env)
            modules |= set(r["modules"])
            for k in ("import", "call", "grad"):
                times.setdefault(f"warm {k}", []).append(r[k])
            times.setdefault("warm total", []).append(r["import"] + r["call"] + r["grad"])
            times.setdefault("torch import", []).append(r["torch"])
        # a never-seen formula in a fresh process, the compile server up (tvmred; pykeops has
        # none: its compile in a warm build folder); the server exits 5 s after the last run
        env = {**env, "TVMRED_COMPILE_SERVER": "1", "TVMRED_COMPILE_SERVER_IDLE": "5"}
        if lib == "tvmred":
            run(script(lib, "Exp(-SqDist(x,y)*IntInv(99))*b", False), env)  # starts it
            _wait_for_server(Path(warm_dir))
        for n in range(runs):
            r = run(script(lib, f"Exp(-SqDist(x,y)*IntInv({n + 100}))*b", False), env)
            times.setdefault("new, server up", []).append(r["import"] + r["call"])
    with tempfile.TemporaryDirectory() as cold_dir:  # TVM's modules' bytecode written
        run(
            script(lib, "Exp(-SqDist(x,y)*IntInv(2))*b", True),
            {**base, "TVMRED_CACHE_DIR": cold_dir},
        )
    for n in range(runs):
        with tempfile.TemporaryDirectory() as cold_dir:
            env = {**base, "TVMRED_CACHE_DIR": cold_dir}
            # a formula no cache holds: a fresh constant in it each run
            r = run(script(lib, f"Exp(-SqDist(x,y)*IntInv({n + 3}))*b", True), env)
            times.setdefault("cold call", []).append(r["call"])
            times.setdefault("second formula", []).append(r["second"])
    run(NUMPY.replace("LIBNAME", lib), base)  # its modules' bytecode written
    for _ in range(runs):
        r = run(NUMPY.replace("LIBNAME", lib), base)
        times.setdefault("numpy import", []).append(r["numpy"])
        times.setdefault("numpy imports torch", []).append(r["torch_imported"])
    return {"times": times, "modules": sorted(modules)}


def _wait_for_server(d: Path, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not list(d.glob("server-*.sock")):
        if time.monotonic() > deadline:
            raise RuntimeError("the compile server did not start: " + str(d / "server.log"))
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import timing

    info = timing.machine()
    print(json.dumps(info))
    libs = ["tvmred"] + (["pykeops"] if available("pykeops") else [])
    if "pykeops" not in libs:
        print("pykeops is not installed: tvmred's times only (pip install pykeops==2.3)")
    res = {lib: measure(lib, args.runs) for lib in libs}
    steps = [k for k in res["tvmred"]["times"] if k != "numpy imports torch"]
    print(f"{'step':<16} {'tvmred median (best)':>22} {'pykeops median (best)':>22} {'ratio':>7}")
    for step in steps:
        cells, meds = [], []
        for lib in ("tvmred", "pykeops"):
            t = res.get(lib, {}).get("times", {}).get(step)
            if t:
                meds.append(statistics.median(t))
                cells.append(f"{meds[-1]:.3f} s ({min(t):.3f})")
            else:
                cells.append("-")
        ratio = f"{meds[0] / meds[1]:.2f}x" if len(meds) == 2 and meds[1] > 0 else "-"
        print(f"{step:<16} {cells[0]:>22} {cells[1]:>22} {ratio:>7}")
    for lib in libs:
        torch_in = any(res[lib]["times"]["numpy imports torch"])
        print(f"{lib}: warm process imported {res[lib]['modules'] or 'none'} of {list(HEAVY)}; "
              f"its numpy binding imports torch: {torch_in}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": res}, indent=1))


if __name__ == "__main__":
    main()
