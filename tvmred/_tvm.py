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

TVM's FFI package also imports **torch** when it is installed (a workaround for a symbol clash
on Windows), so a numpy or jax process paid torch's import (1-5 s) at its first compile, and
so did the compile server.  :func:`load` imports TVM with torch blocked as well when torch is
not imported yet (TVM's FFI then has no torch-specific fast path, which tvmred does not use:
kernels are called through :mod:`tvmred.cabi`).  While TVM is imported (under a second,
once a process), another thread's ``import torch`` or ``import ml_dtypes`` would fail."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

#: Modules TVM's package imports that tvmred's compiler does not use: blocked while tvmred
#: compiles (SKIPPED) and also while TVM's package is imported (SKIPPED_AT_IMPORT)
SKIPPED = ("ml_dtypes",)
SKIPPED_AT_IMPORT = ("torch",)


@contextlib.contextmanager
def lean(more: tuple = ()) -> Iterator[None]:
    """While tvmred works with TVM (its import, a compile, a library export -- which imports
    ``tvm.contrib.tvmjs``, itself importing ml_dtypes): ``import ml_dtypes`` (and of the
    modules in ``more``) raises ImportError, unless something imported it already or
    TVMRED_TVM_FULL_IMPORT=1."""
    if os.environ.get("TVMRED_TVM_FULL_IMPORT", "0") not in ("", "0"):
        yield
        return
    blocked = [m for m in SKIPPED + more if m not in sys.modules]
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
    with lean(SKIPPED_AT_IMPORT):
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
