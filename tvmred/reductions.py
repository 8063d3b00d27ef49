"""The reduction registry: each reduction is one :class:`RedDef`.

A reduction ``out_i = Red_j F(i, j)`` (or over i) is lowered as one reduction block ``red``
over the kernel's output rows and the ``ncols`` columns of its state buffers.  Each entry gives

* ``state``    — the kernel's output buffers: ``[(cols, dtype), ...]`` from (dim F, opt, dtype, acc);
* ``compute``  — the TE reducer (a plain ``te.sum`` or a ``te.comm_reducer`` on a tuple state);
* ``finalize`` — torch code turning the state buffers into pykeops' outputs;
* ``kind``     — the tag schedules read (they never see the formula);
* ``grad``     — which gradient rule applies (see ``tvmred.torch``): "sum" (a Sum reduction of
  the symbolic gradient), "lse", "lse_weight", "softmax" (KeOps' rules, using the saved
  output), "select" (Min/Max/KMin: the gradient routed through the selected indices — beyond
  pykeops), "none" (integer outputs) or "unsupported".

Vector formulas: Sum, Max, Min, Arg*, KMin* reduce each component separately (as pykeops);
the LogSumExp family needs a scalar F and takes an optional weight G (``formula2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import mathfns


def _tv():
    from tvm import te, tirx

    return te, tirx


def _select(u: Any, exprs: list) -> Any:
    """exprs[u] for the column loop variable u (folded away once the schedule unrolls u)."""
    tirx = _tv()[1]
    e = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        e = tirx.Select(u == k, exprs[k], e)
    return e


def _inf(dt: str, sign: float = 1.0):
    return _tv()[1].const(sign * math.inf, dt)


# ----------------------------------------------------------------------------------- Sum


BLOCK = 1024  # terms per partial sum of sum_scheme="block_sum" (about sqrt(1e6))


def _sum(te, root, rows, n, dim, opt, dtype, acc):
    """``opt`` is the sum scheme: "direct" (one accumulator), "block" (partial sums of BLOCK
    terms added to a running total) or "kahan" (compensated); the last two keep two state
    buffers that ``finalize`` adds.  Both update rules assume a sequential reduction."""
    tirx = _tv()[1]
    j = te.reduce_axis((0, n), name="j")

    def comps(i):
        cs = root(i, j)
        return [x.astype(acc) for x in cs] if acc != dtype else cs

    if opt in (None, "direct"):
        return [
            te.compute((rows, dim), lambda i, u: te.sum(_select(u, comps(i)), axis=j), name="red")
        ]
    if opt == "kahan":
        bits = "int32" if acc == "float32" else "int64"

        def opaque(e):  # a bit-cast round trip hides t = s + y from TVM's simplifier
            return tirx.reinterpret(acc, tirx.reinterpret(bits, e))

        def combine(a, b):
            y = b[0] - a[1]
            t = opaque(a[0] + y)
            return t, (t - a[0]) - y

        red = te.comm_reducer(
            combine, lambda t0, t1: (tirx.const(0, t0), tirx.const(0, t1)), name="kahan"
        )
        zero = tirx.const(0, acc)
        return list(
            te.compute(
                (rows, dim), lambda i, u: red((_select(u, comps(i)), zero), axis=j), name="red"
            )
        )

    def combine_block(a, b):  # state (total, partial, j); the element is (0, x_j, j)
        full = tirx.floormod(b[2], BLOCK) == BLOCK - 1
        p = a[1] + b[1]
        return (tirx.Select(full, a[0] + p, a[0]), tirx.Select(full, tirx.const(0, acc), p), b[2])

    red = te.comm_reducer(
        combine_block, lambda *ts: tuple(tirx.const(0, t) for t in ts), name="blocksum"
    )

    def body(i, u):
        return red((tirx.const(0, acc), _select(u, comps(i)), j.var), axis=j)

    return list(te.compute((rows, dim), body, name="red"))


def _sum_state(d: int, scheme: Any, dt: str, acc: str) -> list:
    if scheme in (None, "direct"):
        return [(d, acc)]
    return [(d, acc), (d, acc)] + ([(d, "int32")] if scheme == "block" else [])


def _sum_final(s: list, scheme: Any, dt: Any) -> Any:
    if scheme in (None, "direct"):
        return s[0].to(dt)
    if scheme == "kahan":
        return (s[0].double() - s[1].double()).to(dt)
    return (s[0].double() + s[1].double()).to(dt)


# ------------------------------------------------------------------ Min / Max (+ Arg)


def _nan_bits(x: Any, dtype: str, nan: bool) -> Any:
    """x is NaN (or is not), tested on the bits with integer comparisons: TVM's simplifier
    rewrites float tests such as ``not (b < a)`` into ``a <= b`` and ``x != x`` into False,
    which is wrong for NaN."""
    tirx = _tv()[1]
    bits, mask, inf = (
        ("int32", 0x7FFFFFFF, 0x7F800000)
        if dtype == "float32"
        else ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)
    )
    i = tirx.bitwise_and(tirx.reinterpret(bits, x), tirx.const(mask, bits))
    return i > tirx.const(inf, bits) if nan else i <= tirx.const(inf, bits)


def _better(is_min: bool, dtype: str) -> Callable:
    """a (the accumulator) is kept over b when a is NaN (NaN propagates, as in torch) or when
    b is not NaN and a <= b (a >= b for max): ties keep the lowest index."""
    tirx = _tv()[1]

    def keep(a, b):
        cmp = a <= b if is_min else a >= b
        return tirx.Or(_nan_bits(a, dtype, True), tirx.And(cmp, _nan_bits(b, dtype, False)))

    return keep


def _minmax(is_min: bool, with_index: bool):
    def compute(te, root, rows, n, dim, opt, dtype, acc):
        tirx = _tv()[1]
        keep = _better(is_min, dtype)
        j = te.reduce_axis((0, n), name="j")
        if not with_index:
            red = te.comm_reducer(
                lambda a, b: tirx.Select(keep(a, b), a, b),
                lambda t: _inf(t, 1.0 if is_min else -1.0),
                name="minred" if is_min else "maxred",
            )
            return [
                te.compute(
                    (rows, dim), lambda i, u: red(_select(u, root(i, j)), axis=j), name="red"
                )
            ]

        def combine(a, b):
            k = keep(a[0], b[0])
            return tirx.Select(k, a[0], b[0]), tirx.Select(k, a[1], b[1])

        def identity(tv, ti):
            return _inf(tv, 1.0 if is_min else -1.0), tirx.const(-1, ti)

        red = te.comm_reducer(combine, identity, name="argred")
        outs = te.compute(
            (rows, dim), lambda i, u: red((_select(u, root(i, j)), j.var), axis=j), name="red"
        )
        return list(outs)

    return compute


def _kmin(te, root, rows, n, dim, opt, dtype, acc):
    """The K smallest values (ascending) and their indices, by insertion: the state is K
    sorted values then K indices; each new element goes after equal ones (lowest index
    first).  The combine inserts b's first element, so it assumes a sequential reduction."""
    tirx = _tv()[1]
    K = opt
    j = te.reduce_axis((0, n), name="j")

    def combine(a, b):
        v, jv = b[0], b[K]
        vals, idx = list(a[:K]), list(a[K:])
        nv, ni = [], []
        for r in range(K):
            lt = v < vals[r]
            if r == 0:
                nv.append(tirx.Select(lt, v, vals[0]))
                ni.append(tirx.Select(lt, jv, idx[0]))
            else:
                lt_prev = v < vals[r - 1]
                nv.append(tirx.Select(lt, tirx.Select(lt_prev, vals[r - 1], v), vals[r]))
                ni.append(tirx.Select(lt, tirx.Select(lt_prev, idx[r - 1], jv), idx[r]))
        return tuple(nv + ni)

    def identity(*ts):
        return tuple([_inf(t) for t in ts[:K]] + [tirx.const(-1, t) for t in ts[K:]])

    red = te.comm_reducer(combine, identity, name="kminred")

    def body(i, u):
        v = _select(u, root(i, j))
        elem = [v] + [_inf(dtype)] * (K - 1) + [j.var] + [tirx.const(-1, "int32")] * (K - 1)
        return red(tuple(elem), axis=j)

    return list(te.compute((rows, dim), body, name="red"))


# ---------------------------------------------------------------------- LogSumExp family


def _lse(te, root, rows, n, dim, opt, dtype, acc):
    """State (m, s_1..s_G) = running max of F and sum_j exp(F - m) * G_j, per weight column;
    the root formula is Concat(F, G).  One exp per step: exp(-|m_a - m_b|)."""
    tirx = _tv()[1]
    j = te.reduce_axis((0, n), name="j")
    ncols = dim - 1

    def combine(a, b):
        a_big = a[0] >= b[0]  # False when b is NaN: then m and s both become NaN
        same = a[0] == b[0]
        t = tirx.Select(same, tirx.const(1, acc), mathfns.exp(-tirx.abs(a[0] - b[0]), acc))
        m = tirx.Select(a_big, a[0], b[0])
        s = tirx.Select(a_big, a[1] + b[1] * t, a[1] * t + b[1])
        return m, s

    def identity(t0, t1):
        return _inf(t0, -1.0), tirx.const(0, t1)

    red = te.comm_reducer(combine, identity, name="lse")

    def body(i, u):
        comps = root(i, j)
        if acc != dtype:
            comps = [x.astype(acc) for x in comps]
        return red((comps[0], _select(u, comps[1:])), axis=j)

    return list(te.compute((rows, ncols), body, name="red"))


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class RedDef:
    name: str
    kind: str  # schedule tag
    state: Callable[[int, Any, str, str], list]  # (dim F, opt, dtype, acc) -> [(cols, dtype)]
    compute: Callable[..., list]  # (te, root, rows, N, dim, opt, dtype, acc) -> [tensor]
    finalize: Callable[..., Any]  # (states: [torch tensors], opt, dtype) -> output(s)
    grad: str
    weight: Optional[str] = None  # None: no formula2; "optional"; "required"
    needs_k: bool = False
    scalar: bool = False  # F must have dim 1
    root_uses: Optional[Callable[[int], list]] = None  # per root component, if not 1 each
    doc: str = ""


REDUCTIONS: dict[str, RedDef] = {}


def reduction(name: str, **kw: Any) -> None:
    REDUCTIONS[name] = RedDef(name=name, **kw)


def _kview(t, K):
    """(n, D) buffers, one per k -> (n, K, D), squeezed to (n, K) when D = 1 (as pykeops)."""
    import torch

    out = torch.stack(t, dim=1)
    return out.squeeze(-1) if out.shape[-1] == 1 else out


def _lse_final(s, opt, dtype):
    m, sm = s
    return (m + sm.log()).to(dtype)


def _softmax_final(s, opt, dtype):
    m, sm = s
    return (sm[:, 1:] / sm[:, :1]).to(dtype)


def _raw_lse_final(s, opt, dtype):
    import torch

    m, sm = s
    return torch.cat([m[:, :1], sm], dim=1).to(dtype)


def _lse_uses(d: int) -> list:
    return [d - 1] + [1] * (d - 1)  # F is read by every weight column


_with_idx = lambda d, k, dt, acc: [(d, dt), (d, "int32")]  # noqa: E731
_lse_state = lambda d, k, dt, acc: [(d - 1, acc), (d - 1, acc)]  # noqa: E731

reduction(
    "Sum",
    kind="sum",
    state=_sum_state,
    compute=_sum,
    finalize=_sum_final,
    grad="sum",
    doc="sum_j F; gradient: a Sum again",
)
for _name, _is_min in (("Min", True), ("Max", False)):
    _arg = f"Arg{_name}"
    reduction(
        _name,
        kind="select",
        state=_with_idx,
        compute=_minmax(_is_min, True),
        finalize=lambda s, k, dt: s[0],
        grad="select",
        doc=f"{_name.lower()} over j, per component; differentiable (beyond pykeops)",
    )
    reduction(
        _arg,
        kind="select",
        state=_with_idx,
        compute=_minmax(_is_min, True),
        finalize=lambda s, k, dt: s[1].long(),
        grad="none",
        doc=f"int64 index of the {_name.lower()}, per component (lowest on ties)",
    )
    reduction(
        f"{_name}_{_arg}",
        kind="select",
        state=_with_idx,
        compute=_minmax(_is_min, True),
        finalize=lambda s, k, dt: (s[0], s[1].long()),
        grad="select",
        doc=f"({_name.lower()}, int64 index) pair",
    )
reduction(
    "KMin",
    kind="kselect",
    needs_k=True,
    state=lambda d, k, dt, acc: [(d, dt)] * k + [(d, "int32")] * k,
    compute=_kmin,
    finalize=lambda s, k, dt: _kview(s[:k], k),
    grad="select",
    doc="the K smallest values, ascending: (n, K) or (n, K, D)",
)
reduction(
    "ArgKMin",
    kind="kselect",
    needs_k=True,
    state=lambda d, k, dt, acc: [(d, dt)] * k + [(d, "int32")] * k,
    compute=_kmin,
    finalize=lambda s, k, dt: _kview(s[k:], k).long(),
    grad="none",
    doc="int64 indices of the K smallest values",
)
reduction(
    "KMin_ArgKMin",
    kind="kselect",
    needs_k=True,
    state=lambda d, k, dt, acc: [(d, dt)] * k + [(d, "int32")] * k,
    compute=_kmin,
    finalize=lambda s, k, dt: (_kview(s[:k], k), _kview(s[k:], k).long()),
    grad="select",
    doc="(K smallest values, their int64 indices)",
)
reduction(
    "LogSumExp",
    kind="lse",
    state=_lse_state,
    compute=_lse,
    finalize=_lse_final,
    grad="lse",
    weight="optional",
    scalar=True,
    root_uses=_lse_uses,
    doc="log sum_j exp(F) (F scalar), or log sum_j exp(F) G with formula2 = G",
)
reduction(
    "LogSumExpWeight",
    kind="lse",
    state=_lse_state,
    compute=_lse,
    finalize=_lse_final,
    grad="lse",
    weight="required",
    scalar=True,
    root_uses=_lse_uses,
    doc="log sum_j exp(F) G",
)
reduction(
    "SumSoftMaxWeight",
    kind="lse",
    state=_lse_state,
    compute=_lse,
    finalize=_softmax_final,
    grad="softmax",
    weight="required",
    scalar=True,
    root_uses=_lse_uses,
    doc="sum_j exp(F) G / sum_j exp(F)",
)
reduction(
    "Max_SumShiftExp",
    kind="lse",
    state=_lse_state,
    compute=_lse,
    finalize=_raw_lse_final,
    grad="unsupported",
    weight="optional",
    scalar=True,
    root_uses=_lse_uses,
    doc="raw (m, s) state: m = max F, s = sum exp(F - m)",
)
reduction(
    "Max_SumShiftExpWeight",
    kind="lse",
    state=_lse_state,
    compute=_lse,
    finalize=_raw_lse_final,
    grad="unsupported",
    weight="required",
    scalar=True,
    root_uses=_lse_uses,
    doc="raw (m, s) state with weight G",
)
REDUCTIONS["SoftMax"] = REDUCTIONS["SumSoftMaxWeight"]
