"""TVM targets: the host CPU's LLVM target, CUDA targets, and the target for a torch device.

LLVM's name for this CPU (``znver5``, ``emeraldrapids``, ...) is part of every CPU kernel's
cache key.  Asking LLVM needs ``import tvm`` (0.3-0.4 s: :mod:`tvmred._tvm`), so on Linux the
answer is recorded in ``host.json`` in the cache directory, per CPU signature (what LLVM's
detection looks at: vendor, family, model, flags, from /proc/cpuinfo) together with the ISA
extensions it implies, and a later process on the same CPU reads it from there after checking
those extensions against the running CPU.  Elsewhere (macOS, Windows) LLVM is asked every time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import _tvm, schedules
from .settings import cache_dir, make_private_dir, untrusted


@functools.lru_cache(maxsize=None)
def tvm_version() -> str:
    """TVM's version, from the package metadata while TVM is not imported."""
    if "tvm" not in sys.modules:
        from importlib import metadata

        try:
            return metadata.version("apache-tvm")
        except metadata.PackageNotFoundError:
            pass
    _tvm.load()
    import tvm

    return tvm.__version__


#: ISA extensions recorded with the CPU name and checked against the running CPU (LLVM's
#: feature name -> /proc/cpuinfo's); a kernel compiled for a CPU that has one of them would
#: fault on a CPU that lacks it.
_FEATURES = {"sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f",
             "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
             "neon": "asimd"}  # fmt: skip


def _cpuinfo() -> tuple[str, set[str]] | None:
    """(signature, ISA flags) of this CPU from /proc/cpuinfo (Linux), None elsewhere: the
    signature hashes what LLVM's host-CPU detection looks at (vendor, family, model, flags)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return None
    keep = ("vendor_id", "cpu family", "model", "model name", "flags", "CPU implementer",
            "CPU part", "CPU variant", "Features")  # fmt: skip
    fields = [ln for ln in first.splitlines() if ln.split(":")[0].strip() in keep]
    flags = {f for ln in fields if ln.split(":")[0].strip() in ("flags", "Features")
             for f in ln.split(":", 1)[1].split()}  # fmt: skip
    if not flags:
        return None
    sig = hashlib.sha256("\n".join(fields + [tvm_version()]).encode()).hexdigest()[:24]
    return sig, flags


@functools.lru_cache(maxsize=None)
def host_flags() -> frozenset:
    """The running CPU's ISA flags from /proc/cpuinfo (empty elsewhere)."""
    info = _cpuinfo()
    return frozenset(info[1]) if info else frozenset()


def _detect() -> dict:
    """LLVM's name for this CPU and the ISA extensions it implies (imports TVM)."""
    _tvm.load()
    from tvm.target import Target, codegen

    mcpu = codegen.llvm_get_system_cpu()
    target = Target({"kind": "llvm", "mcpu": mcpu})
    features = [f for f in _FEATURES if codegen.llvm_cpu_has_features(f, target)]
    return {"mcpu": mcpu, "features": features}


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """LLVM's name for this CPU, recorded per CPU signature in ``host.json``.  A recorded
    entry is used only if every ISA extension it implies is in the running CPU's flags."""
    info = _cpuinfo()
    path = cache_dir() / "host.json"
    known: dict = {}
    if info is not None:
        sig, flags = info
        try:
            known = json.loads(path.read_text()) if _trusted(path) else {}
            entry = known.get(sig) if isinstance(known, dict) else None
            if _valid(entry, flags):
                return entry["mcpu"]
        except (OSError, ValueError, AttributeError):
            known = {}
    detected = _detect()
    if info is not None and isinstance(known, dict):
        try:
            make_private_dir(path.parent)
            tmp = path.with_name(f".host.{os.getpid()}.json")
            tmp.write_text(json.dumps({**known, info[0]: detected}))
            os.replace(tmp, path)
        except OSError:
            pass
    return detected["mcpu"]


def host_known() -> bool:
    """Whether this CPU's LLVM name is known without importing TVM (``TVMRED_LLVM_MCPU``, or
    a valid ``host.json`` entry)."""
    if os.environ.get("TVMRED_LLVM_MCPU") or host_cpu.cache_info().currsize:
        return True
    info = _cpuinfo()
    if info is None:
        return False
    try:
        path = cache_dir() / "host.json"
        known = json.loads(path.read_text()) if _trusted(path) else {}
        return isinstance(known, dict) and _valid(known.get(info[0]), info[1])
    except (OSError, ValueError):
        return False


def _trusted(path: Path) -> bool:
    """host.json and its directory are this user's (:func:`tvmred.settings.untrusted`): a
    CPU name from another account could pick instructions this CPU lacks."""
    return untrusted(path) is None and untrusted(path.parent) is None


def _valid(entry: Any, flags: set[str]) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("mcpu"), str):
        return False
    features = entry.get("features")
    if not isinstance(features, list) or any(f not in _FEATURES for f in features):
        return False
    return all(_FEATURES[f] in flags for f in features)


@functools.lru_cache(maxsize=None)
def cpu_target() -> dict:
    """The LLVM target for this CPU: the explicit CPU name (``-mcpu=native`` is silently
    generic in TVM 0.27), overridable with ``TVMRED_LLVM_MCPU``."""
    return {"kind": "llvm", "mcpu": os.environ.get("TVMRED_LLVM_MCPU") or host_cpu()}


def codegen_target(target: dict) -> dict:
    """The target as LLVM builds it: CPU kernels with LLVM's ``arcp`` fast-math flag alone --
    a division by a value the loop does not change (a constant, a parameter: ``x / eps``,
    ``/ (2 * sigma**2)``) becomes a multiply by its reciprocal, computed once.  A vdivps
    costs 5-10 times an FMA's throughput (a Sinkhorn LogSumExp ``(f - C) / eps``: 4 of them
    in its loop, 1.1-1.3x slower); the result may differ from the division by 1 ulp.  No other
    fast-math flag: NaN, infinities, signed zeros and the order of sums stay IEEE's."""
    if target.get("kind") == "llvm":
        return {**target, "fast-math-arcp": True}
    return target


def cuda_target(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch, "host": cpu_target()}


def target_for(device: Any) -> dict:
    """The TVM target for a torch device (the template of its device type builds it)."""
    return schedules.for_device(device.type).make_target(device, cpu_target())


def device_type(target: dict) -> str:
    """The torch device type a target's kernels run on ("cpu", "cuda")."""
    return schedules.template(target["kind"]).device
