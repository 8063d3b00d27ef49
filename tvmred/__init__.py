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
from .export import export, load  # noqa: E402

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
