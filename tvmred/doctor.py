"""``tvmred doctor``: a report to paste into a bug report, and a tiny formula run on every
device this process can use (each checked against dense torch)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from typing import Callable

from . import cache, cudatool, targets, tunedb
from .build import __version__
from .settings import cache_dir


def _safe(fn: Callable[[], object]) -> str:
    try:
        return str(fn())
    except Exception as e:  # the report must never fail: say what did
        return f"unavailable ({type(e).__name__}: {e})"


def _nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        return "not found (CUDA kernels are compiled by NVRTC when TVM is built with it)"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    return f"{path}: {out.strip().splitlines()[-1] if out.strip() else '?'}"


def _cache_state() -> str:
    d = cache_dir()
    if not d.exists():
        return f"{d} (not created yet)"
    kernels = cache.entries()
    size = sum(e["bytes"] for e in kernels)
    writable = os.access(d, os.W_OK)
    stale = sum(1 for p in d.glob(".*") if p.is_file() and cache._stale(p, time.time()))
    tuned = len(tunedb._read())
    return (
        f"{d} ({'writable' if writable else 'READ-ONLY'}): {len(kernels)} kernel(s), "
        f"{size / 2**20:.1f} MiB, {tuned} tuning record(s), {stale} stale temporary file(s)"
    )


def report() -> list[tuple[str, str]]:
    """(item, value) pairs describing this installation."""
    import torch

    rows = [
        ("tvmred", __version__),
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("tvm", _safe(targets.tvm_version)),
        (
            "threads",
            f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, torch {torch.get_num_threads()}",
        ),
        ("cache", _safe(_cache_state)),
        ("host CPU known without TVM", _safe(targets.host_known)),
    ]
    import tvm
    from tvm.target import codegen

    from .schedules.cpu import vector_registers

    rows += [
        ("LLVM", _safe(lambda: f"{codegen.llvm_version_major()}, CPU {targets.host_cpu()}")),
        ("CPU target", _safe(targets.cpu_target)),
        (
            "vector registers",
            _safe(lambda: "%d x %d bits" % vector_registers(targets.cpu_target())),
        ),
        ("torch CUDA", _safe(_torch_cuda)),
        ("TVM CUDA runtime", _safe(lambda: tvm.runtime.enabled("cuda"))),
        ("nvcc", _safe(_nvcc)),
        ("CUDA compiler", _safe(cudatool.setup)),
        ("NVRTC", _safe(_nvrtc)),
    ]
    return rows


def _nvrtc() -> str:
    import torch

    version = cudatool.nvrtc_version()
    if version is None:
        return "not installed (pip install tvmred[cuda])"
    problem = cudatool.check(torch.version.cuda, version)
    return f"CUDA {version[0]}.{version[1]}" + (f" -- MISMATCH: {problem}" if problem else "")


def _torch_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch built with CUDA {torch.version.cuda})"
    cards = [
        f"{torch.cuda.get_device_name(k)} (sm_{''.join(map(str, torch.cuda.get_device_capability(k)))})"
        for k in range(torch.cuda.device_count())
    ]
    return f"CUDA {torch.version.cuda}: " + ", ".join(cards)


def smoke(device: str) -> str:
    """A Gaussian convolution and an ArgKMin on ``device``, against dense torch."""
    import torch

    from .torch import Genred

    g = torch.Generator().manual_seed(0)
    x, y, b = (
        torch.rand(n, d, generator=g, dtype=torch.float64)
        for n, d in ((200, 3), (300, 3), (300, 2))
    )
    x, y, b = (t.to(device) for t in (x, y, b))
    t0 = time.perf_counter()
    c = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)(x, y, b)
    i = Genred(
        "SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", opt_arg=3, axis=1
    )(x, y)
    dt = time.perf_counter() - t0
    d2 = torch.cdist(x, y) ** 2
    err = ((c - torch.exp(-d2) @ b).abs().max() / c.abs().max()).item()
    knn = torch.equal(i, d2.topk(3, dim=1, largest=False).indices)
    ok = err < 1e-12 and knn
    return f"{'OK' if ok else 'WRONG'}: rel. error {err:.1e}, KNN {'exact' if knn else 'WRONG'} ({dt:.2f} s incl. compile)"


def main() -> int:
    import torch

    failed = False
    for item, value in report():
        print(f"{item:>28}: {value}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        try:
            line = smoke(dev)
        except Exception:
            line = "FAILED\n" + traceback.format_exc()
        failed |= not line.startswith("OK")
        print(f"{'run on ' + dev:>28}: {line}")
    return 1 if failed else 0
