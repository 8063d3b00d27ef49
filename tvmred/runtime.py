"""Running cached CPU kernels without importing the TVM compiler.

``import tvm`` costs ~0.8 s (it loads the 260 MB compiler library and TVM's whole Python
package), pykeops' import 0.07 s.  A process whose kernels are all in the disk cache needs
none of it: a cached CPU kernel is a shared library that only calls TVM's small runtime
library.  So, until something has to be compiled, tvmred

* takes the TVM version from the package metadata and LLVM's name for this CPU from
  ``host.json`` (see :mod:`tvmred.targets`);
* loads a cached CPU kernel with ``tvm_ffi`` after ``libtvm_runtime.so`` (RTLD_GLOBAL).

Anything else (a compile, a CUDA kernel, no metadata, no ``/proc/cpuinfo``, a failed load)
imports TVM as before.  Importing TVM later in the same process is fine: it loads the same
runtime library.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Any


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
