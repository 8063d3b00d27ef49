"""The host side of a tvmred.jax call: a reduction run on XLA's buffers -- numpy views on the
CPU, torch CUDA tensors on a GPU (:func:`tvmred.jax.ffi.run_on_device`) -- leading dimensions
stacked into one launch (:func:`_one_launch`) or looping over the problems.  No jax here: the FFI handlers and the pure_callback call
:func:`outputs`."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..arrays import xp
from ..launch import run_states
from ..reductions import Reduction


def cats_rank(cat: int) -> int:
    return 1 if cat == 2 else 2


def outputs(r: Reduction, args) -> list:
    """pykeops' output(s) of ``r`` on numpy arrays (or torch tensors), then the selected
    positions if any; leading (batch) dimensions in one launch where :func:`_one_launch`
    applies, else a loop over the problems.  Inputs after ``r``'s arguments are pykeops'
    ``ranges`` (:func:`_ranged`)."""
    args = [a if type(a).__module__.startswith("torch") else np.asarray(a) for a in args]
    if len(args) > r.nargs:
        return _ranged(r, args[: r.nargs], args[r.nargs :])
    lead = lead_shape([a.shape for a in args], [cats_rank(c) for c in r.cats])
    ns = xp(args[0]) if args else None
    if lead:
        one = _one_launch(r, args, lead)
        if one is not None:
            return one
        flat = [ns.lib().broadcast_to(a, lead + tuple(a.shape[a.ndim - cats_rank(c):]))
                for a, c in zip(args, r.cats)]  # fmt: skip
        per = [outputs(r, [a[ix] for a in flat]) for ix in np.ndindex(*lead)]
        return [ns.stack(o, 0).reshape(lead + tuple(o[0].shape)) for o in zip(*per)]
    out, state = run_states(r, [ns.contiguous(a) for a in args] if args else [])
    outs = list(out) if isinstance(out, tuple) else [out]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return outs


def lead_shape(shapes: Sequence[tuple], ranks: Sequence[int]) -> tuple:
    return tuple(np.broadcast_shapes(*(s[: len(s) - c] for s, c in zip(shapes, ranks))))


def _one_launch(r: Reduction, args: list, lead: tuple) -> Optional[list]:
    """The batched call's outputs from one launch (:func:`tvmred.dispatch.batched_one_launch`,
    through torch CPU tensors viewing the same memory), or None where that does not apply:
    no torch, arrays not on the CPU, a parameter with batch dimensions, big problems."""
    if any(type(a).__module__ != "numpy" for a in args):
        return None  # the device path: torch tensors, problem by problem
    try:
        import torch
    except ImportError:
        return None
    from .. import dispatch, ranged

    # (read-only buffers copied: torch warns on views of them)
    targs = [torch.from_numpy(np.ascontiguousarray(a) if a.flags.writeable else a.copy())
             for a in args]  # fmt: skip
    if not dispatch.stackable(r, targs, lead):
        return None
    run = lambda a, rg: ranged.run(r, a, rg)  # noqa: E731
    return [o.numpy() for o in dispatch.batched_one_launch(r, targs, lead, run)]


def _ranged(r: Reduction, args: list, ranges: list) -> list:
    """The outputs with pykeops' ``ranges`` (6 integer arrays): all clusters in one launch
    (:func:`tvmred.ranged.run`, through torch CPU tensors viewing the same memory, as
    ``tvmred.numpy`` runs ranges; the binding checked there are six)."""
    if lead_shape([a.shape for a in args], [cats_rank(c) for c in r.cats]):
        raise NotImplementedError("ranges together with batch dimensions are not supported")
    if any(type(a).__module__ != "numpy" for a in args):
        raise NotImplementedError("tvmred.jax: ranges= runs on the CPU only")
    try:
        import torch
    except ImportError:
        raise RuntimeError("tvmred.jax: ranges= runs its one-launch kernels through torch's "
                           "CPU tensors (as tvmred.numpy does): pip install torch") from None  # fmt: skip
    from .. import ranged

    view = lambda a: torch.from_numpy(a if a.flags.writeable else a.copy())  # noqa: E731
    targs = [view(np.ascontiguousarray(a)) for a in args]
    return [o.numpy() for o in ranged.run(r, targs, [view(np.asarray(t)) for t in ranges])]
