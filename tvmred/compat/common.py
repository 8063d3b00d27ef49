"""``pykeops.common`` under the alias: what pykeops code imports from it --
``gpu_utils.get_gpu_number()`` (the CUDA devices tvmred can use, counted without importing
torch unless it is already imported), ``utils``' ``axis2cat`` / ``cat2axis`` and message
helpers, ``lazy_tensor``'s ``GenericLazyTensor`` / ``ComplexGenericLazyTensor`` (for
``isinstance``: every binding's LazyTensor derives from them).  One module serves the
package and its three submodules."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import warnings

from ..lazy import GenericLazyTensor
from ..lazycomplex import ComplexLazy as ComplexGenericLazyTensor
from . import config

__tvmred__ = True
__path__: list = []  # a package for the import system: its submodules come from the alias


def get_gpu_number() -> int:
    """CUDA devices tvmred can run on: 0 without TVM's CUDA runtime or a driver; torch's
    count where torch is imported, else the driver's (``cuDeviceGetCount``)."""
    if not config.gpu_available:
        return 0
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.cuda.device_count())
    try:
        cuda = ctypes.CDLL(ctypes.util.find_library("cuda") or "libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except OSError:
        return 0


def axis2cat(axis: int) -> int:
    """The reduction ``axis`` (0 or 1) -> the category of the output's index (1 or 0)."""
    if axis not in (0, 1):
        raise ValueError(f"Axis should be 0 or 1, not {axis!r}.")
    return 1 - axis


def cat2axis(cat: int) -> int:
    """The category of the output's index (0: Vi, 1: Vj) -> the reduction axis."""
    if cat not in (0, 1):
        raise ValueError(f"Category should be 0 (Vi) or 1 (Vj), not {cat!r}.")
    return 1 - cat


def pyKeOps_Print(message: str, **kwargs) -> None:  # noqa: N802 (pykeops' name)
    """Print ``message`` when pykeops' verbosity is on (``pykeops.set_verbose``)."""
    from .pykeops import verbose

    if verbose:
        print(message, **kwargs)


def pyKeOps_Message(message: str, use_tag: bool = True, **kwargs) -> None:  # noqa: N802
    pyKeOps_Print(("[pyKeOps] " if use_tag else "") + message, **kwargs)


def pyKeOps_Warning(message: str) -> None:  # noqa: N802
    warnings.warn("[pyKeOps] Warning : " + message, stacklevel=2)


__all__ = [
    "ComplexGenericLazyTensor",
    "GenericLazyTensor",
    "axis2cat",
    "cat2axis",
    "get_gpu_number",
    "pyKeOps_Message",
    "pyKeOps_Print",
    "pyKeOps_Warning",
]
