"""Block-sparsity helpers, as ``pykeops.torch.cluster``: cluster points, sort them by
cluster, and turn a cluster-level boolean mask into the ``ranges`` 6-tuple that
``Genred(...)(..., ranges=...)`` and ``LazyTensor.ranges`` accept (``swap_axes`` for the
transposed problem)."""

from __future__ import annotations

from typing import Optional, Union

import torch


def grid_cluster(x: torch.Tensor, size: Union[float, torch.Tensor]) -> torch.Tensor:
    """Labels (int32, 0..C-1, in lexicographic order of the cells) of the cubic cells of side
    ``size`` that the points of ``x`` (N, D), D <= 3, fall in; the grid is anchored at the
    cloud's lower corner, ``floor((x - x.min(0)) / size)``, as pykeops' torch version."""
    with torch.no_grad():
        if x.dim() != 2 or not 1 <= x.shape[1] <= 3:
            raise ValueError(
                f"grid_cluster needs points of shape (N, D) with D <= 3, got {tuple(x.shape)}"
            )
        cells = torch.floor((x - x.min(0).values) / size).long()
        span = cells.max(0).values + 1
        code = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for d in range(x.shape[1]):
            code = code * span[d] + cells[:, d]
        return torch.unique(code, return_inverse=True)[1].int()


def sort_clusters(x, lab: torch.Tensor):
    """Sort the points (a tensor or a tuple of tensors) by label: ``(x_sorted, lab_sorted)``."""
    perm = torch.argsort(lab.view(-1), stable=True)
    if isinstance(x, tuple):
        return tuple(a[perm] for a in x), lab[perm]
    return x[perm], lab[perm]


def cluster_ranges(lab: torch.Tensor, Nlab: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C, 2) int32 ``[start, end)`` rows of each cluster, for points sorted by label."""
    if Nlab is None:
        Nlab = torch.bincount(lab)
    ends = Nlab.long().cumsum(0)
    return torch.stack((ends - Nlab.long(), ends), dim=1).int()


def cluster_centroids(
    x: torch.Tensor,
    lab: torch.Tensor,
    Nlab: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    weights_c: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(C, D) (weighted) barycenters of the clusters."""
    if Nlab is None:
        Nlab = torch.bincount(lab).to(x.dtype)
    if weights is not None and weights_c is None:
        weights_c = torch.bincount(lab, weights=weights.view(-1))
    denom = (Nlab if weights is None else weights_c).view(-1).to(x.dtype)
    w = None if weights is None else weights.view(-1)
    cols = [
        torch.bincount(lab, weights=x[:, d] if w is None else x[:, d] * w, minlength=len(denom))
        for d in range(x.shape[1])
    ]
    return torch.stack(cols, dim=1) / denom[:, None]


def cluster_ranges_centroids(
    x: torch.Tensor,
    lab: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    min_weight: float = 1e-9,
):
    """``(ranges, centroids, weights_c)`` of the clusters (``weights_c``: total weight or count)."""
    Nlab = torch.bincount(lab).to(x.dtype)
    w_c = Nlab if weights is None else torch.bincount(lab, weights=weights.view(-1))
    return cluster_ranges(lab, Nlab), cluster_centroids(x, lab, Nlab, weights, w_c), w_c


def from_matrix(ranges_i: torch.Tensor, ranges_j: torch.Tensor, keep: torch.Tensor) -> tuple:
    """The pykeops ``ranges`` 6-tuple from cluster ranges and a (Ci, Cj) boolean mask of the
    cluster pairs to compute."""
    keep = keep.bool()
    ci, cj = (torch.arange(n, device=keep.device) for n in keep.shape)
    I, J = torch.meshgrid(ci, cj, indexing="ij")
    redranges_j = ranges_j[J[keep]]
    redranges_i = ranges_i[I.t()[keep.t()]]
    slices_i = keep.sum(1).cumsum(0).int()
    slices_j = keep.sum(0).cumsum(0).int()
    return (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)


def swap_axes(ranges: Optional[tuple]) -> Optional[tuple]:
    """The ``ranges`` of the transposed problem (i and j exchanged): the last three arrays
    first; None stays None."""
    return None if ranges is None else (*ranges[3:6], *ranges[0:3])


__all__ = [
    "swap_axes",
    "grid_cluster",
    "sort_clusters",
    "cluster_ranges",
    "cluster_centroids",
    "cluster_ranges_centroids",
    "from_matrix",
]
