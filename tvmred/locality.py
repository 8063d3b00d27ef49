"""Output rows in the order of a space-filling curve: the rows of one block then lie near
each other, so their K-min lists change at the same j.

A CPU K-min kernel (KMin, ArgKMin, KMin_ArgKMin) tests each j against the K-th value of all
the rows of a block at once (one vector compare) and runs its insertion network on the whole
block when any row's K-list changes.  With rows in the user's order (often random) a block's
rows are far apart, one of them or another takes the j at ~6 % of the j for 8 rows, and the
insertions are most of the time (AVX2 kernels, K = 10, D = 3, 1e4 x 1e4: 14 ms, against 5 ms
for the distances and the tests alone).  Ordered along a Morton curve of the output-indexed
variables, the rows of a block are neighbours and mostly want the same j: the same call took
10 ms (1e4 points in the unit cube, 2-vCPU AMD EPYC Zen 4; 11.1 -> 6.6-7.1 ms with AVX-512).
The results are the same: each row's K-list depends on its own values only.

The order costs 0.15-0.2 ms for 1e4 rows (a 15-bit Morton code, numpy's radix sort), and it is
taken only where the target asks for it (``TargetTemplate.local_rows``).  numpy only: the
arrays are host views (:meth:`tvmred.arrays.Torch.host`)."""

from __future__ import annotations

import functools
import warnings
from typing import Sequence

import numpy as np

CODE_BITS = 15  # a code fits a uint16: numpy's stable argsort is then a radix sort
MAX_BITS = 10  # bits per coordinate (1-D: 1024 cells are plenty)


@functools.lru_cache(maxsize=None)
def _spread(bits: int, dims: int) -> np.ndarray:
    """v -> v's bits at positions 0, dims, 2 dims, ... (one coordinate of a Morton code)."""
    v = np.arange(1 << bits)
    out = np.zeros(1 << bits, np.uint16)
    for b in range(bits):
        out |= (((v >> b) & 1) << (b * dims)).astype(np.uint16)
    return out


def curve_order(cols: Sequence[np.ndarray]) -> np.ndarray:
    """The permutation (int64) that sorts the rows of the arrays ``cols`` (each (M, d) of one
    float dtype, d summing to at most CODE_BITS) along a Morton curve over their bounding
    box.  NaN and infinite values go to a cell at an end of their coordinate (the order stays
    a permutation; it only decides which rows share a block)."""
    xt = np.concatenate([np.asarray(c) for c in cols], 1).T
    xt = np.ascontiguousarray(xt)  # (D, M): a reduction per coordinate runs contiguously
    dims = xt.shape[0]
    if xt.shape[1] < 2:
        return np.arange(xt.shape[1], dtype=np.int64)
    bits = min(MAX_BITS, CODE_BITS // dims)
    top = xt.dtype.type((1 << bits) - 1)
    with np.errstate(all="ignore"):
        lo, hi = xt.min(1), xt.max(1)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # the finite values' box
            fin = np.where(np.isfinite(xt), xt, np.nan)
            with warnings.catch_warnings():  # a coordinate without a finite value: 0
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nan_to_num(np.nanmin(fin, 1)), np.nan_to_num(np.nanmax(fin, 1))
        scale = (top + xt.dtype.type(0.5)) / np.maximum(hi - lo, np.finfo(xt.dtype).tiny)
        q = (xt - lo[:, None]) * scale[:, None]
        np.fmin(np.fmax(q, 0, out=q), top, out=q)  # NaN -> 0, beyond the box -> its faces
    code = _spread(bits, dims)[q.astype(np.intp)]  # (D, M)
    code <<= np.arange(dims, dtype=np.uint16)[:, None]
    code = np.bitwise_or.reduce(code, axis=0)
    return np.argsort(code, kind="stable")


def inverse(perm: np.ndarray) -> np.ndarray:
    """The permutation that undoes ``perm``."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=perm.dtype)
    return inv


def unpermuted(state: list, inv: np.ndarray, x) -> list:
    """The state buffers (rows, cols) with their rows taken at ``inv`` (``x``: their array
    library, :mod:`tvmred.arrays`): one gather per dtype (a K-min has 2 K buffers of one
    column), the buffers column views of its result."""
    out: list = list(state)
    groups: dict = {}
    for k, s in enumerate(state):
        groups.setdefault(x.dtype_name(s), []).append(k)
    for ks in groups.values():
        both = x.take_rows(x.cat([state[k] for k in ks], 1), inv)
        col = 0
        for k in ks:
            out[k] = both[:, col : col + state[k].shape[1]]
            col += state[k].shape[1]
    return out
