"""Vectorisable elementary functions written as TIR expressions.

LLVM turns ``llvm.exp`` on a vector into one libm call per lane (no vector math library is
linked into TVM's JIT), which made exp-heavy kernels (Gaussian kernels, LogSumExp, SoftMax)
call ``expf`` 32 times per SIMD step.  ``exp`` below is the Cephes algorithm — range reduction
x = n ln2 + r, a polynomial (float32) or Pade (float64) approximation of e^r, and 2^n built from
the exponent bits — so it compiles to straight-line SIMD code.

Accuracy (measured by ``tests/test_mathfns.py`` against float64/long double references over
[-100, 100] and [-745, 709]): float32 max 2 ulp, float64 max 2 ulp.  exp(+inf) = inf,
exp(-inf) = 0, exp(nan) = nan, overflow gives inf; results below the smallest normal are
denormal down to 2^-149 (float32) / 2^-1074 (float64), then 0.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from ._tvm import tirx as _tirx

#: "poly": the SIMD-friendly expressions below; "native": TVM's intrinsics (CUDA), float32
#: exp as exp2f (see :func:`exp`).  Each target's template says which
#: (``TargetTemplate.math``); ``tvmred.lower`` sets it while it builds the kernel's TE.
MODE: contextvars.ContextVar[str] = contextvars.ContextVar("tvmred_math_mode", default="poly")


@contextlib.contextmanager
def mode(value: str) -> Iterator[None]:
    token = MODE.set(value)
    try:
        yield
    finally:
        MODE.reset(token)


# (log2(e), ln2 split in two parts, max, min, polynomial) per dtype
_F32 = dict(
    log2e=1.44269504088896341,
    c1=0.693359375,
    c2=-2.12194440e-4,
    hi=88.72283935546875,
    lo=-103.97,
    bits="int32",
    mant=23,
    bias=127,
    nanmask=0x7FFFFFFF,
    inf=0x7F800000,
    poly=(
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    ),
)
_F64 = dict(
    log2e=1.4426950408889634073599,
    c1=6.93145751953125e-1,
    c2=1.42860682030941723212e-6,
    hi=709.782712893383996843,
    lo=-745.2,
    bits="int64",
    mant=52,
    bias=1023,
    nanmask=0x7FFFFFFFFFFFFFFF,
    inf=0x7FF0000000000000,
    p=(1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1),
    q=(
        3.00198505138664455042e-6,
        2.52448340349684104192e-3,
        2.27265548208155028766e-1,
        2.00000000000000000009e0,
    ),
)


def _pow2(n: Any, k: dict, dt: str) -> Any:
    """2^n for an integer-valued float n with bias-1 <= n+bias <= 2*bias (one normal number)."""
    t = _tirx()
    e = (n.astype(k["bits"]) + t.const(k["bias"], k["bits"])) << t.const(k["mant"], k["bits"])
    return t.reinterpret(dt, e)


LOG2E_F32 = 1.4426950216293335  # log2(e) rounded to float32 (exactly representable)


def exp(x: Any, dt: str) -> Any:
    """e^x (see the module docstring for accuracy and special values)."""
    t = _tirx()
    if MODE.get() == "native" and dt == "float32":
        # CUDA: exp2f is one MUFU.EX2 (and 3 instructions for subnormals) against ~8 for
        # expf; relative error <= |x| 2^-23 (log2(e) and the product rounded to float32)
        # + 2 ulp (exp2f): 4.8e-7 for |x| <= 2, 1.1e-5 at |x| = 88 (tests/test_mathfns.py)
        return t.exp2(x * t.const(LOG2E_F32, dt))
    if dt not in ("float32", "float64") or MODE.get() != "poly":
        return t.exp(x)
    k = _F32 if dt == "float32" else _F64
    c = lambda v: t.const(v, dt)  # noqa: E731
    xc = t.max(t.min(x, c(k["hi"])), c(k["lo"]))
    n = t.floor(xc * c(k["log2e"]) + c(0.5))
    r = xc - n * c(k["c1"]) - n * c(k["c2"])
    if dt == "float32":
        p = c(k["poly"][0])
        for a in k["poly"][1:]:
            p = p * r + c(a)
        er = p * (r * r) + r + c(1.0)
    else:
        rr = r * r
        pp = r * ((c(k["p"][0]) * rr + c(k["p"][1])) * rr + c(k["p"][2]))
        qq = ((c(k["q"][0]) * rr + c(k["q"][1])) * rr + c(k["q"][2])) * rr + c(k["q"][3])
        er = c(1.0) + c(2.0) * (pp / (qq - pp))
    n1 = t.floor(n * c(0.5))  # 2^n = 2^n1 * 2^(n-n1): both factors normal over the range
    y = er * _pow2(n1, k, dt) * _pow2(n - n1, k, dt)
    y = t.Select(x > c(k["hi"]), c(float("inf")), y)
    y = t.Select(x < c(k["lo"]), c(0.0), y)
    return t.Select(is_nan(x, dt), x, y)


def is_nan(x: Any, dt: str, nan: bool = True) -> Any:
    """x is NaN (or, with ``nan=False``, is not), tested on the bits with integer comparisons:
    TVM's simplifier rewrites float tests such as ``not (b < a)`` into ``a <= b`` and
    ``x != x`` into False, which is wrong for NaN."""
    t = _tirx()
    k = _F32 if dt == "float32" else _F64
    bits = t.bitwise_and(t.reinterpret(k["bits"], x), t.const(k["nanmask"], k["bits"]))
    return bits > t.const(k["inf"], k["bits"]) if nan else bits <= t.const(k["inf"], k["bits"])
