"""tvmred: KeOps-style generic reductions compiled through Apache TVM.

``from tvmred.torch import Genred`` / ``from tvmred.numpy import Genred``.
"""

from __future__ import annotations

import os as _os

if "TVM_NUM_THREADS" not in _os.environ:  # TVM's pool reads it once, at its first use
    import torch as _torch

    _os.environ["TVM_NUM_THREADS"] = str(_torch.get_num_threads())

from . import settings as _settings  # noqa: E402
from .build import __version__  # noqa: E402
from .cache import clear_cache  # noqa: E402
from .errors import DimError, FormulaError, KernelNotExported, ParseError  # noqa: E402
from .export import export  # noqa: E402


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
