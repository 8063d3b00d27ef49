"""tvmred: KeOps-style generic reductions compiled through Apache TVM.

``from tvmred.torch import Genred`` / ``from tvmred.numpy import Genred``.
"""

from __future__ import annotations

import sys as _sys

from . import complexops as _complexops  # noqa: F401  (registers the complex operations)
from . import settings as _settings
from .build import __version__
from .cache import clear_cache
from .errors import DimError, FormulaError, KernelNotExported, ParseError
from .export import export

if "torch" in _sys.modules:  # else the binding imported next sets it
    _settings.default_threads()


def load(path):
    """Load an exported directory (:func:`tvmred.export.load`): ``lib["name"]`` is a
    ``tvmred.torch.Genred`` and ``lib.numpy("name")`` a ``tvmred.numpy.Genred``.  Its kernels
    are code run in this process: load only directories you trust (as with ``torch.load``)."""
    from .export import load as _load
    from .numpy import Genred as NumpyGenred
    from .torch import Genred as TorchGenred

    return _load(path, {"torch": TorchGenred, "numpy": NumpyGenred})


_settings.setup_logging()

__all__ = [
    "__version__",
    "clear_cache",
    "export",
    "load",
    "KernelNotExported",
    "DimError",
    "FormulaError",
    "ParseError",
]
