"""``pykeops`` itself under the alias (:func:`tvmred.compat.install_pykeops_alias`): its
version, its install checks and its helpers, each mapped to tvmred's equivalent --
``test_torch_bindings()`` / ``test_numpy_bindings()`` run a small reduction against a dense
reference, ``check_health()`` is ``tvmred doctor``, ``clean_pykeops()`` clears tvmred's
kernel cache, ``get_build_folder()`` / ``set_build_folder()`` read and move it
(``TVMRED_CACHE_DIR``), ``set_verbose()`` sets the "tvmred" logger's level."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any, Optional

from .. import settings

__tvmred__ = True  # this module is tvmred's, not pykeops' (install_pykeops_alias checks it)
__path__: list = []  # a package for the import system: its submodules come from the alias
__version__ = "2.3"  # the pykeops release whose API this emulates (tvmred.__version__: ours)

numpy_found = importlib.util.find_spec("numpy") is not None
torch_found = importlib.util.find_spec("torch") is not None
verbose = os.environ.get("PYKEOPS_VERBOSE") != "0"


def set_verbose(val: bool) -> None:
    """pykeops' verbosity: tvmred's log (each compile, cache decisions) at INFO, or WARNING."""
    global verbose
    verbose = bool(val)
    log = logging.getLogger("tvmred")
    log.setLevel(logging.INFO if val else logging.WARNING)
    if val and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[tvmred] %(message)s"))
        log.addHandler(handler)


def get_build_folder() -> str:
    """Where compiled kernels are kept: tvmred's cache directory."""
    return str(settings.cache_dir())


def set_build_folder(path: Optional[str] = None) -> None:
    """Keep compiled kernels in ``path`` from now on (None: the default cache directory)."""
    if path is None:
        os.environ.pop("TVMRED_CACHE_DIR", None)
    else:
        os.environ["TVMRED_CACHE_DIR"] = str(path)
    from .. import cache

    cache.clear_cache(disk=False)  # kernels are found again in the new folder


def clean_pykeops(recompile_jit_binaries: bool = True) -> None:
    """Remove every compiled kernel (in memory and in the cache directory)."""
    from .. import cache

    cache.clear_cache()


def check_health() -> None:
    """tvmred's installation report (``tvmred doctor``): versions, the CPU and its vector
    registers, the cache, CUDA, and a small formula run on every device."""
    from .. import doctor

    doctor.main()


def _check(name: str, got: Any, want: Any) -> None:
    import numpy as np

    err = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    if not err < 1e-4:
        raise AssertionError(f"tvmred's {name} bindings are NOT working: error {err:.3g}")
    print(f"pyKeOps with {name} bindings is working! (tvmred, max error {err:.1e})")


def test_numpy_bindings() -> None:
    """pykeops' install check for numpy: a Gaussian convolution against numpy's."""
    import numpy as np

    from ..numpy import Genred

    rng = np.random.default_rng(0)
    x, y, b = rng.random((100, 3)), rng.random((120, 3)), rng.random((120, 2))
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    want = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    _check("numpy", g(x, y, b), want)


def test_torch_bindings() -> None:
    """pykeops' install check for torch: a Gaussian convolution against torch's."""
    import torch

    from ..torch import Genred

    gen = torch.Generator().manual_seed(0)
    x, y, b = (torch.rand(n, d, generator=gen, dtype=torch.float64) for n, d in
               ((100, 3), (120, 3), (120, 2)))  # fmt: skip
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    want = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    _check("torch", g(x, y, b).numpy(), want.numpy())


def __getattr__(name: str) -> Any:
    """``pykeops.torch``, ``pykeops.numpy``, ``pykeops.config``: imported on first use."""
    if name in ("torch", "numpy", "config"):
        return importlib.import_module(f"pykeops.{name}")
    raise AttributeError(f"module 'pykeops' (tvmred) has no attribute {name!r}")
