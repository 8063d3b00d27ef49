"""Where a CPU K-nearest-neighbour search takes the dot-product guard
(``schedules/guard.py``): the formula is a squared distance of an output-indexed and a
reduced-index variable, the template's rule admits it, and the call's points have squared
norms that cannot overflow; then the guarded kernel's two extra arguments."""

from __future__ import annotations

from typing import Any, Sequence

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


def guard_norms(r: Reduction, args: Sequence[Any], dtype: str, dev: Any) -> Any:
    """(the reduced rows' squared norms (n, 1), the reduced rows) -- the guarded kernel's
    extra arguments -- where the device's template computes a K-min
    of squared distances with the dot-product guard (``schedules/guard.py``), else None --
    also when a squared norm is NaN or over a quarter of the dtype's largest value (the
    guard's bound assumes no overflow: those calls take the general kernel)."""
    hit = r.memo.get("sqdist")
    if hit is None:
        hit = r.memo["sqdist"] = sqdist_of(r)
    if not hit or not schedules.for_device(dev.type).norm_guard(r.red, hit[2], dtype):
        return None
    red, out = args[hit[0]], args[hit[1]]
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
