"""The host side of a tvmred.jax call: a reduction run on numpy arrays (views of XLA's
buffers), leading dimensions looping over the problems.  No jax here: the FFI handler and
the pure_callback both call :func:`outputs`."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..launch import run_states
from ..reductions import Reduction


def cats_rank(cat: int) -> int:
    return 1 if cat == 2 else 2


def outputs(r: Reduction, args) -> list:
    """pykeops' output(s) of ``r`` on numpy arrays, then the selected positions if any; leading
    (batch) dimensions loop over the problems."""
    lead = lead_shape([a.shape for a in args], [cats_rank(c) for c in r.cats])
    if lead:
        flat = [np.broadcast_to(a, lead + a.shape[a.ndim - cats_rank(c):])
                for a, c in zip(args, r.cats)]  # fmt: skip
        per = [outputs(r, [a[ix] for a in flat]) for ix in np.ndindex(*lead)]
        return [np.stack(o).reshape(lead + o[0].shape) for o in zip(*per)]
    out, state = run_states(r, [np.ascontiguousarray(a) for a in args])
    outs = list(out) if isinstance(out, tuple) else [out]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return outs


def lead_shape(shapes: Sequence[tuple], ranks: Sequence[int]) -> tuple:
    return tuple(np.broadcast_shapes(*(s[: len(s) - c] for s, c in zip(shapes, ranks))))
