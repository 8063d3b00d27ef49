"""Shared by the benchmark scripts: best-of-N wall-clock timing."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional


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
    and how it was found: one core's multiply-add rate measured with the target's widest
    vectors (:func:`measured_fma_rate`) x 2 flops x ``cores`` -- the vector width, the FMA
    pipes and the clock all in it, also where a 512-bit operation takes both 256-bit pipes
    (Zen 4: half the rate that 16 lanes x 2 pipes would say).  Where that cannot be built:
    the target's SIMD width x 2 FMA pipes x 2 flops x the clock (:func:`measured_clock`;
    else ``cpu MHz`` of /proc/cpuinfo, else 3 GHz), two pipes being every x86 core's these
    benchmarks run on.  /proc/cpuinfo's clock is often the nominal one in a VM, below the
    boost clock the cores run at (2.60 GHz read, 3.66 GHz measured on a Zen 4 guest)."""
    from pathlib import Path

    rate = measured_fma_rate(dtype_bits)
    if rate is not None:
        peak = cores * 2 * rate
        return peak, f"{cores} cores x 2 flops x {rate / 1e9:.1f} G multiply-adds/s (measured)"
    from tvmred.schedules.cpu import vector_registers
    from tvmred.targets import cpu_target

    bits = vector_registers(cpu_target())[1]
    hz, source = measured_clock(), "measured clock"
    if hz is None:
        source = "/proc/cpuinfo"
        try:
            mhzs = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("cpu MHz")]  # fmt: skip
            hz = max(mhzs) * 1e6 if mhzs else None
        except (OSError, ValueError):
            pass
    clock = hz or 3e9
    peak = cores * (bits // dtype_bits) * 2 * 2 * clock
    how = f"{cores} cores x {bits // dtype_bits} lanes x 2 FMA x 2 flops x {clock / 1e9:.2f} GHz"
    return peak, f"{how} ({source if hz else 'assumed'})"


#: independent multiply-add chains of :func:`measured_fma_rate`: latency (4-5 cycles) x
#: pipes (2) at least, and within 16 registers
FMA_CHAINS = 12


@functools.lru_cache(maxsize=None)
def measured_fma_rate(dtype_bits: int) -> Optional[float]:
    """Multiply-adds per second one core runs on ``dtype_bits``-bit floats with the target's
    widest vectors (the schedules' own width, LLVM's feature list): a compiled loop of
    FMA_CHAINS independent vector multiply-add chains, timed (best of 5); None where it
    cannot be built."""
    try:
        import numpy as np
        import tvm
        from tvm.script import tirx as T

        from tvmred.schedules.cpu import vector_registers
        from tvmred.targets import cpu_target

        dt = f"float{dtype_bits}"
        lanes = vector_registers(cpu_target())[1] // dtype_bits
        size = FMA_CHAINS * lanes

        @T.prim_func
        def chains(out: T.Buffer((size,), dt), n: T.int64):
            x = T.alloc_buffer((size,), dt)
            for c in T.unroll(FMA_CHAINS):
                for v in T.vectorized(lanes):
                    x[c * lanes + v] = T.Cast(dt, c + 1) * T.Cast(dt, 1e-3)
            for _ in range(n):
                for c in T.unroll(FMA_CHAINS):
                    for v in T.vectorized(lanes):
                        x[c * lanes + v] = x[c * lanes + v] * T.Cast(dt, 0.999) + T.Cast(dt, 1e-4)
            for k in range(size):
                out[k] = x[k]

        lib = tvm.tirx.build(tvm.IRModule({"main": chains}), target=tvm.target.Target(cpu_target()))
        out = tvm.runtime.tensor(np.zeros(size, dt))
        n, best = 2 * 10**7 // FMA_CHAINS, float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            lib["main"](out, n)
            best = min(best, time.perf_counter() - t0)
        return n * size / best
    except Exception:  # noqa: BLE001 -- a benchmark's annotation, never its failure
        return None


@functools.lru_cache(maxsize=None)
def measured_clock() -> Optional[float]:
    """The clock one core runs at, in Hz: a compiled loop whose every iteration is three
    dependent one-cycle integer operations (shift, xor, add: one cycle each on every x86 and
    Arm core), timed; None where it cannot be built.  One busy core may boost higher than
    all cores together, so the share printed with it errs low."""
    try:
        import numpy as np
        import tvm
        from tvm.script import tirx as T

        from tvmred.targets import cpu_target

        @T.prim_func
        def chain(out: T.Buffer((1,), "int64"), n: T.int64):
            x = T.alloc_buffer((1,), "int64")
            x[0] = T.int64(12345)
            for _ in range(n):
                x[0] = T.bitwise_xor(x[0], T.shift_right(x[0], T.int64(1))) + T.int64(1)
            out[0] = x[0]

        lib = tvm.tirx.build(tvm.IRModule({"main": chain}), target=tvm.target.Target(cpu_target()))
        out = tvm.runtime.tensor(np.zeros(1, "int64"))
        n, best = 10**8, float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            lib["main"](out, n)
            best = min(best, time.perf_counter() - t0)
        return 3 * n / best
    except Exception:  # noqa: BLE001 -- a benchmark's annotation, never its failure
        return None
