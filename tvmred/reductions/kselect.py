"""The K-selections: KMin, ArgKMin, KMin_ArgKMin -- the K smallest values per component and
their indices, kept sorted by insertion."""

from __future__ import annotations

from typing import Any

from .core import Space, Variant, by_column, inf, masked, reduction, tirx, xp_of
from .select import SELECTED, select_jvp, select_vjp

#: The largest K of the K-min reductions: the insertion chain keeps K values per row and its
#: compile time grows faster than K (K=64 about 20 s, K=128 about a minute on a 2-core CPU).
MAX_K = 128


def _kmin(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """The K smallest values (ascending) and their indices, by insertion: the state is K
    sorted values then K indices; each new element goes after equal ones (lowest index
    first).  NaN and +inf are never inserted.  The combine inserts b's first element, so it
    assumes a sequential reduction."""
    t = tirx()
    K = v.k

    def combine(a, b):
        x, jx = b[0], b[K]
        vals, idx = list(a[:K]), list(a[K:])
        nv, ni = [], []
        for r in range(K):
            lt = x < vals[r]
            if r == 0:
                nv.append(t.Select(lt, x, vals[0]))
                ni.append(t.Select(lt, jx, idx[0]))
            else:
                lt_prev = x < vals[r - 1]
                nv.append(t.Select(lt, t.Select(lt_prev, vals[r - 1], x), vals[r]))
                ni.append(t.Select(lt, t.Select(lt_prev, idx[r - 1], jx), idx[r]))
        return tuple(nv + ni)

    def identity(*ts):
        return tuple([inf(x) for x in ts[:K]] + [t.const(-1, x) for x in ts[K:]])

    red = te.comm_reducer(combine, identity, name="kminred")

    def body(i, u, ax, j, w):
        x = masked(w, by_column(u, root(i, j)), inf(dtype))  # +inf is never inserted
        elem = [x] + [inf(dtype)] * (K - 1) + [j] + [t.const(-1, "int32")] * (K - 1)
        return red(tuple(elem), axis=ax)

    return list(space.compute(te, rows, dim, body))


def _kmin_state(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d, dt)] * v.k + [(d, "int32")] * v.k


def _kmin_combine(states: list, v: Variant) -> list:
    """The K best of the concatenated lists: a stable sort keeps, among equal values, the
    lower ranges' (lower) indices first, as the kernel does."""
    x = xp_of(states)
    K = v.k
    vals = x.stack(states[:K], 1)  # (P, K, rows, d)
    vals = vals.reshape(-1, *vals.shape[2:])  # (P*K, rows, d), range-major
    idx = x.stack(states[K:], 1)
    idx = idx.reshape(-1, *idx.shape[2:])
    order = x.stable_argsort(vals, 0)[:K]
    return [*x.take_along(vals, order, 0), *x.take_along(idx, order, 0)]


def _kview(t: list) -> Any:
    """(n, D) buffers, one per k -> (n, K, D), squeezed to (n, K) when D = 1 (as pykeops)."""
    out = xp_of(t).stack(t, 1)
    return out[..., 0] if out.shape[-1] == 1 else out


def _k_variant(opt_arg, sum_scheme, dtype, acc) -> Variant:
    return Variant(k=opt_arg)


_kcommon = dict(
    kind="kselect",
    kernel="kmin",
    needs_k=True,
    state=_kmin_state,
    compute=_kmin,
    combine=_kmin_combine,
    variant=_k_variant,
    index_states=lambda k: slice(k, 2 * k),
)
reduction(
    "KMin",
    finalize=lambda s, v, dt: xp_of(s).astype(_kview(s[: v.k]), dt),
    vjp=select_vjp,
    jvp=select_jvp,
    grad_doc=SELECTED,
    doc="the K smallest values, ascending: (n, K) or (n, K, D)",
    **_kcommon,
)
reduction(
    "ArgKMin",
    finalize=lambda s, v, dt: xp_of(s).astype(_kview(s[v.k :]), "int64"),
    vjp=None,
    grad_doc="— (int64)",
    doc="int64 indices of the K smallest values",
    **_kcommon,
)
reduction(
    "KMin_ArgKMin",
    finalize=lambda s, v, dt: (
        xp_of(s).astype(_kview(s[: v.k]), dt),
        xp_of(s).astype(_kview(s[v.k :]), "int64"),
    ),
    vjp=select_vjp,
    jvp=select_jvp,
    grad_doc=SELECTED,
    doc="(K smallest values, their int64 indices)",
    **_kcommon,
)
