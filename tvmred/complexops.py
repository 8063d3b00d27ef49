"""keopscore's complex operations, as registry macros over the real ones.

A complex vector of dimension k is a real formula of dimension 2k, real and imaginary parts
interleaved (re_0, im_0, re_1, im_1, ...) -- keopscore's layout, and torch's
``view_as_real(z).flatten(-2)``.  Each operation is one registry entry expanding into real
operations, so its derivatives come from theirs and the registry-wide and fuzz tests check it
against its torch reference (on the same real layout).  Binary operations broadcast a complex
scalar (dimension 2) against a complex vector, as keopscore's.
"""

from __future__ import annotations

from .errors import DimError
from .ops import TestSpec, _t, add, f, mul, neg, op, sub, zero
from .tree import Node


def _el(x: Node, i: int) -> Node:
    return x if x.dim == 1 else f("Elem", x, params=(i,))


def _parts(x: Node, name: str) -> list[tuple[Node, Node]]:
    """The (re, im) pairs of a complex formula."""
    if x.dim % 2:
        raise DimError(f"{name}: a complex formula has an even dimension, got dim {x.dim}")
    return [(_el(x, 2 * k), _el(x, 2 * k + 1)) for k in range(x.dim // 2)]


def _join(pairs: list[tuple[Node, Node]]) -> Node:
    out = None
    for re, im in pairs:
        for c in (re, im):
            out = c if out is None else f("Concat", out, c)
    return out


def _both(a: Node, b: Node, name: str) -> tuple[list, list]:
    pa, pb = _parts(a, name), _parts(b, name)
    if len(pa) == 1 and len(pb) > 1:
        pa = pa * len(pb)
    elif len(pb) == 1 and len(pa) > 1:
        pb = pb * len(pa)
    elif len(pa) != len(pb):
        raise DimError(f"{name}: complex dims {a.dim // 2} and {b.dim // 2} do not match")
    return pa, pb


def _mult(a: Node, b: Node) -> Node:
    pa, pb = _both(a, b, "ComplexMult")
    return _join(
        [
            (sub(mul(ar, br), mul(ai, bi)), add(mul(ar, bi), mul(ai, br)))
            for (ar, ai), (br, bi) in zip(pa, pb)
        ]  # fmt: skip
    )


def _add(a: Node, b: Node) -> Node:
    pa, pb = _both(a, b, "ComplexAdd")
    return _join([(add(ar, br), add(ai, bi)) for (ar, ai), (br, bi) in zip(pa, pb)])


def _subtract(a: Node, b: Node) -> Node:
    pa, pb = _both(a, b, "ComplexSubtract")
    return _join([(sub(ar, br), sub(ai, bi)) for (ar, ai), (br, bi) in zip(pa, pb)])


def _conj(x: Node) -> Node:
    return _join([(re, neg(im)) for re, im in _parts(x, "Conj")])


def _square_abs(x: Node) -> Node:
    return _real_vector([add(mul(re, re), mul(im, im)) for re, im in _parts(x, "ComplexSquareAbs")])


def _real_vector(xs: list[Node]) -> Node:
    out = xs[0]
    for x in xs[1:]:
        out = f("Concat", out, x)
    return out


def _divide(a: Node, b: Node) -> Node:
    pa, pb = _both(a, b, "ComplexDivide")
    out = []
    for (ar, ai), (br, bi) in zip(pa, pb):
        den = add(mul(br, br), mul(bi, bi))
        re = add(mul(ar, br), mul(ai, bi))
        im = sub(mul(ai, br), mul(ar, bi))
        out.append((f("Divide", re, den), f("Divide", im, den)))
    return _join(out)


def _exp(x: Node) -> Node:
    out = []
    for re, im in _parts(x, "ComplexExp"):
        r = f("Exp", re)
        out.append((mul(r, f("Cos", im)), mul(r, f("Sin", im))))
    return _join(out)


def _real_scal(a: Node, b: Node) -> Node:
    s, z = (a, b) if a.dim == 1 else (b, a)
    if s.dim != 1:
        raise DimError(
            f"ComplexRealScal: one argument must be real scalar, got dims {a.dim}, {b.dim}"
        )
    return _join([(mul(s, re), mul(s, im)) for re, im in _parts(z, "ComplexRealScal")])


def _sum(x: Node) -> Node:
    ps = _parts(x, "ComplexSum")
    re, im = ps[0]
    for r, i in ps[1:]:
        re, im = add(re, r), add(im, i)
    return _join([(re, im)])


def _sum_t(x: Node, dim: int) -> Node:
    if x.dim != 2 or dim % 2 or dim < 2:
        raise DimError(f"ComplexSumT(f, {dim}): f must be a complex scalar, the dim even")
    return _join(_parts(x, "ComplexSumT") * (dim // 2))


def _real_parts(x: Node, k: int, name: str) -> Node:
    return _real_vector([p[k] for p in _parts(x, name)])


def _to_complex(x: Node, imaginary: bool) -> Node:
    z = zero(1)
    comps = [_el(x, k) for k in range(x.dim)]
    return _join([(z, c) if imaginary else (c, z) for c in comps])


# torch references, on the same interleaved real layout
def _c(a):
    return _t().complex(a[..., 0::2], a[..., 1::2])


def _r(z):
    torch = _t()
    return torch.stack(torch.broadcast_tensors(z.real, z.imag), -1).flatten(-2)


def _reg(name, nargs, expand, ref, argdims, doc, **kw):
    op(name, nargs, expand=expand, ref=ref, test=TestSpec(argdims=argdims, **kw), doc=doc)


_POS = ((0.5, 1.5), (0.5, 1.5))  # away from 0: Abs, Angle, Divide's denominators
_reg("ComplexMult", 2, _mult, lambda a, b: _r(_c(a) * _c(b)), (4, 4), "complex product")
_reg("ComplexAdd", 2, _add, lambda a, b: _r(_c(a) + _c(b)), (2, 4), "complex sum")
_reg("ComplexSubtract", 2, _subtract, lambda a, b: _r(_c(a) - _c(b)), (4, 4), "complex difference")
_reg("ComplexDivide", 2, _divide, lambda a, b: _r(_c(a) / _c(b)), (4, 4), "complex quotient",
     ranges=_POS)  # fmt: skip
_reg("ComplexExp", 1, _exp, lambda a: _r(_c(a).exp()), (4,), "complex exponential")
_reg("ComplexExp1j", 1, lambda x: _exp(_to_complex(x, True)),
     lambda a: _r(_t().exp(1j * a)), (3,), "e^(i f) of a real f (dim k -> complex dim k)")  # fmt: skip
_reg("Conj", 1, _conj, lambda a: _r(_c(a).conj()), (4,), "complex conjugate")
_reg("ComplexSquareAbs", 1, _square_abs, lambda a: _c(a).abs() ** 2, (4,), "|z|^2 (real, dim k)")
_reg("ComplexAbs", 1, lambda x: f("Sqrt", _square_abs(x)), lambda a: _c(a).abs(), (4,),
     "|z| (real, dim k)", ranges=_POS[:1])  # fmt: skip
_reg("ComplexAngle", 1, lambda x: f("Atan2", _real_parts(x, 1, "ComplexAngle"),
     _real_parts(x, 0, "ComplexAngle")), lambda a: _c(a).angle(), (4,), "arg z (real, dim k)",
     ranges=_POS[:1])  # fmt: skip
_reg("ComplexReal", 1, lambda x: _real_parts(x, 0, "ComplexReal"), lambda a: _c(a).real, (4,),
     "Re z (real, dim k)")  # fmt: skip
_reg("ComplexImag", 1, lambda x: _real_parts(x, 1, "ComplexImag"), lambda a: _c(a).imag, (4,),
     "Im z (real, dim k)")  # fmt: skip
_reg("Real2Complex", 1, lambda x: _to_complex(x, False), lambda a: _r(a + 0j), (3,),
     "x + 0i (real dim k -> complex dim k)")  # fmt: skip
_reg("Imag2Complex", 1, lambda x: _to_complex(x, True), lambda a: _r(1j * a), (3,),
     "0 + ix (real dim k -> complex dim k)")  # fmt: skip
_reg("ComplexRealScal", 2, _real_scal, lambda s, z: _r(s * _c(z)), (1, 4),
     "a real scalar times a complex vector")  # fmt: skip
_reg("ComplexSum", 1, _sum, lambda a: _r(_c(a).sum(-1, keepdim=True)), (6,),
     "the sum of a complex vector's entries (complex scalar)")  # fmt: skip
op("ComplexSumT", 1, nparams=1, expand=_sum_t,
   ref=lambda a, d: _r(_c(a).expand(*a.shape[:-1], d // 2)),
   test=TestSpec(argdims=(2,), params=(6,)),
   doc="ComplexSumT(z, 2k): the complex scalar z repeated k times")  # fmt: skip
