"""Run pykeops' own tutorials and examples, unchanged, on tvmred under the pykeops alias.

FOLDER is the ``pykeops/pykeops`` folder of a KeOps checkout (getkeops/keops; its
``tutorials/`` and ``examples/`` hold the scripts of pykeops' documentation).  Each script
runs in its own process, in its own folder (some read ``data/`` beside them), with
matplotlib's non-interactive backend and :func:`tvmred.compat.install_pykeops_alias` called
first; the scripts themselves are never edited.  Prints one line per script (OK / FAIL /
SKIP with the reason, and the time) and a total line.

    python benchmarks/upstream_examples.py FOLDER [--timeout 600] [--only NAME ...]

Scripts that need what this machine lacks are reported as SKIP instead of run: a CUDA
device (``plot_multi_gpu.py``, ``plot_gpu_select_example.py``), the network
(``plot_knn_mnist.py`` downloads MNIST), a module that is not installed (plotly, ...:
``ModuleNotFoundError`` of a module other than pykeops').  Exit status: 0 when every script
that ran passed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """\
import os, runpy, sys
import matplotlib
matplotlib.use("Agg")
import tvmred.compat
tvmred.compat.install_pykeops_alias(force=True)
path = sys.argv[1]
sys.path.insert(0, os.path.dirname(path))
runpy.run_path(path, run_name="__main__")
"""

GPU = {"plot_multi_gpu.py": 1, "plot_gpu_select_example.py": 1}  # CUDA devices (at least)
NETWORK = {"plot_knn_mnist.py"}


def needs(path: Path) -> str | None:
    """Why this script cannot run here (None: it can)."""
    if path.name in NETWORK:
        return "downloads its data (MNIST)"
    if path.name in GPU:
        try:
            import torch

            if torch.cuda.device_count() >= GPU[path.name]:
                return None
        except ImportError:
            pass
        return f"needs {GPU[path.name]} CUDA device(s)"
    return None


def scripts(folder: Path) -> list[Path]:
    found = [p for sub in ("tutorials", "examples") for p in sorted((folder / sub).rglob("*.py"))]
    return [p for p in found if p.name.startswith("plot_") and "helper" not in p.name]


def run(path: Path, timeout: float) -> tuple[str, str, float]:
    """(OK / FAIL / SKIP, detail, seconds)."""
    why = needs(path)
    if why:
        return "SKIP", why, 0.0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", RUN, str(path)], cwd=path.parent, env=env,
                           capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "FAIL", f"timed out after {timeout:g} s", time.perf_counter() - t
    dt = time.perf_counter() - t
    if r.returncode == 0:
        return "OK", "", dt
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    missing = re.match(r"ModuleNotFoundError: No module named '([\w.]+)'", last)
    if missing and not missing.group(1).startswith(("pykeops", "keopscore", "tvmred")):
        return "SKIP", f"needs {missing.group(1)} (not installed)", dt
    return "FAIL", last, dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="pykeops/pykeops of a KeOps checkout")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--only", nargs="*", default=None, help="script names to run")
    args = ap.parse_args(argv)
    found = scripts(args.folder)
    if not found:
        print(f"no tutorials/ or examples/ scripts under {args.folder}", file=sys.stderr)
        return 2
    counts = {"OK": 0, "FAIL": 0, "SKIP": 0}
    for path in found:
        if args.only and path.name not in args.only:
            continue
        status, detail, dt = run(path, args.timeout)
        counts[status] += 1
        name = path.relative_to(args.folder)
        print(f"{status:4} {str(name):60} {dt:6.1f} s  {detail}", flush=True)
    print(f"total: {counts['OK']} OK, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
