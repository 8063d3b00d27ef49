"""Where a CPU K-nearest-neighbour search takes the dot-product guard
(``schedules/guard.py``): the formula is a squared distance of an output-indexed and a
reduced-index variable, the template's rule admits it, and the call's points have squared
norms that cannot overflow; then the guarded kernel's two extra arguments."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from . import schedules
from .arrays import Numpy, xp
from .reductions import Reduction


def sqdist_of(r: Reduction) -> tuple:
    """(position of the reduced-index variable, of the output-indexed one, their dim) if
    ``r``'s formula is the squared distance of two such variables (``SqDist(x, y)``,
    ``Sum(Square(x - y))``, either order), else ()."""
    f = r.formula
    if f.op == "Scalprod" and f.args[0] is f.args[1]:
        d = f.args[0]
    elif f.op == "Sum" and f.args[0].op == "Square":
        d = f.args[0].args[0]
    else:
        return ()
    if d.op != "Subtract" or not all(a.is_var for a in d.args):
        return ()
    (p, dim, c), (q, _, e) = d.args[0].params, d.args[1].params
    if {c, e} != {0, 1}:
        return ()
    return (p, q, dim) if c != r.out_cat else (q, p, dim)


def candidate(
    r: Reduction, dtype: str, dev: Any, n_red: int, rows_of: Optional[Callable] = None
) -> bool:
    """Whether this call may take the guarded kernel: a squared distance of the dimension,
    reduction and dtype the device's template guards, with enough reduced rows that the
    guard pays (``TargetTemplate.guard_pays``) with the guarded kernel's row block --
    ``rows_of(spec)``, known before it is compiled, so a kernel the call would not take is
    never built -- or, without ``rows_of``, with a row block of one vector."""
    hit = r.memo.get("sqdist")
    if hit is None:
        hit = r.memo["sqdist"] = sqdist_of(r)
    tpl, k = schedules.for_device(dev.type), r.k or 1
    if not (hit and tpl.norm_guard(r.red, hit[2], dtype) and tpl.guard_pays(1, k, n_red)):
        return False
    if rows_of is None:
        return True
    key = ("guard rows", dtype, dev)
    if key not in r.memo:
        r.memo[key] = rows_of(r.spec(dtype, guard=True))
    return tpl.guard_pays(r.memo[key], k, n_red)


def guard_norms(
    r: Reduction, args: Sequence[Any], dtype: str, dev: Any, rows: int, n_red: int
) -> Any:
    """(the reduced rows' squared norms (n, 1), the reduced rows) -- the guarded kernel's
    extra arguments -- for a :func:`candidate` call whose guarded kernel has ``rows`` rows a
    block, where the guard pays there (``TargetTemplate.guard_pays``) and no squared norm is
    NaN or over a quarter of the dtype's largest value (the guard's bound assumes no
    overflow); else None: the call takes the general kernel."""
    if not schedules.for_device(dev.type).guard_pays(rows, r.k or 1, n_red):
        return None
    p, q, _ = r.memo["sqdist"]
    red, out = args[p], args[q]
    x, np = xp(red), Numpy.lib()
    if 0 in red.shape or 0 in out.shape:
        return None
    norms = x.empty((red.shape[0], 1), dtype, red)
    h = x.host(norms)[:, 0]
    yh, xh = x.host(red), x.host(out)
    np.einsum("ij,ij->i", yh, yh, out=h)
    top = np.finfo(dtype).max / 4
    if not h.max() <= top or not np.einsum("ij,ij->i", xh, xh).max() <= top:
        return None
    return norms, red
