"""Autotuning by measured search over our schedule templates' knobs.

MetaSchedule is not used: in apache-tvm 0.27.0.post1 ``meta_schedule.tune_tir`` segfaults in
``ToJSONGraph`` while building its TuneContext (even for a 128x128 matmul; see the TVM notes),
and its search space knows nothing of our reduction layout.  Like AutoTVM, we measure the
knob settings the target's template offers (``TargetTemplate.candidates``: rows per block; on
CUDA tiles and a LogSumExp's blocks of j too), pick the fastest, and store it.

The records go to the tuning database (:mod:`tvmred.tunedb`), which ``build.get_kernel`` reads
automatically (it logs the choice at DEBUG level, logger "tvmred").
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Sequence

from . import build, hoist, schedules, tunedb
from .frontend import reduction_from
from .launch import check_args, invoke, kernel_args, run
from .targets import target_for


def _progress(i: int, n: int, text: str) -> None:
    bar = "#" * (20 * i // n) + "." * (20 - 20 * i // n)
    sys.stderr.write(f"\r[{bar}] {i}/{n} {text:60.60s}")
    sys.stderr.flush()
    if i == n:
        sys.stderr.write("\n")


def tune(
    formula: str,
    aliases: Sequence[str],
    reduction_op: str = "Sum",
    axis: int = 0,
    dtype: str = "float32",
    sizes: tuple[int, int] = (10_000, 10_000),
    trials: Optional[int] = None,
    repeats: int = 3,
    progress: bool = True,
    device: Any = None,
    **genred_kw: Any,
) -> dict:
    """Measure up to ``trials`` knob settings of the forward kernel of this reduction on random
    data of ``sizes`` = (M, N), store the fastest in the tuning database and return the record
    (``config``, ``time_s``, ``default_time_s``, ``trials``).  ``device``: where to measure
    (a torch device or its name; default: torch's default device), which picks the target."""
    import torch

    r = reduction_from(formula, aliases, reduction_op, axis, **genred_kw)
    tdt = getattr(torch, dtype)
    dev = torch.device(device) if device is not None else torch.get_default_device()
    gen = torch.Generator().manual_seed(0)  # a CPU generator: the same data on every device
    args = []
    for v in r.args:
        pos, dim, cat = v.params
        rows = sizes[0] if cat == r.out_cat else sizes[1]
        shape = (dim,) if cat == 2 else (rows, dim)
        args.append(
            torch.rand(*shape, generator=gen, dtype=torch.float64, device="cpu").to(
                device=dev, dtype=tdt
            )
        )
    h = hoist.plan(r, dtype)
    if hoist.pays(h, *sizes, dev.type):  # the pair kernel calls run at these sizes
        args += [run(s, [args[k] for k in ks]) for s, ks in h.subs]
        r = h.main
    spec = r.spec(dtype)
    target = target_for(args[0].device)
    key = build.key_text(spec, target)
    default = build.row_block_for(spec, target)
    space = schedules.template(target["kind"]).candidates(target, dtype, default)
    blocked = spec.rdef.blocked(spec.formula, spec.dtype)
    space = [c for c in space if blocked or "two_pass" not in c][: trials or None]
    results, first = [], None
    for n, config in enumerate(space):
        if progress:
            _progress(n, len(space), f"compiling and timing {config}")
        ex, meta = build.compile_reduction(spec, target, config)
        kernel = build.make_kernel(ex.mod["main"], spec, meta["row_block"], config, meta["tile"])
        seconds, state = _time(kernel, r, args, repeats)
        if first is None:
            first = state
        elif not _agree(state, first):  # a schedule must not change the answer
            results.append({"config": config, "time_s": None, "error": "wrong result"})
            continue
        results.append({"config": config, "time_s": seconds})
    if progress:
        _progress(len(space), len(space), "done")
    best = min((t for t in results if t["time_s"] is not None), key=lambda t: t["time_s"])
    record = {
        "config": best["config"],
        "time_s": best["time_s"],
        "default_time_s": results[0]["time_s"],
        "trials": results,
        "sizes": list(sizes),
        "formula": formula,
        "reduction": reduction_op,
        "date": time.time(),
    }
    tunedb.write(key, record)
    build.invalidate(key)  # the next call compiles (or loads) the tuned kernel
    return record


def _agree(a: list, b: list) -> bool:
    """The state buffers of two schedules of one kernel: equal up to summation order."""
    import torch

    for x, y in zip(a, b):
        if x.dtype == torch.int64 or x.dtype == torch.int32:
            continue  # ties may pick another index under another order
        tol = 1e-3 if x.dtype == torch.float32 else 1e-9
        if not torch.allclose(x, y, rtol=tol, atol=tol * float(y.abs().max()), equal_nan=True):
            return False
    return True


def _time(kernel: Any, r: Any, args: list, repeats: int) -> tuple[float, list]:
    """(best time of ``repeats`` launches, the output rows of the state buffers)."""
    import torch

    dtype, n_out, n_red = check_args(r, args)
    inputs, state, sizes = kernel_args(r, kernel, args, n_out, n_red)
    sync = torch.cuda.synchronize if args[0].device.type == "cuda" else (lambda: None)
    invoke(kernel.fn, state[0], *inputs, *state, *sizes)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        invoke(kernel.fn, state[0], *inputs, *state, *sizes)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, [(t[0] if kernel.tile else t)[:n_out] for t in state]
