"""``tvmred.numpy.Genred`` (drop-in for ``pykeops.numpy.Genred``).

Arrays are shared with the kernels without copies; non-contiguous or misaligned arrays are
copied once.  torch is imported only for batch dimensions, ``ranges`` and GPU backends.  No
autograd."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import genred
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
    """A reduction call on numpy arrays (no autograd), as ``Genred.__call__`` makes it.  A
    plain call runs the kernel on the arrays themselves (torch is not imported); batch
    dimensions, ``ranges`` and GPU backends go through torch's zero-copy ``from_numpy``."""
    for k, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            raise TypeError(
                f"argument {r.describe(k)} must be a numpy array, got {type(a).__name__}"
            )
        if a.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(
                f"argument {r.describe(k)} has dtype {a.dtype}; tvmred's numpy binding supports "
                "float16, float32 and float64 (numpy has no bfloat16)"
            )
    plain = ranges is None and backend in ("auto", "CPU") and not _batched(r, args)
    if plain:
        res = run(r, list(args))
    else:
        res = _through_torch(r, args, backend, device_id, ranges)
    if out is not None:
        if isinstance(res, tuple):
            raise ValueError("out= is not supported for a reduction with two outputs")
        return copy_into(res, out)
    return res


def _batched(r, args) -> bool:
    return any(a.ndim > (1 if cat == 2 else 2) for a, cat in zip(args, r.cats))


def _through_torch(r, args, backend: str, device_id: int, ranges: object) -> Any:
    import torch

    from .. import dispatch, ranged

    targs = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    if ranges is not None:
        ranges = tuple(torch.from_numpy(np.asarray(t)) for t in ranges)
    dev, host = placement(targs, backend, device_id)
    if host:
        targs = [t.to(dev) for t in targs]
    one = lambda a, rg: ranged.output(r, a, rg)  # noqa: E731  (ranges in one launch)
    res = dispatch.each_problem(r, targs, lambda *a: run(r, a), ranges, one)
    res = tuple(t.cpu() for t in res) if isinstance(res, tuple) else res.cpu()
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
