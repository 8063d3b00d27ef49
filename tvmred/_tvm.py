"""TVM, imported on first use: parsing, differentiating and calling cached kernels never
import it (``import tvm``: 0.3-0.4 s through :func:`load`, 1.2-1.8 s as it is after torch or
jax, 2.4-3 s with torch not imported yet -- a 2-vCPU Xeon).

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
once a process), another thread's ``import torch`` or ``import ml_dtypes`` would fail.

``tvm.relax`` (TVM's graph-level IR, ~150 modules, 0.2-0.35 s of the import) is imported by
TVM's ``__init__`` and never used by tvmred: :func:`load` makes it a lazy module, executed on
its first attribute access (by whoever uses it later; tvmred builds its kernels with
``tvm.tirx.build``, not ``tvm.compile``, whose first act is to look for Relax functions).

TVM's import asks for ~110 operators and an object type that this build does not register;
each failed lookup is a C++ error, caught, and TVM's FFI builds every error's backtrace with
libbacktrace, whose first use reads the symbol tables (and debug information) of every loaded
library: 0.25-0.3 s (this Python has debug information), 0.75 s more in a process with
torch loaded (530 thousand symbols).  While :func:`load`
imports TVM, those two lookups first check the registered names (``ir.ListOpNames``,
``ffi.GetRegisteredTypeKeys``: tens of microseconds) and answer a missing one as TVM would (an
AttributeError / None) without a C++ error."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Any, Iterator

#: Modules TVM's package imports that tvmred's compiler does not use: blocked while tvmred
#: compiles (SKIPPED) and also while TVM's package is imported (SKIPPED_AT_IMPORT)
SKIPPED = ("ml_dtypes",)
SKIPPED_AT_IMPORT = ("torch",)
#: TVM's subpackages imported lazily (executed on first use) while TVM's package is imported
LAZY = ("tvm.relax", "tvm.s_tir.meta_schedule")


#: the module whose operator lookup is checked first while TVM's package is imported
OPS_MODULE = "tvm.ir._ffi_api"


class _Names:
    """The names in a registry's listing (``listing()``), fetched again only when a name is
    not among them and the listing's length changed."""

    def __init__(self, listing: Any) -> None:
        self.listing, self.names, self.size = listing, set(), -1

    def has(self, name: Any, fetch: bool = True) -> bool:
        if name in self.names or not fetch:
            return name in self.names
        current = self.listing()
        if len(current) != self.size:
            self.names, self.size = {str(n) for n in current}, len(current)
        return name in self.names


def _checked(lookup: Any, names: _Names, missing: Any) -> Any:
    """``lookup(name)`` for a registered name, else ``missing(name)``: no C++ error."""
    return lambda name: lookup(name) if names.has(name) else missing(name)


def _no_op(name: str) -> Any:
    raise AttributeError(f"Operator {name} is not registered")


def _unless_same(register: Any, get_op: Any, get_attr: Any, ops: _Names) -> Any:
    """``register(op, attribute, value, level)``, skipped when a known operator has that
    attribute with that value (a string) already: TVM raises for a second registration at
    the same level, and TVM's import registers some printer names twice.  (Unknown operators
    are not looked up: registering an attribute creates them, one after another.)"""

    def checked(op_name: Any, attr_key: Any, value: Any, level: Any) -> Any:
        if isinstance(value, str) and ops.has(op_name, fetch=False):
            if get_attr(get_op(op_name), attr_key) == value:
                return None
        return register(op_name, attr_key, value, level)

    return checked


class _Then(importlib.abc.Loader):
    """``loader``, then ``after(module)`` once the module has run."""

    def __init__(self, loader: Any, after: Any) -> None:
        self.loader, self.after = loader, after

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.after(module)


class _Importing(importlib.abc.MetaPathFinder):
    """While TVM's package is imported: the modules in LAZY get a lazy loader
    (importlib.util.LazyLoader); OPS_MODULE's ``GetOp`` checks the registered operators first
    and its ``RegisterOpAttr`` skips a value registered already (both restored by
    :meth:`undo`)."""

    def __init__(self) -> None:
        self.restore: list = []

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in LAZY and name != OPS_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        if name in LAZY:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        else:
            spec.loader = _Then(spec.loader, self.quiet_ops)
        return spec

    def quiet_ops(self, module: Any) -> None:
        names = ("GetOp", "ListOpNames", "RegisterOpAttr", "OpGetAttr")
        get, listing, register, attr = (getattr(module, n, None) for n in names)
        if None in (get, listing, register, attr):
            return  # another TVM: as it is
        ops = _Names(listing)
        module.GetOp = _checked(get, ops, _no_op)
        module.RegisterOpAttr = _unless_same(register, get, attr, ops)
        self.restore.append(lambda: (setattr(module, "GetOp", get),
                                     setattr(module, "RegisterOpAttr", register)))  # fmt: skip

    def undo(self) -> None:
        for restore in self.restore:
            restore()


def _full_import() -> bool:
    """TVMRED_TVM_FULL_IMPORT=1: TVM imported and used as it is."""
    return os.environ.get("TVMRED_TVM_FULL_IMPORT", "0") not in ("", "0")


@contextlib.contextmanager
def lean(more: tuple = ()) -> Iterator[None]:
    """While tvmred works with TVM (its import, a compile, a library export -- which imports
    ``tvm.contrib.tvmjs``, itself importing ml_dtypes): ``import ml_dtypes`` (and of the
    modules in ``more``) raises ImportError, unless something imported it already or
    TVMRED_TVM_FULL_IMPORT=1."""
    if _full_import():
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
    if _full_import():
        import tvm

        return tvm
    hooks = _Importing()
    sys.meta_path.insert(0, hooks)
    try:
        with lean(SKIPPED_AT_IMPORT):
            import tvm_ffi
            from tvm_ffi import core

            types = getattr(core, "_object_type_key_to_index", None)
            keys = tvm_ffi.get_global_func("ffi.GetRegisteredTypeKeys", allow_missing=True)
            if types is not None and keys is not None:  # as TVM's FFI answers a missing one
                core._object_type_key_to_index = _checked(types, _Names(keys), lambda n: None)
            try:
                import tvm
                import tvm.s_tir  # noqa: F401  (every compile's schedules; meta_schedule lazy)
            finally:
                if types is not None:
                    core._object_type_key_to_index = types
    finally:
        sys.meta_path.remove(hooks)
        hooks.undo()
    return tvm


def te() -> Any:
    load()
    from tvm import te as module

    return module


def tirx() -> Any:
    load()
    from tvm import tirx as module

    return module
