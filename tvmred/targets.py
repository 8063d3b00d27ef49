"""TVM targets: the host CPU's LLVM target, CUDA targets, and the target for a torch device.

LLVM's name for this CPU (``znver5``, ``emeraldrapids``, ...) is part of every CPU kernel's
cache key.  Asking LLVM needs ``import tvm`` (about a second), so the answer is recorded in
``host.json`` in the cache directory, per CPU signature (what LLVM's detection looks at:
vendor, family, model, flags), and a later process on the same CPU reads it from there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import schedules
from .settings import cache_dir


@functools.lru_cache(maxsize=None)
def tvm_version() -> str:
    """TVM's version, from the package metadata while TVM is not imported."""
    if "tvm" not in sys.modules:
        from importlib import metadata

        try:
            return metadata.version("apache-tvm")
        except metadata.PackageNotFoundError:
            pass
    import tvm

    return tvm.__version__


def _cpu_signature() -> str | None:
    """A hash of what LLVM's host-CPU detection looks at (vendor, family, model, flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    first = text.split("\n\n")[0]
    keep = ("vendor_id", "cpu family", "model", "model name", "flags")
    fields = [ln for ln in first.splitlines() if ln.split(":")[0].strip() in keep]
    if not fields:
        return None
    return hashlib.sha256("\n".join(fields + [tvm_version()]).encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """LLVM's name for this CPU, recorded per CPU signature in ``host.json``."""
    sig = _cpu_signature()
    path = cache_dir() / "host.json"
    known: dict = {}
    if sig is not None:
        try:
            known = json.loads(path.read_text())
            if isinstance(known, dict) and isinstance(known.get(sig), str):
                return known[sig]
        except (OSError, ValueError):
            known = {}
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    if sig is not None and isinstance(known, dict):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".host.{os.getpid()}.json")
            tmp.write_text(json.dumps({**known, sig: mcpu}))
            os.replace(tmp, path)
        except OSError:
            pass
    return mcpu


@functools.lru_cache(maxsize=None)
def cpu_target() -> dict:
    """The LLVM target for this CPU: the explicit CPU name (``-mcpu=native`` is silently
    generic in TVM 0.27), overridable with ``TVMRED_LLVM_MCPU``."""
    return {"kind": "llvm", "mcpu": os.environ.get("TVMRED_LLVM_MCPU") or host_cpu()}


def cuda_target(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch, "host": cpu_target()}


def target_for(device: Any) -> dict:
    """The TVM target for a torch device (the template of its device type builds it)."""
    return schedules.for_device(device.type).make_target(device, cpu_target())


def device_type(target: dict) -> str:
    """The torch device type a target's kernels run on ("cpu", "cuda")."""
    return schedules.template(target["kind"]).device
