"""Where a CPU K-nearest-neighbour search takes the dot-product guard
(``schedules/guard.py``) or, in few dimensions, the box test (``schedules/box.py``): the
formula is a squared distance of an output-indexed and a reduced-index variable, the
template's rule admits it, and the call's points have squared norms that cannot overflow;
then the guarded kernel's extra arguments."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from . import schedules, targets
from .arrays import Numpy, xp
from .reductions import Reduction

#: K-min and Min searches of float32 points of INT16_MIN_DIM values or more take the guard with
#: 16-bit integer dot products (``schedules/guard_dots.py``) on CPUs with AVX-512 VNNI or
#: with AVX2 and not AVX-512 (the running CPU's flags; with ``TVMRED_LLVM_MCPU``, kernels
#: for another CPU, the kernel's pass decides from its CPU and keeps the float guard where it
#: has neither).  ArgKMin K=10 1e4 x 1e4, 2-vCPU Zen 4, kernel against kernel in one process,
#: same answers, over the float guard: AVX-512 VNNI D=24 1.36x, 25 1.34x, 28 1.36x, 32 1.43x,
#: 40 1.46x, 64 1.48x, 128 1.56x; AVX2 kernels (znver3) D=24 1.15x, 32 1.05x, 64 1.37x,
#: 128 1.47x; ArgMin (k-means) AVX-512 D=24 1.56x, 64 1.71x, 128 1.78x, AVX2 kernels 1.04x,
#: 1.43x, 1.56x.  AVX-512 D=12 / 16 / 20: 0.45 / 0.53 / 0.50x (the float guard keeps so few
#: values' row block in registers, shared by the dot products and the exact distances; the
#: integer words compete with it and spill).
INT16 = True
INT16_MIN_DIM = 24


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
    r: Reduction,
    dtype: str,
    dev: Any,
    n_red: int,
    rows_of: Optional[Callable] = None,
    n_out: int = 0,
) -> bool | str:
    """Whether this call may take the guarded kernel: a squared distance of the dimension,
    reduction and dtype the device's template guards, with enough reduced rows that the
    guard pays (``TargetTemplate.guard_pays``) with the guarded kernel's row block --
    ``rows_of(spec)``, known before it is compiled, so a kernel the call would not take is
    never built -- or, without ``rows_of``, with a row block of one vector.  "int16" where
    the guard's dot products are taken in integers (:data:`INT16`); "box" for the box test
    of a low-dimensional K-min of ``n_out`` output rows in a curve's order on a CPU with AVX2
    (``TargetTemplate.box_guard``, ``local_rows``)."""
    hit = r.memo.get("sqdist")
    if hit is None:
        hit = r.memo["sqdist"] = sqdist_of(r)
    tpl, k = schedules.for_device(dev.type), r.k or 1
    if hit and tpl.box_guard(r.red, hit[2], dtype, k):
        ok = "avx2" in targets.host_flags() and tpl.box_pays(n_out, n_red)
        ok = ok and tpl.local_rows(r.red, hit[2], n_out, n_red)
        return "box" if ok else False  # (AVX2 or AVX-512: the kernel's pass checks its CPU)
    if not (hit and tpl.norm_guard(r.red, hit[2], dtype) and tpl.guard_pays(1, k, n_red)):
        return False
    if rows_of is None:
        return True
    key = ("guard rows", dtype, dev)
    if key not in r.memo:
        r.memo[key] = rows_of(r.spec(dtype, guard=True))
    if not tpl.guard_pays(r.memo[key], k, n_red):
        return False
    return "int16" if int16(r, dtype, hit[2]) else True


def int16(r: Reduction, dtype: str, dim: int) -> bool:
    """Whether a guarded call takes the 16-bit integer dot products (:data:`INT16`)."""
    if not (INT16 and dtype == "float32" and dim >= INT16_MIN_DIM):
        return False
    flags = targets.host_flags()
    if os.environ.get("TVMRED_LLVM_MCPU"):  # kernels for another CPU: its pass decides
        return "avx2" in flags
    return "avx512_vnni" in flags or ("avx2" in flags and "avx512f" not in flags)


def guard_norms(
    r: Reduction,
    args: Sequence[Any],
    dtype: str,
    dev: Any,
    rows: int,
    n_red: int,
    kind: bool | str = True,
) -> Any:
    """(the reduced rows' squared norms (n, 1), the reduced rows) -- the guarded kernel's
    extra arguments -- for a :func:`candidate` call whose guarded kernel has ``rows`` rows a
    block, where the guard pays there (``TargetTemplate.guard_pays``) and no squared norm is
    NaN or over a quarter of the dtype's largest value (the guard's bound assumes no
    overflow); else None: the call takes the general kernel.  ``kind`` "int16": the four of
    :func:`int16_args` where they pay; "box": the reduced rows in the box test's blocks."""
    tpl = schedules.for_device(dev.type)
    if kind != "box" and not tpl.guard_pays(rows, r.k or 1, n_red):
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
    if kind == "box":  # each value of W consecutive j contiguous (schedules/box.py)
        w, dim = tpl.box_guard(r.red, red.shape[1], dtype, r.k or 1), red.shape[1]
        blocks, nb = x.empty(red.shape, dtype, red), red.shape[0] // w
        bh = x.host(blocks).reshape(-1)
        bh[: nb * w * dim] = yh[: nb * w].reshape(nb, w, dim).transpose(0, 2, 1).reshape(-1)
        bh[nb * w * dim :] = yh[nb * w :].reshape(-1)  # the tail: read as it is
        return (blocks,)
    q = int16_args(x, red, yh, xh, h) if kind == "int16" else None
    return q or (norms, red)


def bits(dim: int) -> int:
    """Bits of a quantized value for ``dim`` values a point: the most, up to 15, with the
    ``dim`` (rounded up to pairs) products of two ``2^b - 1`` summing below 2^31."""
    b, pairs = 15, dim + dim % 2
    while pairs * (2**b - 1) ** 2 > 2**31 - 1:
        b -= 1
    return b


#: the int16 guard where its typical margin (``guard_dots.py``) is at most this share of the
#: median squared distance of a reduced point to their mean, doubled (Gaussian points D=64:
#: 0.15 %; points far from the origin or an outlier make the steps coarse: the float guard)
MAX_MARGIN = 0.01


def int16_args(x: Any, red: Any, yh: Any, xh: Any, sq: Any) -> Optional[tuple]:
    """(ny, the reduced rows, yq, qc) of ``schedules/guard_dots.py`` (its docstring has the
    bound) from the reduced rows ``yh`` (host view of ``red``), the output-indexed ones
    ``xh`` and the squared norms ``sq`` (float32, as the float guard's); None where the
    typical margin is over :data:`MAX_MARGIN` of the typical squared distance, or where the
    points are so small (below ~2^-50) that the product of the scales overflows float32."""
    np = Numpy.lib()
    n, dim = yh.shape
    top, u = 2 ** bits(dim) - 1, 2.0**-24
    mx, my = max(-float(xh.min()), float(xh.max())), max(-float(yh.min()), float(yh.max()))
    sx = np.float32(top / mx if mx > 0 else 1.0)
    sx = np.nextafter(sx, np.float32(0)) if float(sx) * mx > top else sx  # |x sx| <= top
    sy = np.float32(top / my if my > 0 else 1.0)
    sy = np.nextafter(sy, np.float32(0)) if float(sy) * my > top else sy
    if float(sx) * float(sy) > 2.0**100:  # tiny points: c1 (below) would be subnormal
        return None
    # half widths of the steps: rounding to an integer, and of x sx, y sy in float32
    ex, ey = (0.5 + u * 2.0**15) / float(sx), (0.5 + u * 2.0**15) / float(sy)
    # |y_j|_1 summed in float32 (within gamma_D), made larger by 2 (D + 2) u
    up, ly = 1 + 64 * u, np.abs(yh).sum(1).astype(np.float64) * (1 + 2 * (dim + 2) * u)
    c = yh[:: max(1, n // 2048)]  # the spread of ~2048 sample points
    c = c - c.mean(0, dtype=np.float64).astype(yh.dtype)
    spread = 2 * float(np.median(np.einsum("ij,ij->i", c, c)))  # an outlier moves it little
    if not 2 * (ex + ey) * float(np.median(ly)) + 2 * dim * ex * ey <= MAX_MARGIN * spread:
        return None
    d = 8 * (dim + 4) * u  # as the kernel's (guard.py); sq within gamma_D, as there
    ny64 = sq.astype(np.float64) * (1 - d) * (1 - (dim + 2) * u) - 2 * ex * ly * up
    ny = x.empty((n, 1), "float32", red)
    h = x.host(ny)[:, 0]
    h[:] = ny64
    h[h > ny64] = np.nextafter(h[h > ny64], np.float32(-np.inf))  # rounded down
    pairs = (dim + 1) // 2
    yq = x.empty((n, pairs), "float32", red)
    words = x.host(yq).view(np.int16)
    words[:, dim:] = 0
    np.rint(yh * sy, out=words[:, :dim], casting="unsafe")
    qc = x.empty((4,), "float32", red)
    c = np.array([2 * ey, 2 * dim * ex * ey]) * up
    c32 = c.astype(np.float32)
    c32 = np.where(c32 < c, np.nextafter(c32, np.float32(np.inf)), c32)  # rounded up
    x.host(qc)[:] = [sx, 2 / (float(sx) * float(sy)), *c32]  # the second to nearest
    return ny, red, yq, qc
