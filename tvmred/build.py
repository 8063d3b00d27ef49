"""The compile pipeline, top to bottom:

    formula tree --lower--> TE PrimFunc --schedule--> scheduled IRModule --tvm.compile-->
    Executable --cache--> runtime function

``get_kernel`` is the only entry point; everything it produces is cached in memory and on disk
(see :mod:`tvmred.cache`), keyed by the canonical formula text, the reduction, dtypes, target
and the tvmred/TVM versions.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

from . import cache
from .reductions import REDUCTIONS
from .tree import Node, variables

log = logging.getLogger("tvmred")
__version__ = "0.1.0"
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Kernel:
    """A compiled reduction: ``fn(*inputs, out, Mb, N)`` (see :mod:`tvmred.lower`)."""

    fn: Any
    inputs: tuple[Node, ...]
    row_block: int
    state: tuple[tuple[int, str], ...]  # (cols, dtype) of each output buffer
    config: Optional[dict] = None  # tuned schedule knobs, None = the template's defaults


@functools.lru_cache(maxsize=None)
def cpu_target() -> dict:
    """The LLVM target for this CPU: the explicit CPU name (``-mcpu=native`` is silently
    generic in TVM 0.27), overridable with ``TVMRED_LLVM_MCPU``."""
    from .runtime import host_cpu

    return {"kind": "llvm", "mcpu": os.environ.get("TVMRED_LLVM_MCPU") or host_cpu()}


def cuda_target(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch, "host": cpu_target()}


def target_for(device: Any) -> dict:
    """The TVM target for a torch device: LLVM for the CPU, CUDA with the card's sm_XY."""
    if device.type == "cpu":
        return cpu_target()
    if device.type == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return cuda_target(f"sm_{major}{minor}")
    raise NotImplementedError(f"tvmred runs on CPU and CUDA devices, not on {device.type!r}")


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """Hash of the sources that shape generated code, so that a changed op, reduction or
    schedule never reuses a stale cached kernel (even without a version bump)."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).resolve().parent
    files = ["ops.py", "lower.py", "reductions.py", "build.py", "mathfns.py"]
    paths = [here / f for f in files] + sorted((here / "schedules").resolve().glob("*.py"))
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def key_text(
    formula: Node,
    red: str,
    out_cat: int,
    dtype: str,
    acc: str,
    target: dict,
    opt: Any = None,
    config: Optional[dict] = None,
) -> str:
    """The cache key; without ``config`` it is also the tuning database's key."""
    from .runtime import tvm_version

    key = {
        "formula": str(formula),
        "red": REDUCTIONS[red].kind + ":" + red,
        "opt": opt,
        "out_cat": out_cat,
        "dtype": dtype,
        "acc": acc,
        "target": target,
        "tvmred": __version__,
        "code": code_fingerprint(),
        "tvm": tvm_version(),
    }
    if config:
        key["schedule"] = config
    return json.dumps(key, sort_keys=True)


def compile_reduction(
    formula: Node,
    red: str,
    out_cat: int,
    dtype: str,
    acc: str,
    target: dict,
    opt: Any = None,
    config: Optional[dict] = None,
):
    """Lower, schedule and compile (no cache): returns a ``tvm.runtime.Executable``."""
    import tvm
    from tvm import s_tir

    from . import schedules
    from .lower import lower

    kind = target["kind"]
    rb = row_block_for(formula, red, out_cat, kind, dtype, acc, opt, config)
    low = lower(formula, REDUCTIONS[red], out_cat, dtype, acc, rb, opt, kind)
    sch = schedules.schedule(s_tir.Schedule(low.func), low.shape, kind)
    mod = schedules.finish(sch.mod, low.shape, target)
    return tvm.compile(mod, target=tvm.target.Target(target))


def get_kernel(
    formula: Node, red: str, out_cat: int, dtype: str, acc: str, device: Any, opt: int | None = None
) -> Kernel:
    """The compiled kernel for this reduction (memory cache, else disk cache, else compile)."""
    if dtype not in DTYPES:
        raise TypeError(f"tvmred supports {DTYPES}, got {dtype}")
    pre = _PRELOADED.get((str(formula), red, out_cat, dtype, acc, opt, device.type))
    if pre is not None:
        return pre
    if _runtime_only():
        from .export import KernelNotExported

        raise KernelNotExported(
            f"no exported kernel for {red} over {'i' if out_cat == 1 else 'j'} of {formula} "
            f"({dtype}, accumulator {acc}, {device.type}{'' if opt is None else f', {opt}'}), "
            "and the TVM compiler is not available (TVM_USE_RUNTIME_LIB=1?) to build it"
        )
    target = target_for(device)
    base = key_text(formula, red, out_cat, dtype, acc, target, opt)
    kernel = _KERNELS.get(base)
    if kernel is None:
        from .tune import lookup

        config = lookup(base)
        if config is not None:
            log.debug("tvmred: tuned schedule %s for %s %s", config, red, formula)
        mod = cache.get_or_build(
            key_text(formula, red, out_cat, dtype, acc, target, opt, config),
            lambda: compile_reduction(formula, red, out_cat, dtype, acc, target, opt, config),
            {"formula": str(formula), "reduction": red, "schedule": config},
        )
        kernel = make_kernel(mod["main"], formula, red, out_cat, target, dtype, acc, opt, config)
        _KERNELS[base] = kernel
    return kernel


def make_kernel(
    fn: Any,
    formula: Node,
    red: str,
    out_cat: int,
    target: dict,
    dtype: str,
    acc: str,
    opt: Any = None,
    config: Optional[dict] = None,
) -> Kernel:
    """The :class:`Kernel` around a compiled ``main`` of this reduction and schedule."""
    rb = row_block_for(formula, red, out_cat, target["kind"], dtype, acc, opt, config)
    state = tuple(REDUCTIONS[red].state(formula.dim, opt, dtype, acc))
    return Kernel(fn, tuple(variables(formula)), rb, state, config)


def row_block_for(
    formula: Node,
    red: str,
    out_cat: int,
    kind: str,
    dtype: str,
    acc: str,
    opt: Any = None,
    config: Optional[dict] = None,
) -> int:
    """Rows per block: the tuned value, else the schedule's rule for the shape: ``width`` =
    values per row that the block keeps in registers across the j loop, its reduction state
    (a block sum's int32 column is the j counter, the same in every lane: not counted)."""
    from . import schedules

    rd = REDUCTIONS[red]
    state = rd.state(formula.dim, opt, dtype, acc)
    width = sum(c for c, dt in state if not (rd.kind == "sum" and dt == "int32"))
    return schedules.row_block(kind, dtype, config, width)


_KERNELS: dict[str, Kernel] = {}
_PRELOADED: dict[tuple, Kernel] = {}  # from tvmred.load(): (formula, red, ..., device type)


def register_kernel(key: tuple, kernel: Kernel) -> None:
    _PRELOADED[key] = kernel
    forget_memos()


def forget_memos() -> None:
    """Drop the per-Reduction kernel memo (after a cache clear, a load or a tuning)."""
    from .genred import _kernel

    _kernel.cache_clear()


def _runtime_only() -> bool:
    """True when this process cannot compile, decided without importing TVM if possible."""
    if os.environ.get("TVM_USE_RUNTIME_LIB") == "1":
        return True
    import sys

    return "tvm" in sys.modules and not compiler_available()


@functools.lru_cache(maxsize=None)
def compiler_available() -> bool:
    """False when only TVM's runtime library is loaded (``TVM_USE_RUNTIME_LIB=1``)."""
    import tvm

    return tvm.get_global_func("target.build.llvm", allow_missing=True) is not None


cache.on_clear.append(_KERNELS.clear)
cache.on_clear.append(forget_memos)
