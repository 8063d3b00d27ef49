"""Block-sparsity helpers for numpy arrays, as ``pykeops.numpy.cluster``: cluster points,
sort them by cluster, and turn a cluster-level boolean mask into the ``ranges`` 6-tuple that
``Genred(...)(..., ranges=...)`` and ``LazyTensor.ranges`` accept.  Labels, ranges and
centroids follow pykeops' numpy definitions (labels int64, ranges int64, the grid anchored
at the origin: numpy's ``grid_cluster`` differs from torch's there, as in pykeops)."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np


def grid_cluster(x: np.ndarray, size: Union[float, np.ndarray]) -> np.ndarray:
    """Labels (int64, 0..C-1, in lexicographic order of the cells) of the cubic cells of side
    ``size`` -- the cells ``floor(x / size)`` -- that the points of ``x`` (N, D), D <= 3,
    fall in."""
    if x.ndim != 2 or not 1 <= x.shape[1] <= 3:
        raise ValueError(
            f"grid_cluster needs points of shape (N, D) with D <= 3, got {tuple(x.shape)}"
        )
    cells = np.floor(x / size).astype(np.int64)
    return np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def sort_clusters(x, lab: np.ndarray):
    """The points (an array, or a tuple or list of arrays) and labels sorted by label."""
    perm = np.argsort(lab.ravel(), kind="stable")
    if isinstance(x, tuple):
        return tuple(a[perm] for a in x), lab[perm]
    if isinstance(x, list):
        return [a[perm] for a in x], lab[perm]
    return x[perm], lab[perm]


def cluster_ranges(lab: np.ndarray, Nlab: Optional[np.ndarray] = None) -> np.ndarray:
    """(C, 2) int64 ``[start, end)`` rows of each cluster, for points sorted by label."""
    if Nlab is None:
        Nlab = np.bincount(lab)
    ends = np.cumsum(np.asarray(Nlab, dtype=np.int64))
    return np.stack((ends - np.asarray(Nlab, dtype=np.int64), ends), axis=1)


def cluster_centroids(
    x: np.ndarray,
    lab: np.ndarray,
    Nlab: Optional[np.ndarray] = None,
    weights: Optional[np.ndarray] = None,
    weights_c: Optional[np.ndarray] = None,
) -> np.ndarray:
    """(C, D) (weighted) barycenters of the clusters, in ``x``'s dtype."""
    if Nlab is None:
        Nlab = np.bincount(lab).astype(float)
    if weights is not None and weights_c is None:
        weights_c = np.bincount(lab, weights=weights.ravel())
    denom = (Nlab if weights is None else weights_c).ravel()
    w = None if weights is None else weights.ravel()
    cols = [
        np.bincount(lab, weights=x[:, d] if w is None else x[:, d] * w, minlength=len(denom))
        for d in range(x.shape[1])
    ]
    return (np.stack(cols, axis=1) / denom[:, None]).astype(x.dtype)


def cluster_ranges_centroids(x: np.ndarray, lab: np.ndarray, weights=None):
    """``(ranges, centroids, weights_c)`` of the clusters (``weights_c``: total weight, or
    the number of points)."""
    Nlab = np.bincount(lab).astype(float)
    w_c = Nlab if weights is None else np.bincount(lab, weights=weights.ravel())
    return cluster_ranges(lab, Nlab), cluster_centroids(x, lab, Nlab, weights, w_c), w_c


def from_matrix(ranges_i: np.ndarray, ranges_j: np.ndarray, keep: np.ndarray) -> tuple:
    """The pykeops ``ranges`` 6-tuple from cluster ranges and a (Ci, Cj) boolean mask of the
    cluster pairs to compute."""
    keep = keep.astype(bool)
    I, J = np.meshgrid(np.arange(keep.shape[0]), np.arange(keep.shape[1]), indexing="ij")
    redranges_j = ranges_j[J[keep]]
    redranges_i = ranges_i[I.T[keep.T]]
    slices_i = np.cumsum(keep.sum(1)).astype(np.int64)
    slices_j = np.cumsum(keep.sum(0)).astype(np.int64)
    return (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)


def swap_axes(ranges: Optional[tuple]) -> Optional[tuple]:
    """The ``ranges`` of the transposed problem (i and j exchanged)."""
    return None if ranges is None else (*ranges[3:6], *ranges[0:3])


__all__ = [
    "cluster_centroids",
    "cluster_ranges",
    "cluster_ranges_centroids",
    "from_matrix",
    "grid_cluster",
    "sort_clusters",
    "swap_axes",
]
