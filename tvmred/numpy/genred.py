"""``tvmred.numpy.Genred`` (drop-in for ``pykeops.numpy.Genred``).

Arrays are shared with the kernels without copies (through torch's zero-copy ``from_numpy``);
non-contiguous arrays are copied once.  No autograd."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .. import dispatch, genred
from ..genred import copy_into, placement
from ..launch import run


def numpy_call(
    r,
    args,
    backend: str = "auto",
    device_id: int = -1,
    ranges: object = None,
    out: Optional[np.ndarray] = None,
) -> Any:
    """A reduction call on numpy arrays (no autograd), as ``Genred.__call__`` makes it."""
    targs = []
    for k, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            raise TypeError(
                f"argument {r.describe(k)} must be a numpy array, got {type(a).__name__}"
            )
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"argument {r.describe(k)} has dtype {a.dtype}; tvmred supports float32 and float64"
            )
        targs.append(torch.from_numpy(np.ascontiguousarray(a)))
    if ranges is not None:
        ranges = tuple(torch.from_numpy(np.asarray(t)) for t in ranges)
    dev, host = placement(targs, backend, device_id)
    if host:
        targs = [t.to(dev) for t in targs]
    res = dispatch.each_problem(r, targs, lambda *a: run(r, a), ranges)
    res = tuple(t.cpu() for t in res) if isinstance(res, tuple) else res.cpu()
    if out is not None:
        copy_into(res, torch.from_numpy(out))
        return out
    return tuple(t.numpy() for t in res) if isinstance(res, tuple) else res.numpy()


class Genred(genred.Genred):
    __doc__ = genred.Genred.__doc__

    def __call__(  # type: ignore[override]
        self,
        *args: np.ndarray,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        return numpy_call(self.reduction, args, backend, device_id, ranges, out)
