"""Loading compiled kernels without the TVM compiler.

``import tvm`` costs 0.3-0.4 s even through :mod:`tvmred._tvm` (the 260 MB compiler library
and TVM's Python package; as it is, 1.2-3 s), and TVM's small FFI package alone imports
``ml_dtypes`` (half a second) and torch.  A process whose kernels are all in the disk cache
needs none of it: a compiled kernel is a shared library that only calls TVM's runtime
library.  So, until something has to be compiled, tvmred

* takes the TVM version from the package metadata and LLVM's name for this CPU from
  ``host.json`` (see :mod:`tvmred.targets`);
* loads a kernel -- CPU or CUDA -- and calls it through the C ABI of TVM's FFI
  (:mod:`tvmred.cabi`: ctypes, ``libtvm_ffi`` and ``libtvm_runtime``).

When that path is not available (``TVM_LIBRARY_PATH`` points TVM elsewhere, a library is
missing) the kernel is loaded with ``tvm.runtime.load_module``.  Importing TVM later in the
same process is fine: it loads the same runtime libraries.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import _tvm, cabi

log = logging.getLogger("tvmred")


def load_module(path: str, device_kind: str) -> Any:
    """The runtime module in ``path`` (``mod["main"]`` is its function), for a kernel of
    target kind ``device_kind`` ("llvm", "cuda")."""
    if "TVM_LIBRARY_PATH" not in os.environ:  # TVM may then load another libtvm_runtime
        try:
            if device_kind == "cuda":
                cabi.cuda_runtime()
            return cabi.Module(path)
        except OSError as e:
            log.debug("tvmred: %s through TVM's Python package (%s)", path, e)
    _tvm.load()
    import tvm

    return tvm.runtime.load_module(path)
