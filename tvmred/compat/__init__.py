"""Run code written for pykeops on tvmred, unchanged: ``install_pykeops_alias()`` makes
``import pykeops`` and its submodules (``pykeops.torch``, ``pykeops.numpy``, their ``utils``,
``operations`` and ``cluster``, ``pykeops.config``, ``pykeops.common``) -- and
``keopscore``, which some pykeops code configures -- import tvmred's modules.  Call it
before importing the client library (geomloss, gpytorch and others decide at import time
whether KeOps is available).

The aliases resolve on import (a finder at the front of ``sys.meta_path``), so
``import pykeops.numpy`` never imports torch."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

#: pykeops' (and keopscore's) module names -> tvmred's modules
ALIASES = {
    "pykeops": "tvmred.compat.pykeops",
    "pykeops.config": "tvmred.compat.config",
    "pykeops.common": "tvmred.compat.common",
    "pykeops.common.gpu_utils": "tvmred.compat.common",
    "pykeops.common.utils": "tvmred.compat.common",
    "pykeops.common.lazy_tensor": "tvmred.compat.common",
    "pykeops.torch": "tvmred.torch",
    "pykeops.torch.cluster": "tvmred.torch.cluster",
    "pykeops.torch.utils": "tvmred.compat.torch_utils",
    "pykeops.torch.operations": "tvmred.compat.torch_operations",
    "pykeops.numpy": "tvmred.numpy",
    "pykeops.numpy.cluster": "tvmred.numpy.cluster",
    "pykeops.numpy.utils": "tvmred.compat.numpy_utils",
    "pykeops.numpy.operations": "tvmred.compat.numpy_operations",
    "keopscore": "tvmred.compat.keopscore",
}


class _Loader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(self.target)

    def exec_module(self, module: Any) -> None:
        pass  # already executed under its own name


class _Finder(importlib.abc.MetaPathFinder):
    """Finds pykeops' module names as tvmred's modules."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in ALIASES:
            return importlib.util.spec_from_loader(name, _Loader(ALIASES[name]))
        return None


_FINDER = _Finder()


def install_pykeops_alias(force: bool = False) -> None:
    """Make pykeops' module names import tvmred's modules.  An installed pykeops that was
    already imported is left alone unless ``force`` (then its modules are replaced)."""
    mod = sys.modules.get("pykeops")
    if mod is not None and not force and not getattr(mod, "__tvmred__", False):
        raise RuntimeError("pykeops is already imported; pass force=True to replace it")
    for name in list(sys.modules):
        if name.split(".")[0] in ("pykeops", "keopscore"):
            if not getattr(sys.modules[name], "__name__", "").startswith("tvmred"):
                del sys.modules[name]  # the real pykeops' (force=True)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    importlib.import_module("pykeops")


__all__ = ["ALIASES", "install_pykeops_alias"]
