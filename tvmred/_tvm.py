"""TVM, imported on first use: parsing, differentiating and calling cached kernels never
import it (``import tvm`` costs about a second).

Every place in tvmred that imports TVM either calls :func:`load` first or runs under
:func:`lean` (compiling, storing, exporting): TVM is imported and used **without ml_dtypes**
when nothing has imported ml_dtypes yet.  TVM's FFI package imports it only to map numpy's bfloat16/float8 dtypes (and
carries on without it), and it was 0.5-0.7 s of the ~2.3 s a fresh process took for its
first compile (``benchmarks/bench_startup.py``: 2.3-2.6 -> 1.6-1.8 s on a 2-vCPU Xeon).
tvmred never hands TVM such arrays (kernels take bfloat16 as int16 bits, through DLPack).
The cost, in that process only: TVM converting a bfloat16/float8 numpy array or TVM tensor
(``tvm.runtime.tensor(...).numpy()``) reports ml_dtypes missing.  ``TVMRED_TVM_FULL_IMPORT=1``
imports TVM as it is; importing ml_dtypes (or jax, which does) before tvmred compiles has
the same effect.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

#: Modules TVM's package imports at start-up that tvmred's compiler does not use
SKIPPED = ("ml_dtypes",)


@contextlib.contextmanager
def lean() -> Iterator[None]:
    """While tvmred works with TVM (its import, a compile, a library export -- which imports
    ``tvm.contrib.tvmjs``, itself importing ml_dtypes): ``import ml_dtypes`` raises
    ImportError, unless something imported ml_dtypes already or TVMRED_TVM_FULL_IMPORT=1."""
    if os.environ.get("TVMRED_TVM_FULL_IMPORT", "0") not in ("", "0"):
        yield
        return
    blocked = [m for m in SKIPPED if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # "import m" raises ImportError
    try:
        yield
    finally:
        for m in blocked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]  # a later "import m" imports it


def load() -> Any:
    """``import tvm`` (see the module docstring); the module."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    with lean():
        import tvm
    return tvm


def te() -> Any:
    load()
    from tvm import te as module

    return module


def tirx() -> Any:
    load()
    from tvm import tirx as module

    return module
