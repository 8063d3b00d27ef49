"""``pykeops.config`` under the alias: what pykeops code reads of its configuration, with
tvmred's real values -- ``numpy_found`` / ``torch_found`` (installed), ``gpu_available`` (a
CUDA device that torch sees, and TVM's CUDA runtime library; decided without importing torch
unless it is already imported), ``get_build_folder()`` (tvmred's cache directory)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
from pathlib import Path

from .pykeops import get_build_folder, numpy_found, torch_found


def _gpu_available() -> bool:
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtvm_runtime_cuda.so"
    if not lib.exists():
        return False
    if sys.modules.get("torch") is not None:  # None: an import blocked (tvmred._tvm)
        return bool(sys.modules["torch"].cuda.is_available())
    return ctypes.util.find_library("cuda") is not None and os.path.exists("/dev/nvidiactl")


gpu_available = _gpu_available()
build_folder = get_build_folder()

__all__ = ["build_folder", "get_build_folder", "gpu_available", "numpy_found", "torch_found"]
