"""The compile pipeline, top to bottom:

    formula tree --lower--> TE PrimFunc --template.schedule--> scheduled IRModule
      --template.finish--> --tvm.tirx.build--> Executable --cache--> runtime function

(``template`` is the target's record in :mod:`tvmred.schedules`.)  ``get_kernel`` is the entry
point; what it produces is cached in memory and on disk (see :mod:`tvmred.cache`), keyed by the
canonical formula text, the reduction, dtypes, target and the tvmred/TVM versions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import _tvm, cache, compile_client, cudatool, loops, schedules, tunedb
from .arrays import HALF, compute_dtype
from .errors import KernelNotExported
from .lower import lower, storage_dtype
from .ops import DOT_GUARDS, GUARD_OPS
from .reductions.core import KernelSpec
from .targets import codegen_target, target_for, tvm_version
from .tree import Node, variables

log = logging.getLogger("tvmred")
__version__ = "0.1.0"
DTYPES = ("float32", "float64", *HALF)


@dataclass(frozen=True)
class Kernel:
    """A compiled reduction: ``fn(*inputs, *state, Mb, N)`` (see :mod:`tvmred.lower`)."""

    fn: Any
    inputs: tuple[Node, ...]
    row_block: int
    state: tuple[tuple[int, str], ...]  # (cols, dtype) of each output buffer
    config: Optional[dict] = None  # tuned schedule knobs, None = the template's defaults
    tile: int = 0  # reduced rows per tile: the tiled signature (Mb, N, S, Ct), inputs padded


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """Hash of the sources that shape generated code, so that a changed op, reduction or
    schedule never reuses a stale cached kernel (even without a version bump)."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).parent
    files = ["ops.py", "lower.py", "build.py", "mathfns.py", "cudatool.py"]  # + CUDA's rewrite
    paths = [here / f for f in files] + sorted((here / "reductions").glob("*.py"))
    paths += sorted(Path(schedules.__file__).parent.glob("*.py"))
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def key_text(spec: KernelSpec, target: dict, config: Optional[dict] = None) -> str:
    """The cache key; without ``config`` it is also the tuning database's key.  Reductions
    that share a kernel (Min, ArgMin, Min_ArgMin...) share the key."""
    key = {
        "formula": str(spec.formula),
        "red": spec.rdef.kind + ":" + spec.rdef.kernel,
        "variant": spec.variant.key(),
        "out_cat": spec.out_cat,
        "dtype": spec.dtype,
        "acc": spec.acc,
        "target": target,
        "tvmred": __version__,
        "code": code_fingerprint(),
        "tvm": tvm_version(),
    }
    if config:
        key["schedule"] = config
    key.update(schedules.template(target["kind"]).settings(target))
    tile = tile_for(spec, target, config)
    if tile:  # the template's default tile may change (TVMRED_CUDA_TILE): it is in the key
        key["tile"] = tile
    return json.dumps(key, sort_keys=True)


def row_block_for(spec: KernelSpec, target: dict, config: Optional[dict] = None) -> int:
    """Rows per block: the tuned value, else the template's rule for the values per row the
    reduction keeps in registers."""
    dtype = compute_dtype(spec.dtype)
    narrow = spec.variant.narrow
    kind = spec.rdef.kind + ("+guard" if spec.formula.op in DOT_GUARDS else "")
    return schedules.row_block(
        target, dtype, config, spec.registers(), narrow, _reduced_values(spec), kind
    )


def row_block_of(spec: KernelSpec, device: Any) -> int:
    """The row block of ``get_kernel(spec, device)``'s kernel, without compiling it."""
    pre = _PRELOADED.get(spec.text_key(device.type))
    if pre is not None:
        return pre.row_block
    target = target_for(device)
    base = key_text(spec, target)
    kernel = _KERNELS.get(base)
    if kernel is not None:
        return kernel.row_block
    return row_block_for(spec, target, tunedb.lookup(base))


def tile_for(spec: KernelSpec, target: dict, config: Optional[dict] = None) -> int:
    """Reduced rows per tile (0: none): the tuned or default tile, fitted to the bytes one
    reduced row of the formula's reduced-index inputs takes (as the kernel stores them)."""
    bits = int("".join(c for c in storage_dtype(spec.dtype) if c.isdigit()))  # float32: 32
    row_bytes = _reduced_values(spec) * bits // 8
    return schedules.tile(target, compute_dtype(spec.dtype), config, row_bytes)


def _reduced_values(spec: KernelSpec) -> int:
    """Values of the reduced-index inputs a pair reads (one reduced row of them all; the
    dot-product guard's norms and points, ``NormGuard(f, n, y)``, are read at few pairs)."""
    f = spec.formula.args[0] if spec.formula.op in GUARD_OPS else spec.formula
    return sum(v.dim for v in variables(f) if v.params[2] == 1 - spec.out_cat)


@_tvm.lean()
def compile_reduction(
    spec: KernelSpec, target: dict, config: Optional[dict] = None
) -> tuple[Any, dict]:
    """Lower, schedule and compile (no cache): a ``tvm.runtime.Executable`` and its metadata
    (``kind``: the target kind, ``row_block``, ``tile``)."""
    import tvm
    from tvm import s_tir

    tpl = schedules.template(target["kind"])
    if target["kind"] == "cuda":
        cudatool.setup()  # NVRTC with pip's CUDA headers when there is no toolkit
    rb = row_block_for(spec, target, config)
    tile = tile_for(spec, target, config)
    cdt = compute_dtype(spec.dtype)
    two_pass = schedules.two_pass(target, cdt, config, tile)
    two_pass *= spec.red != "Sum" or tpl.two_pass_sums
    low = lower(spec, rb, tpl.math(target), tile, two_pass, tpl.sum_chains(cdt, two_pass))
    sch = tpl.schedule(s_tir.Schedule(low.func), low.shape, target)
    mod = loops.bind_lanes(sch.mod, low.loops)
    mod = tpl.finish(schedules.task_counts(mod, low.shape, target), low.shape, target)
    # TVM's common-subexpression pass is quadratic in a kernel's size; the lowering already
    # computes shared sub-formulas once per pair, and LLVM / NVCC eliminate what is left
    cuda = cudatool.building() if target["kind"] == "cuda" else contextlib.nullcontext()
    with cuda, tvm.transform.PassContext(config={"tirx.disable_cse_tir": True, **tpl.passes}):
        # what tvm.compile does for a module without Relax functions, without its look for
        # them (which would import tvm.relax, left unimported by tvmred._tvm.load)
        built = tvm.tirx.build(mod, target=tvm.target.Target(codegen_target(target)))
        ex = tvm.runtime.Executable(built)
    return ex, {"kind": tpl.kind, "row_block": rb, "tile": tile}


def describe(spec: KernelSpec, device: str) -> str:
    """The kernel in words, for messages."""
    options = "".join(f", {k}={v}" for k, v in spec.variant.key().items())
    text = str(spec.formula)
    text = text if len(text) <= 400 else f"{text[:400]}... ({len(text)} characters)"
    return (
        f"{spec.red} over {'ij'[1 - spec.out_cat]} of {text} ({spec.dtype}, "
        f"accumulator {spec.acc}, {device}{options})"
    )


def get_kernel(spec: KernelSpec, device: Any) -> Kernel:
    """The compiled kernel (memory cache, else disk cache, else compile)."""
    if spec.dtype not in DTYPES:
        raise TypeError(f"tvmred supports {DTYPES}, got {spec.dtype}")
    pre = _PRELOADED.get(spec.text_key(device.type))
    if pre is not None:
        return pre
    if _runtime_only():
        raise KernelNotExported(
            f"no exported kernel for {describe(spec, device.type)}, and the TVM compiler is "
            "not available (TVM_USE_RUNTIME_LIB=1?) to build it"
        )
    target = target_for(device)
    base = key_text(spec, target)
    kernel = _KERNELS.get(base)
    if kernel is None:
        config = tunedb.lookup(base)
        if config is not None:
            log.debug("tvmred: tuned schedule %s for %s", config, describe(spec, device.type))
        what = describe(spec, _describe(target))
        key = key_text(spec, target, config)
        extra = {"formula": str(spec.formula), "reduction": spec.red, "schedule": config}
        job = {"key": key, "spec": spec, "target": target, "config": config, "extra": extra}
        mod, meta = cache.get_or_build(
            key,
            lambda: timed(what, lambda: compile_reduction(spec, target, config)),
            extra,
            remote=lambda: _remote({**job, "what": what}),
        )
        kernel = make_kernel(mod["main"], spec, meta["row_block"], config, meta.get("tile", 0))
        _KERNELS[base] = kernel
    return kernel


SLOW_COMPILE = 5.0  # seconds after which a running compile says so on stderr


def timed(what: str, build: Any) -> Any:
    """``build()``, logged at INFO level with its time (``TVMRED_VERBOSE=1``); one warning
    line if it runs for more than SLOW_COMPILE seconds, so a long first call is explained."""
    import threading

    log.info("compiling %s", what)
    t0 = time.perf_counter()
    timer = threading.Timer(SLOW_COMPILE, log.warning, (f"tvmred: still compiling {what} ...",))
    timer.daemon = True
    timer.start()
    res = False
    try:
        res = build()
        return res
    finally:
        timer.cancel()
        if res is not False:  # False: the compile server did not compile it
            log.info("compiled in %.2f s", time.perf_counter() - t0)


def identity() -> str:
    """What a compile server must share with its clients: the code that shapes kernels, TVM's
    version, the Python executable."""
    return json.dumps([__version__, code_fingerprint(), tvm_version(), sys.executable])


def _remote(payload: dict) -> bool:
    """The compile server built the kernel into the disk cache (unless this process has TVM
    imported already: then compiling here is as quick)."""
    if "tvm" in sys.modules:
        compile_client.ensure(identity())
        return False
    what = payload["what"]
    return timed(
        f"{what} on the compile server", lambda: compile_client.request(payload, identity())
    )


def _describe(target: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in target.items() if k != "host")


def make_kernel(
    fn: Any, spec: KernelSpec, row_block: int, config: Optional[dict] = None, tile: int = 0
) -> Kernel:
    """The :class:`Kernel` around a compiled ``main`` of this kernel spec."""
    state = tuple(spec.state())
    return Kernel(fn, tuple(variables(spec.formula)), row_block, state, config, tile)


_KERNELS: dict[str, Kernel] = {}
_PRELOADED: dict[tuple, Kernel] = {}  # from tvmred.load(): (formula, red, ..., device type)

#: Bumped whenever the kernel a call would get may have changed (cache cleared, a library
#: loaded, a tuning stored): memos of kernels above this layer compare it.
generation = 0


def outdate_memos() -> None:
    global generation
    generation += 1


def invalidate(base_key: Optional[str] = None) -> None:
    """Forget in-process kernels (the one of ``base_key``, or all) and outdate every memo."""
    outdate_memos()
    if base_key is None:
        _KERNELS.clear()
    else:
        _KERNELS.pop(base_key, None)


def register_kernel(key: tuple, kernel: Kernel) -> None:
    _PRELOADED[key] = kernel
    outdate_memos()


def _runtime_only() -> bool:
    """True when this process cannot compile, decided without importing TVM if possible."""
    if os.environ.get("TVM_USE_RUNTIME_LIB") == "1":
        return True
    return "tvm" in sys.modules and not compiler_available()


@functools.lru_cache(maxsize=None)
def compiler_available() -> bool:
    """False when only TVM's runtime library is loaded (``TVM_USE_RUNTIME_LIB=1``)."""
    _tvm.load()
    import tvm

    return tvm.get_global_func("target.build.llvm", allow_missing=True) is not None


cache.on_clear.append(invalidate)
