"""Running cached CPU kernels without importing the TVM compiler.

``import tvm`` costs ~0.8 s (it loads the 260 MB compiler library and TVM's whole Python
package), pykeops' import 0.07 s.  A process whose kernels are all in the disk cache needs
none of it: a cached CPU kernel is a shared library that only calls TVM's small runtime
library.  So, until something has to be compiled, tvmred

* takes the TVM version from the package metadata, not from ``tvm.__version__``;
* takes LLVM's name for this CPU (part of the cache key) from ``host.json`` in the cache
  directory, recorded by the first process that imported TVM on a CPU with the same
  ``/proc/cpuinfo`` model and flags;
* loads a cached CPU kernel with ``tvm_ffi`` after ``libtvm_runtime.so`` (RTLD_GLOBAL).

Anything else (a compile, a CUDA kernel, no metadata, no ``/proc/cpuinfo``, a failed load)
imports TVM as before.  Importing TVM later in the same process is fine: it loads the same
runtime library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=None)
def tvm_version() -> str:
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
    """LLVM's name for this CPU (``znver5``, ...), recorded per CPU signature in the cache
    directory so that later processes need not import TVM to know it."""
    from .cache import cache_dir

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
def _runtime_loaded() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtvm_runtime.so"
    if not lib.exists():
        return False
    import tvm_ffi  # noqa: F401  (loads libtvm_ffi, which libtvm_runtime needs)

    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return True


def load_module(path: str, device_kind: str) -> Any:
    """The runtime module in ``path``: through ``tvm_ffi`` alone for a CPU kernel while TVM
    is not imported, else through ``tvm.runtime.load_module``."""
    # (with TVM_LIBRARY_PATH TVM may load another libtvm_runtime later: not worth the risk)
    if device_kind == "llvm" and "tvm" not in sys.modules and "TVM_LIBRARY_PATH" not in os.environ:
        try:
            if _runtime_loaded():
                import tvm_ffi

                return tvm_ffi.load_module(path)
        except (OSError, RuntimeError):
            pass
    import tvm

    return tvm.runtime.load_module(path)
