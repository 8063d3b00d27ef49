"""Run code written for pykeops on tvmred, unchanged: ``install_pykeops_alias()`` makes
``import pykeops``, ``pykeops.torch``, ``pykeops.torch.cluster`` and ``pykeops.numpy``
import tvmred's modules.  Call it before importing the client library (geomloss, gpytorch
and others decide at import time whether KeOps is available)."""

from __future__ import annotations

import sys

_ALIASES = {
    "pykeops": "tvmred",
    "pykeops.torch": "tvmred.torch",
    "pykeops.torch.cluster": "tvmred.torch.cluster",
    "pykeops.numpy": "tvmred.numpy",
}


def install_pykeops_alias(force: bool = False) -> None:
    """Put tvmred's modules in ``sys.modules`` under pykeops' names.  An installed pykeops
    that was already imported is left alone unless ``force``."""
    import importlib

    if "pykeops" in sys.modules and not force:
        if getattr(sys.modules["pykeops"], "__name__", "") != "tvmred":
            raise RuntimeError("pykeops is already imported; pass force=True to replace it")
    for alias, name in _ALIASES.items():
        sys.modules[alias] = importlib.import_module(name)


__all__ = ["install_pykeops_alias"]
