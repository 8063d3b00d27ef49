"""Vectorisable elementary functions written as TIR expressions.

LLVM turns ``llvm.exp`` on a vector into one libm call per lane (no vector math library is
linked into TVM's JIT), which made exp-heavy kernels (Gaussian kernels, LogSumExp, SoftMax)
call ``expf`` 32 times per SIMD step.  ``exp`` below reduces x = n ln2 + r, evaluates a
polynomial in r (degree 6 for float32, 11 for float64: fits of the relative error) and
builds 2^n from integer bits -- straight-line SIMD code with no division, table or
float-to-integer conversion.

Accuracy (measured by ``tests/test_mathfns.py`` against long double references over
[-103, 88.7] and [-744, 709.7]): float32 and float64 within 1 ulp (0.88 and 0.92 ulp
seen).  exp(+inf) = inf,
exp(-inf) = 0, exp(nan) = nan, overflow gives inf; results below the smallest normal number
(x < -87.34 in float32, -708.4 in float64) are 0: a denormal result costs a microcode assist
per SIMD lane on x86 CPUs, which made kernels whose exponents are mostly that small (a
Sinkhorn LogSumExp with eps = 0.01, a narrow Gaussian) 12x slower.

``log`` (of positive normal numbers: soft-DTW's softmin sums) is fdlibm's method, within
0.75 ulp measured in float32 and float64; it made a soft-DTW kernel of 32 x 32 cells 3.7x
faster than LLVM's one ``logf`` call per lane (1.7x with AVX2 kernels).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from ._tvm import tirx as _tirx

#: "poly": the SIMD-friendly expressions below, for any CPU; "avx512": the same with AVX-512's
#: scaling instruction; "native": TVM's intrinsics (CUDA), float32 exp as exp2f (see
#: :func:`exp`).  Each target's template says which
#: (``TargetTemplate.math``); ``tvmred.lower`` sets it while it builds the kernel's TE.
MODE: contextvars.ContextVar[str] = contextvars.ContextVar("tvmred_math_mode", default="poly")


@contextlib.contextmanager
def scoped(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """``var`` set to ``value`` inside the block (a lowering setting: MODE, ops.SUM_CHAINS)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def mode(value: str) -> contextlib.AbstractContextManager:
    return scoped(MODE, value)


# Per dtype: log2(e), ln 2 split in two parts (Cody-Waite), the clamp [lo, hi] (see exp),
# the rounding shifter 1.5 * 2^mant, the integer and exponent layout, and the polynomial
# q(r) with e^r = 1 + r + r^2 q(r) on |r| <= ln(2)/2
_F32 = dict(
    log2e=1.44269504088896341,
    c1=0.693359375,
    c2=-2.12194440e-4,
    hi=88.73,  # > 128 ln 2 = ln 2^128: clamped, the result is still inf
    lo=-104.0,  # e^-104 < 2^-150: clamped, the result still rounds to 0
    tiny=-87.33654475,  # ln 2^-126: below, the result (denormal) is flushed to 0
    near_tiny=-87.3,  # e^-87.3 = 1.19e-38: normal (exp_neg's floor without flushing)
    shifter=12582912.0,  # 1.5 * 2^23
    bits="int32",
    mant=23,
    bias=127,
    nanmask=0x7FFFFFFF,
    inf=0x7F800000,
    # e^r = 1 + r + r^2 q(r), q of degree 4: a minimax fit of the relative error (Lawson's
    # iteration, 3.1e-9 before rounding to float32), one FMA fewer than Cephes' expf's degree
    # 5 q; measured 0.88 ulp for exp and exp_neg (Cephes': 0.87)
    poly=(
        0.001381461275741458,
        0.008368710055947304,
        0.04166838899254799,
        0.1666652113199234,
        0.4999999403953552,
    ),
)
#: float32 terms of a sum (exp_neg's ``term=True``): ln 2 in one constant and q of degree 3
#: (Lawson's iteration: 1.05e-7 relative before rounding)
_F32_TERM = dict(
    _F32,
    ln2=0.6931471805599453,
    poly=(0.00831252731901631, 0.04189011786105984, 0.1666711445422123, 0.4999923175105939),
)
_F64 = dict(
    log2e=1.4426950408889634073599,
    c1=6.93145751953125e-1,
    c2=1.42860682030941723212e-6,
    hi=709.8,  # > 1024 ln 2
    lo=-745.5,  # e^-745.5 < 2^-1075
    tiny=-708.39641853,  # ln 2^-1022
    near_tiny=-708.3,  # e^-708.3 = 2.4e-308: normal
    shifter=6755399441055744.0,  # 1.5 * 2^52
    bits="int64",
    mant=52,
    bias=1023,
    nanmask=0x7FFFFFFFFFFFFFFF,
    inf=0x7FF0000000000000,
    # e^r = 1 + r + r^2 q(r), q of degree 9: a fit of the relative error over
    # |r| <= 1.0005 ln(2)/2 (Lawson's iteration in 50-digit arithmetic, mpmath): 3.6e-18,
    # 1.1e-17 (0.1 ulp) with the coefficients rounded to float64; exp 0.92 ulp at most, was
    # 0.86 (1.6e6 points over [-708.3, 709.7]) -- two FMAs fewer than the
    # Taylor polynomial to r^13 / 13! it replaces (4.2e-18): float64 Gaussian 1e4, 2-vCPU
    # Zen 4, kernel against kernel in one process, AVX-512 1.10x, AVX2 kernels 1.18x
    poly=(
        2.5000020789555686e-08,
        2.76303068029812e-07,
        2.755758680037073e-06,
        2.480149294798737e-05,
        0.0001984126950577352,
        0.0013888888943761658,
        0.00833333333349498,
        0.04166666666652972,
        0.1666666666666641,
        0.5000000000000011,
    ),
)


def _bits(x: Any, k: dict) -> Any:
    """The bits of ``x`` as an integer, behind a cast TVM's simplifier does not look through
    (it would fold ``(a + s) - s`` to ``a``, losing the rounding; LLVM keeps IEEE semantics)."""
    return _tirx().reinterpret(k["bits"], x)


LOG2E_F32 = 1.4426950216293335  # log2(e) rounded to float32 (exactly representable)


def exp(x: Any, dt: str) -> Any:
    """e^x (see the module docstring for accuracy and special values).

    x is clamped to [lo, hi] keeping NaN (then NaN flows through the arithmetic); n = round(x log2 e) comes from adding the shifter 1.5 * 2^mant, whose last
    bits are then n; r = x - n ln 2 (Cody-Waite), e^r by Horner's rule, then scaled by 2^n:
    mode "avx512" with ``llvm.ldexp`` (one ``vscalef``, exact rounding down to denormals and
    up to overflow), mode "poly" (any CPU) as 2^(n1 + 1) 2^(n2 + 1), n1 = floor(n / 2),
    n2 = n - n1, each factor a normal number built from integer bits, e^r / 4 by Horner's
    rule (the product rounds once).  No division, no float-to-integer conversion (AVX2 has
    none for 64-bit integers), no table: 19 SIMD operations in float32 (15 with AVX-512), 24
    in float64 (20)."""
    t = _tirx()
    mode = MODE.get()
    if mode == "native" and dt == "float32":
        # CUDA: exp2f is one MUFU.EX2 (and 3 instructions for subnormals) against ~8 for
        # expf; relative error <= |x| 2^-23 (log2(e) and the product rounded to float32)
        # + 2 ulp (exp2f): 4.8e-7 for |x| <= 2, 1.1e-5 at |x| = 88 (tests/test_mathfns.py)
        return t.exp2(x * t.const(LOG2E_F32, dt))
    if dt not in ("float32", "float64") or mode not in ("poly", "avx512"):
        return t.exp(x)
    k = _F32 if dt == "float32" else _F64
    c = lambda v: t.const(v, dt)  # noqa: E731
    ci = lambda v: t.const(v, k["bits"])  # noqa: E731
    # the constant first: min(a, b) is (a < b ? a : b), so a NaN x is kept (x is read once:
    # nested, a sub-expression read several times grows the kernel's text exponentially).
    # Results below the smallest normal number (x < tiny) are 0: a denormal or underflowing
    # result costs a microcode assist per lane on x86 (a Sinkhorn LogSumExp with eps = 0.01,
    # most exponents below -87, ran 12x slower); NaN compares false and is kept.
    xc = t.min(c(k["hi"]), x)
    if mode != "avx512":  # "avx512": the flushed lanes are masked off in vscalef, no clamp
        xc = t.max(c(k["lo"]), xc)
    shifted, n = _round_log2e(xc, k, dt, 1)
    r = xc - n * c(k["c1"]) - n * c(k["c2"])
    scale = 1.0 if mode == "avx512" else 0.25  # "poly" computes e^r / 4
    q = _horner(r, k, dt, scale)
    flushed = xc < c(k["tiny"])
    if mode == "avx512":
        return t.Select(flushed, c(0.0), _ldexp(q, shifted, k, dt))
    shifter_bits = int(_bits_of(k["shifter"], k))
    # u = n + 2 bias + 2 >= 0; h = u >> 1 = n1 + bias + 1, u - h = n2 + bias + 1
    u = shifted - ci(shifter_bits - 2 * k["bias"] - 2)
    unsigned = "u" + k["bits"]  # a logical shift (AVX2 has no 64-bit arithmetic one)
    h = t.reinterpret(k["bits"], t.shift_right(t.reinterpret(unsigned, u), t.const(1, unsigned)))
    # flushed before the products (their tiny result would be the assist)
    return t.Select(flushed, c(0.0), q) * _exponent(h, k, dt) * _exponent(u - h, k, dt)


def exp_neg(y: Any, dt: str, flush: bool = True, term: bool = False) -> Any:
    """e^-y for y >= 0 (+inf and NaN included): the exponent of a running max's rescale
    (LogSumExp's combine, ``-|m_a - m_b|``), where :func:`exp`'s overflow side is never
    reached.  The same reduction and polynomial as :func:`exp` (so the same accuracy, within 1
    ulp), with three shortcuts: one clamp, not two; the polynomial in -r with its odd
    coefficients negated (no negation of the argument); and 2^n as one normal number, n in
    [-126, 0] (float32) or [-1022, 0] (float64) once the flushed lanes are clamped to the
    flush threshold -- 14 SIMD operations in float32 with AVX2 where -|d| then :func:`exp`
    took 22 (a LogSumExp pair: 44), 13 with AVX-512.  Other modes: :func:`exp` of -y.

    ``flush=False``: y clamped to ``near_tiny`` instead (a normal number just above the
    smallest, e^-87.3 or e^-708.3, where the result would be below it) -- two operations
    fewer, for a caller that adds the result, scaled by at most its count of terms, to a
    sum of at least 1 (an unweighted LogSumExp's rescale: an error of 1.2e-38 per term).
    Mode "avx512" flushes anyway (a masked vscalef: no operation to save).

    ``term=True`` (float32; float64 as without it): for a term of a sum of at least 1 (a
    two-pass LogSumExp's e^(F - max)), two FMAs fewer -- ln 2 in one constant, so -r is off
    by n 1.9e-9 (a relative error of y 2.8e-9, which the sum weighs by the term's e^-y: at
    most ln(terms) 2.8e-9 of it), and a degree-5 polynomial (1.05e-7 relative before
    rounding): a relative error of at most 1.7e-7 + y 3e-9 (2.1 ulp for y <= 5; measured in
    tests/test_mathfns.py) -- below what the sum's own rounding adds.  The two-pass Sinkhorn
    LogSumExp runs 1.13x faster with AVX2 kernels."""
    t = _tirx()
    mode = MODE.get()
    if dt not in ("float32", "float64") or mode not in ("poly", "avx512"):
        return exp(-y, dt)
    k = (_F32_TERM if term else _F32) if dt == "float32" else _F64
    c = lambda v: t.const(v, dt)  # noqa: E731
    flush = flush or mode == "avx512"  # there the flush is free: vscalef's mask
    # flushed: e^-y below the smallest normal number (NaN compares false and flows through)
    flushed = y > c(-k["tiny"])
    # clamped at the threshold (the constant first keeps a NaN y): n >= -126 (-1022), so 2^n
    # below is a normal number in every lane, flushed ones included (0 times it is 0)
    if not flush:
        yc = t.min(c(-k["near_tiny"]), y)
    else:
        yc = y if mode == "avx512" else t.min(c(-k["tiny"]), y)
    shifted, n = _round_log2e(yc, k, dt, -1)
    if "ln2" in k:  # -r, r = -y - n ln 2: in one FMA (term=True)
        rn = yc + n * c(k["ln2"])
    else:  # Cody-Waite: ln 2 in two parts, n c1 exact
        rn = yc + n * c(k["c1"]) + n * c(k["c2"])
    q = _horner(rn, k, dt, sign=-1)  # e^r = e^-rn
    if mode == "avx512":
        return t.Select(flushed, c(0.0), _ldexp(q, shifted, k, dt))
    shifter_bits = int(_bits_of(k["shifter"], k))
    two_n = _exponent(shifted - t.const(shifter_bits - k["bias"], k["bits"]), k, dt)
    return (t.Select(flushed, c(0.0), q) if flush else q) * two_n


def _round_log2e(v: Any, k: dict, dt: str, sign: int) -> tuple:
    """(the shifter's bits + n, n as a float), n = round(sign v log2 e): adding the shifter
    1.5 * 2^mant rounds, and its last bits are then n."""
    t = _tirx()
    shifted = _bits(v * t.const(sign * k["log2e"], dt) + t.const(k["shifter"], dt), k)
    return shifted, t.reinterpret(dt, shifted) - t.const(k["shifter"], dt)


def _horner(r: Any, k: dict, dt: str, scale: float = 1.0, sign: int = 1) -> Any:
    """scale e^(sign r) on the reduced range: 1 + r + r^2 q(r) by Horner's rule, highest
    degree first (sign -1: the odd coefficients negated)."""
    t = _tirx()
    coeffs = (*k["poly"], 1.0, 1.0)
    top = len(coeffs) - 1  # the degree of coeffs[0]
    q = t.const(coeffs[0] * scale * sign**top, dt)
    for deg, a in zip(range(top - 1, -1, -1), coeffs[1:]):
        q = q * r + t.const(a * scale * sign**deg, dt)
    return q


def _ldexp(q: Any, shifted: Any, k: dict, dt: str) -> Any:
    """q 2^n from the shifter's bits + n (mode "avx512": one vscalef)."""
    t = _tirx()
    n = shifted - t.const(int(_bits_of(k["shifter"], k)), k["bits"])
    return t.call_llvm_pure_intrin(dt, "llvm.ldexp", q, n.astype("int32"))


def _bits_of(v: float, k: dict) -> int:
    import struct

    if k["bits"] == "int32":
        return struct.unpack("<i", struct.pack("<f", v))[0]
    return struct.unpack("<q", struct.pack("<d", v))[0]


def _exponent(e: Any, k: dict, dt: str) -> Any:
    """The float whose biased exponent is ``e`` (1 <= e <= 2 bias): 2^(e - bias)."""
    t = _tirx()
    return t.reinterpret(dt, t.shift_left(e, t.const(k["mant"], k["bits"])))


def is_nan(x: Any, dt: str, nan: bool = True) -> Any:
    """x is NaN (or, with ``nan=False``, is not), tested on the bits with integer comparisons:
    TVM's simplifier rewrites float tests such as ``not (b < a)`` into ``a <= b`` and
    ``x != x`` into False, which is wrong for NaN; and its ``isnan`` intrinsic, a call, is
    miscompiled inside a vectorised tuple reducer (Min/ArgMin gave wrong answers)."""
    t = _tirx()
    k = _F32 if dt == "float32" else _F64
    bits = t.bitwise_and(t.reinterpret(k["bits"], x), t.const(k["nanmask"], k["bits"]))
    return bits > t.const(k["inf"], k["bits"]) if nan else bits <= t.const(k["inf"], k["bits"])


_SQRT2 = 1.4142135623730951
#: fdlibm's log (FreeBSD msun e_log.c, e_logf.c): ln 2 in two parts, and the coefficients of
#: R(z) ~ (log(1 + s) - log(1 - s)) / s - 2, z = s^2 (|error| < 2^-58.45 double, 2^-34.24 float)
_LOG = {
    "float64": dict(
        ln2=(6.93147180369123816490e-01, 1.90821492927058770002e-10),
        lg=(
            6.666666666666735130e-01,
            3.999999999940941908e-01,
            2.857142874366239149e-01,
            2.222219843214978396e-01,
            1.818357216161805012e-01,
            1.531383769920937332e-01,
            1.479819860511658591e-01,
        ),
    ),  # fmt: skip
    "float32": dict(
        ln2=(6.9313812256e-01, 9.0580006145e-06),
        lg=(0.66666662693, 0.40000972152, 0.28498786688, 0.24279078841),
    ),
}


def log(x: Any, dt: str) -> Any:
    """ln x for a positive normal number x (NaN gives NaN; 0, negatives, infinities and
    denormals are not handled: callers pass sums of exponentials, such as soft-DTW's
    softmin's, in [1, 3]).  fdlibm's method: x = 2^k m from the bits, m in [sqrt(1/2),
    sqrt(2)], f = m - 1 (exact), s = f / (2 + f), ln x = k ln 2 + f - f^2/2 + s (f^2/2 + R(s^2))
    -- one division, no table, no libm call (LLVM turns ``llvm.log`` on a vector into one
    call per lane); within 1 ulp (``tests/test_mathfns.py``)."""
    t = _tirx()
    if MODE.get() == "native" or dt not in ("float32", "float64"):
        return t.log(x)
    k = _F32 if dt == "float32" else _F64
    c = lambda v: t.const(v, dt)  # noqa: E731
    ci = lambda v: t.const(v, k["bits"])  # noqa: E731
    # every value read more than once is a Let: inlined, the copies multiply (the argument, a
    # sum of exponentials, would be copied 15 times)
    lets: list = []

    def let(name: str, value: Any) -> Any:
        v = t.Var(name, dt)
        lets.append((v, value))
        return v

    x = let("log_x", x)
    bits = t.reinterpret(k["bits"], x)
    e = t.shift_right(bits, ci(k["mant"])) - ci(k["bias"])
    m = t.reinterpret(dt, t.bitwise_or(t.bitwise_and(bits, ci((1 << k["mant"]) - 1)),
                                       ci(k["bias"] << k["mant"])))  # fmt: skip
    m = let("log_m", m)
    big = m > c(_SQRT2)
    kf = t.Cast(dt, e + t.Select(big, ci(1), ci(0)))
    f = let("log_f", t.Select(big, m * c(0.5), m) - c(1.0))
    hfsq = let("log_h", c(0.5) * f * f)
    s = let("log_s", f / (c(2.0) + f))
    z = let("log_z", s * s)
    w = let("log_w", z * z)
    lg = _LOG[dt]["lg"]
    odd, even = lg[0::2], lg[1::2]  # R = z (Lg1 + w (Lg3 + ...)) + w (Lg2 + w (Lg4 + ...))
    t2 = c(odd[-1])
    for v in odd[-2::-1]:
        t2 = t2 * w + c(v)
    t1 = c(even[-1])
    for v in even[-2::-1]:
        t1 = t1 * w + c(v)
    r = z * t2 + w * t1
    hi, lo = _LOG[dt]["ln2"]
    out = kf * c(hi) - ((hfsq - (s * (hfsq + r) + kf * c(lo))) - f)
    out = t.Select(is_nan(x, dt), x, out)
    for v, value in reversed(lets):
        out = t.Let(v, value, out)
    return out
