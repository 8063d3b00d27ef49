"""Shared by the benchmark scripts: best-of-N wall-clock timing."""

from __future__ import annotations

import time
from typing import Any, Callable


def min_time(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    min_total: float = 0.25,
    max_calls: int = 2000,
) -> float:
    """The shortest call of ``fn`` (seconds) after ``warmup`` untimed calls: at least
    ``repeats`` calls, more (up to ``max_calls``) until ``min_total`` seconds are spent, so a
    sub-millisecond case is not judged on a handful of calls (thread wake-up noise)."""
    for _ in range(warmup):
        fn()
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < min_total and n < max_calls):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, threads, LLVM's CPU name, versions
    (pykeops' if installed)."""
    import os
    import platform
    from importlib import metadata
    from pathlib import Path

    import torch

    from tvmred import __version__
    from tvmred.targets import cpu_target, tvm_version

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pykeops = metadata.version("pykeops")
    except metadata.PackageNotFoundError:
        pykeops = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tvm_threads": os.environ.get("TVM_NUM_THREADS"),
        "llvm_mcpu": cpu_target()["mcpu"],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tvm": tvm_version(),
        "tvmred": __version__,
        "pykeops": pykeops,
    }


def peak_flops(dtype_bits: int, cores: int) -> tuple[float, str]:
    """The CPU's peak floating-point rate for ``dtype_bits``-bit floats on ``cores`` cores,
    and how it was found: the target's SIMD width (LLVM's features, as the schedules see it)
    x 2 FMA pipes x 2 flops per FMA x the clock now (``cpu MHz`` of /proc/cpuinfo, else 3 GHz).
    Two FMA pipes is the count of every x86 core these benchmarks run on (Zen 3-5, Intel's
    server cores); a core with one pipe would be at twice the share printed.  In a VM the
    clock read is often the nominal one, below the boost clock the cores run at: the share
    printed is then too high (a D=64 Gaussian read 97 % on a 2-vCPU Zen 5 at "2.60 GHz")."""
    from pathlib import Path

    from tvmred.schedules.cpu import vector_registers
    from tvmred.targets import cpu_target

    bits = vector_registers(cpu_target())[1]
    mhz = None
    try:
        mhzs = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")]  # fmt: skip
        mhz = max(mhzs) if mhzs else None
    except (OSError, ValueError):
        pass
    clock = (mhz or 3000.0) * 1e6
    peak = cores * (bits // dtype_bits) * 2 * 2 * clock
    how = f"{cores} cores x {bits // dtype_bits} lanes x 2 FMA x 2 flops x {clock / 1e9:.2f} GHz"
    return peak, how
