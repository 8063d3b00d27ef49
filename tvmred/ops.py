"""The operation registry: every formula operation is one entry, with all its rules.

An entry (:class:`OpDef`) holds
  * ``dim``  — the dimension rule: argument dims and static params -> output dim (or DimError);
  * ``te``   — the lowering: one TVM expression per output component, from the argument
               components (lists of ``PrimExpr``) and the dtype;
  * ``vjp``  — the derivative rule: cotangent ``g`` of the output -> one cotangent node per
               argument (``None`` = no contribution), built from other registry operations;
  * ``ref``  — an independent torch reference (last axis = vector component), used by tests;
  * ``test`` — how the registry-wide test exercises it.
A *macro* (``expand``) is defined as a composition of other operations and needs no ``te``/``vjp``.

Adding an operation = adding one ``op(...)`` call below; the parser, dimension check,
differentiation, lowering, README table and ``tests/test_ops.py`` all read this registry.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

from . import loops, mathfns
from ._tvm import tirx
from .errors import DimError, FormulaError
from .tree import MAX_DEPTH, Node, postorder

Exprs = list  # list[tvm.tirx.PrimExpr], one per component


@dataclass(frozen=True)
class TestSpec:
    argdims: tuple[int, ...] = ()  # default: 3 for each argument
    params: tuple = ()
    ranges: tuple[tuple[float, float], ...] = ()  # per argument; default (-1, 1)
    integer: bool = False  # draw integer-valued inputs (comparisons, OneHot)
    grad: bool = True  # compare gradients too
    points: tuple[float, ...] = ()  # special inputs of a unary op (tests/test_ops.py)
    dref: Optional[Callable[..., Any]] = None  # its derivative there: an independent reference


@dataclass(frozen=True)
class OpDef:
    name: str
    nargs: int
    nparams: int = 0
    dim: Optional[Callable[..., int]] = None
    te: Optional[Callable[..., Exprs]] = None
    vjp: Optional[Callable[..., tuple]] = None
    ref: Optional[Callable[..., Any]] = None
    test: Optional[TestSpec] = field(default_factory=TestSpec)
    expand: Optional[Callable[..., Node]] = None
    zero: Optional[str] = None  # "any": zero if any arg is Zero (multilinear); "all": linear
    defaults: tuple = ()  # values of the last parameters when they are left out
    cheap: bool = False  # pure data movement: never worth a stage of its own
    loop: Optional[Callable[..., None]] = None  # a loop operation (tvmred.loops): its program,
    # rule(program, args, params, emit(k, value)); its te is loops.placeholder
    own_stage: bool = False  # always a stage of its own where it varies per pair (its TE
    # binds variables: one definition each; tvmred.lower)
    doc: str = ""


REGISTRY: dict[str, OpDef] = {}


def op(name: str, nargs: int, **kw: Any) -> None:
    REGISTRY[name] = OpDef(name=name, nargs=nargs, **kw)


# ----------------------------------------------------------------------------------------------
# Node construction with the simplification rules (x+0 -> x, 0*x -> 0, linear(0) -> 0)
# ----------------------------------------------------------------------------------------------


def make(name: str, *args: Node, params: Sequence = ()) -> Node:
    """Build ``name(*args; params)``: checks arity and dims, expands macros, and simplifies
    (zeros, x + x, -(-x), 1*x, Pow(x, 1))."""
    d = REGISTRY.get(name)
    if d is None:
        raise FormulaError(f"unknown operation '{name}'")
    missing = d.nparams - len(params)
    if 0 < missing <= len(d.defaults):
        params = (*params, *d.defaults[len(d.defaults) - missing :])
    if len(args) != d.nargs or len(params) != d.nparams:
        raise FormulaError(
            f"{name} takes {d.nargs} formula argument(s) and {d.nparams} integer parameter(s), "
            f"got {len(args)} and {len(params)}"
        )
    if d.expand is not None:
        return d.expand(*args, *params)
    if args and max(a.depth for a in args) >= MAX_DEPTH:
        raise FormulaError(f"formula nested deeper than {MAX_DEPTH} levels")
    dim = d.dim(*[a.dim for a in args], *params)
    if d.zero == "any" and any(a.is_zero for a in args):
        return zero(dim)
    if d.zero == "all" and args and all(a.is_zero for a in args):
        return zero(dim)
    if name == "Add":
        a, b = args
        if a.is_zero and b.dim == dim:
            return b
        if b.is_zero and a.dim == dim:
            return a
        if a is b:  # x + x -> 2*x (gradients of symmetric forms produce it)
            return make("Mult", intcst(2), a)
    if name == "Minus" and args[0].op == "Minus":
        return args[0].args[0]
    if name == "Subtract" and args[1].is_zero and args[0].dim == dim:
        return args[0]
    if name == "Mult":
        for a, b in (args, args[::-1]):
            if a.op == "IntCst" and a.params[0] == 1 and b.dim == dim:
                return b
    if name == "Pow" and params[0] == 1:  # as keopscore's Pow
        return args[0]
    return Node(name, tuple(args), tuple(params), dim)


def zero(dim: int) -> Node:
    return Node("Zero", (), (int(dim),), dim)


def intcst(n: int) -> Node:
    return Node("IntCst", (), (int(n),), 1)


def cst(v: float) -> Node:
    v = float(v)
    if math.isfinite(v) and v == int(v) and abs(v) < 2**31:
        return intcst(int(v))
    return Node("Cst", (), (v,), 1)


def add(a: Node, b: Node) -> Node:
    return make("Add", a, b)


def sub(a: Node, b: Node) -> Node:
    return make("Subtract", a, b)


def mul(a: Node, b: Node) -> Node:
    return make("Mult", a, b)


def div(a: Node, b: Node) -> Node:
    return make("Divide", a, b)


def neg(a: Node) -> Node:
    return make("Minus", a)


def f(name: str, *args: Node, params: Sequence = ()) -> Node:
    return make(name, *args, params=params)


def unbroadcast(g: Node, arg: Node) -> Node:
    """Cotangent of an argument that was broadcast from dim 1: sum the components."""
    return make("Sum", g) if arg.dim == 1 and g.dim > 1 else g


# ----------------------------------------------------------------------------------------------
# Dimension rules
# ----------------------------------------------------------------------------------------------


def elementwise_dim(*dims: int) -> int:
    """Equal dims, or a mix of 1 and one other d; output d."""
    big = {d for d in dims if d != 1}
    if len(big) > 1:
        raise DimError(f"dimensions {list(dims)} are not compatible (equal, or 1 and d)")
    return max(dims)


def same_dim(d: int, *params: Any) -> int:
    return d


def scalar_dim(*_: Any) -> int:
    return 1


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise DimError(msg)


# ----------------------------------------------------------------------------------------------
# TE helpers (tvm imported lazily so that parsing never needs TVM)
# ----------------------------------------------------------------------------------------------


def c(v: float, dt: str):
    return tirx().const(v, dt)


def sel(cond, a, b):
    return tirx().Select(cond, a, b)


def divide(a, b, dt: str):
    """a / b, IEEE (x/0 = inf, 0/0 = NaN) even when TVM's simplifier sees b fold to 0 (it folds
    float x - x, an ArgMin of one component...) and would stop with "Divide by zero", or sees
    a fold to 0 (it rewrites 0 / b to 0, also for b = 0): both operands go through a bit-cast
    round trip that TVM does not look through (LLVM does, and folds IEEE-correctly)."""
    t = tirx()
    bits = "int32" if dt == "float32" else "int64"
    return t.reinterpret(dt, t.reinterpret(bits, a)) / t.reinterpret(dt, t.reinterpret(bits, b))


def elementwise(fn: Callable[..., Any]) -> Callable[..., Exprs]:
    """Lift a scalar rule ``fn(*scalars, *params, dt)`` to vectors with 1-vs-d broadcasting."""

    def rule(args: list, params: tuple, dt: str) -> Exprs:
        d = max(len(a) for a in args)
        return [fn(*[a[k if len(a) > 1 else 0] for a in args], *params, dt) for k in range(d)]

    return rule


def _lead_broadcast(*xs):
    """Tensors broadcast over all but their last dimension (a constant beside a variable)."""
    lead = _t().broadcast_shapes(*(x.shape[:-1] for x in xs))
    return [x.expand(*lead, x.shape[-1]) for x in xs]


def _t():
    import torch

    return torch


def unary(
    name: str,
    fn: Callable,
    ref: Callable,
    deriv: Optional[Callable[[Node, Node], Node]],
    ranges: tuple = ((-1.0, 1.0),),
    doc: str = "",
    **kw: Any,
) -> None:
    """Elementwise unary op: ``deriv(x, out)`` is dy/dx as a node (None: zero gradient)."""
    vjp = (lambda g, out, x: (mul(g, deriv(x, out)),)) if deriv else (lambda g, out, x: (None,))
    op(
        name,
        1,
        dim=same_dim,
        te=elementwise(fn),
        vjp=vjp,
        ref=ref,
        test=TestSpec(ranges=ranges, **kw),
        doc=doc,
    )


# ----------------------------------------------------------------------------------------------
# Leaves
# ----------------------------------------------------------------------------------------------

op("Var", 0, nparams=3, test=None, doc="Var(pos,dim,cat): input number pos; cat 0=i, 1=j, 2=Pm")
op(
    "IntCst",
    0,
    nparams=1,
    dim=lambda n: 1,
    te=lambda a, p, dt: [c(p[0], dt)],
    test=None,
    doc="integer constant, dim 1",
)
op(
    "Cst",
    0,
    nparams=1,
    dim=lambda v: 1,
    te=lambda a, p, dt: [c(p[0], dt)],
    test=None,
    doc="real constant (from a literal such as 0.5), dim 1",
)
op(
    "Zero",
    0,
    nparams=1,
    dim=lambda n: n,
    te=lambda a, p, dt: [c(0, dt)] * p[0],
    test=None,
    doc="Zero(n): zero vector of dim n",
)
op("RatCst", 0, nparams=2, expand=lambda p, q: cst(p / q), test=None, doc="RatCst(p,q) = p/q")
op("IntInv", 0, nparams=1, expand=lambda n: cst(1.0 / n), test=None, doc="IntInv(n) = 1/n")

# ----------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------


op(
    "Add",
    2,
    dim=elementwise_dim,
    te=elementwise(lambda a, b, dt: a + b),
    vjp=lambda g, out, a, b: (unbroadcast(g, a), unbroadcast(g, b)),
    ref=lambda a, b: a + b,
    zero=None,
    test=TestSpec(argdims=(3, 1)),
    doc="a + b",
)
op(
    "Subtract",
    2,
    dim=elementwise_dim,
    te=elementwise(lambda a, b, dt: a - b),
    vjp=lambda g, out, a, b: (unbroadcast(g, a), unbroadcast(neg(g), b)),
    ref=lambda a, b: a - b,
    test=TestSpec(argdims=(1, 3)),
    doc="a - b",
)
op(
    "Minus",
    1,
    dim=same_dim,
    te=elementwise(lambda a, dt: -a),
    vjp=lambda g, out, a: (neg(g),),
    ref=lambda a: -a,
    zero="all",
    cheap=True,
    doc="-a",
)
op(
    "Mult",
    2,
    dim=elementwise_dim,
    te=elementwise(lambda a, b, dt: a * b),
    vjp=lambda g, out, a, b: (unbroadcast(mul(g, b), a), unbroadcast(mul(g, a), b)),
    ref=lambda a, b: a * b,
    zero="any",
    test=TestSpec(argdims=(3, 1)),
    doc="a * b",
)
op(
    "Divide",
    2,
    dim=elementwise_dim,
    te=elementwise(divide),
    vjp=lambda g, out, a, b: (unbroadcast(div(g, b), a), unbroadcast(neg(div(mul(g, out), b)), b)),
    ref=lambda a, b: a / b,
    test=TestSpec(argdims=(3, 1), ranges=((-1, 1), (0.5, 2))),
    doc="a / b",
)


def _mask(fn: Callable) -> Callable:
    if fn(2, 3) and fn(3, 2):  # !=: TVM emits an ordered compare (false for NaN), so test ==
        return lambda a, b, dt: sel(a == b, c(0, dt), c(1, dt))
    return lambda a, b, dt: sel(fn(a, b), c(1, dt), c(0, dt))


def _cmp(name: str, sym: str, fn: Callable, ref: Callable) -> None:
    op(
        name,
        2,
        dim=elementwise_dim,
        te=elementwise(_mask(fn)),
        vjp=lambda g, out, a, b: (None, None),
        ref=lambda a, b: ref(a, b).to(a.dtype),
        test=TestSpec(argdims=(3, 1), integer=True, ranges=((0, 3), (0, 3))),
        doc=f"a {sym} b as a 0/1 mask",
    )


_cmp("Equal", "==", lambda a, b: a == b, lambda a, b: a == b)
_cmp("NotEqual", "!=", lambda a, b: a != b, lambda a, b: a != b)
_cmp("LessThan", "<", lambda a, b: a < b, lambda a, b: a < b)
_cmp("LessOrEqual", "<=", lambda a, b: a <= b, lambda a, b: a <= b)
_cmp("GreaterThan", ">", lambda a, b: a > b, lambda a, b: a > b)
_cmp("GreaterOrEqual", ">=", lambda a, b: a >= b, lambda a, b: a >= b)

# ----------------------------------------------------------------------------------------------
# Elementwise maths
# ----------------------------------------------------------------------------------------------


def _te(name: str):
    return lambda x, dt: getattr(tirx(), name)(x)


def _one_minus_sq(x: Node) -> Node:
    return sub(intcst(1), f("Square", x))


unary("Exp", mathfns.exp, lambda x: _t().exp(x), lambda x, out: out, doc="e^x")
unary(
    "Log",
    _te("log"),
    lambda x: _t().log(x),
    lambda x, out: f("Inv", x),
    ((0.5, 2.0),),
    doc="natural log",
    points=(0.0,),
    dref=lambda x: 1 / x,
)
unary("Sin", _te("sin"), lambda x: _t().sin(x), lambda x, out: f("Cos", x), doc="sine")
unary("Cos", _te("cos"), lambda x: _t().cos(x), lambda x, out: neg(f("Sin", x)), doc="cosine")
unary(
    "Asin",
    _te("asin"),
    lambda x: _t().asin(x),
    lambda x, out: f("Rsqrt", _one_minus_sq(x)),
    ((-0.9, 0.9),),
    doc="arcsine",
)
unary(
    "Acos",
    _te("acos"),
    lambda x: _t().acos(x),
    lambda x, out: neg(f("Rsqrt", _one_minus_sq(x))),
    ((-0.9, 0.9),),
    doc="arccosine",
)
unary(
    "Atan",
    _te("atan"),
    lambda x: _t().atan(x),
    lambda x, out: f("Inv", add(intcst(1), f("Square", x))),
    doc="arctangent",
)
unary(
    "Inv",
    lambda x, dt: divide(c(1, dt), x, dt),
    lambda x: 1 / x,
    lambda x, out: neg(f("Square", out)),
    ((0.5, 2.0),),
    doc="1/x",
    points=(0.0,),
    dref=lambda x: -1 / (x * x),
)
unary("Square", lambda x, dt: x * x, lambda x: x * x, lambda x, out: mul(intcst(2), x), doc="x^2")
unary(
    "Sqrt",
    _te("sqrt"),
    lambda x: _t().sqrt(x),
    lambda x, out: mul(cst(0.5), f("Rsqrt", x)),
    ((0.5, 2.0),),
    doc="square root; derivative uses Rsqrt (so 0 at x = 0, as KeOps)",
    points=(0.0,),
    dref=lambda x: _t().where(x == 0, 0.0, 0.5 / _t().sqrt(x)),
)
unary(
    "Rsqrt",
    lambda x, dt: sel(x == c(0, dt), c(0, dt), tirx().rsqrt(x)),
    lambda x: _t().where(x == 0, _t().zeros_like(x), _t().rsqrt(x)),
    lambda x, out: mul(cst(-0.5), f("Pow", out, params=(3,))),
    ((0.5, 2.0),),
    doc="1/sqrt(x), 0 at x = 0 (as KeOps; so is its derivative)",
    points=(0.0,),
    dref=lambda x: _t().where(x == 0, 0.0, -0.5 * x ** (-1.5)),
)
unary(
    "Abs",
    _te("abs"),
    lambda x: _t().abs(x),
    lambda x, out: f("Sign", x),
    doc="|x|; derivative Sign(x), 0 at 0",
    points=(0.0,),
    dref=lambda x: _t().sign(x),
)
unary(
    "Sign",
    lambda x, dt: sel(x > c(0, dt), c(1, dt), sel(x < c(0, dt), c(-1, dt), c(0, dt))),
    lambda x: (x > 0).to(x.dtype) - (x < 0).to(x.dtype),
    None,
    doc="-1, 0 or 1 (0 for NaN, as KeOps)",
    points=(0.0, math.nan),
    dref=lambda x: _t().zeros_like(x),
)
unary(
    "Step",
    lambda x, dt: sel(x < c(0, dt), c(0, dt), c(1, dt)),
    lambda x: 1 - (x < 0).to(x.dtype),
    None,
    doc="0 if x < 0 else 1 (1 for NaN, as KeOps)",
    points=(0.0, math.nan),
    dref=lambda x: _t().zeros_like(x),
)
unary(
    "ReLU",
    lambda x, dt: sel(x < c(0, dt), c(0, dt), x),
    lambda x: _t().relu(x),
    lambda x, out: f("Step", x),
    doc="max(x, 0); derivative Step(x), 1 at 0 (as KeOps)",
    points=(0.0,),
    dref=lambda x: (x >= 0).to(x.dtype),
)
# its gradient selects g where x >= 0 (not g * Step(x)): an infinite g where x < 0 gives 0,
# as torch's and JAX's relu (fuzz: XLogX(ReLU(p))'s gradient at p < 0 was NaN)
REGISTRY["ReLU"] = replace(
    REGISTRY["ReLU"], vjp=lambda g, out, x: (f("IfElse", x, g, zero(g.dim)),)
)
unary(
    "Floor",
    _te("floor"),
    lambda x: _t().floor(x),
    None,
    ((-3.0, 3.0),),
    doc="floor",
    points=(-1.0, 0.0, 2.0, -0.5),
    dref=lambda x: _t().zeros_like(x),
)
unary(
    "XLogX",
    lambda x, dt: sel(x == c(0, dt), c(0, dt), x * tirx().log(x)),
    lambda x: _t().where(x == 0, _t().zeros_like(x), x * _t().log(x)),
    lambda x, out: add(f("Log", x), intcst(1)),
    ((0.1, 2.0),),
    doc="x log x, 0 at 0 (derivative -inf there)",
    points=(0.0,),
    dref=lambda x: _t().log(x) + 1,
)
unary(
    "SinXDivX",
    lambda x, dt: sel(x == c(0, dt), c(1, dt), divide(tirx().sin(x), x, dt)),
    lambda x: _t().where(x == 0, _t().ones_like(x), _t().sin(x) / x),
    lambda x, out: f("IfElse", neg(f("Square", x)), zero(1), sub(div(f("Cos", x), x), div(out, x))),
    ((0.2, 2.0),),
    doc="sin(x)/x, 1 at 0 (derivative 0 there)",
    points=(0.0,),
    dref=lambda x: _t().where(x == 0, 0.0, (x * _t().cos(x) - _t().sin(x)) / (x * x)),
)


#: Pow(f, n) by squaring up to this |n|; past it exp(n log|f|) (with f's sign for odd n), as
#: pykeops' pow: its error (|n log|f|| + a few ulps, at most ~709 in float64 where the
#: result is finite) is then below that of the squarings' ~|n| ulps, and the squarings'
#: expression (each one reads the last twice) grows as 2^(number of squarings) in TVM's
#: passes: Pow(x, 100001) compiled for 78 s, Pow(x, 2^31 - 1) never finished.
POW_SQUARING_MAX = 1024


def _pow_te(x, n: int, dt: str):
    if n == 0:
        return c(1, dt)
    t = tirx()
    if abs(n) > POW_SQUARING_MAX:
        r = REGISTRY["Exp"].te([[c(n, dt) * REGISTRY["Log"].te([[t.abs(x)]], (), dt)[0]]], (), dt)
        return t.copysign(r[0], x) if n % 2 else r[0]
    base, e, acc = x, abs(n), None
    while e:
        if e & 1:
            acc = base if acc is None else acc * base
        e >>= 1
        if e:
            base = base * base
    return divide(c(1, dt), acc, dt) if n < 0 else acc


def _pow_dim(d: int, n: int) -> int:
    _require(-(2**31) <= n < 2**31, f"Pow(f, {n}): the exponent must fit 32 bits, as pykeops'")
    return d


def _pow_vjp(g: Node, out: Node, x: Node, n: int) -> tuple:
    if n == 0:
        return (None,)
    dx = intcst(n) if n == 1 else mul(intcst(n), f("Pow", x, params=(n - 1,)))
    return (mul(g, dx),)


op(
    "Pow",
    1,
    nparams=1,
    dim=_pow_dim,
    te=elementwise(_pow_te),
    vjp=_pow_vjp,
    ref=lambda x, n: x**n,
    test=TestSpec(params=(3,), ranges=((0.5, 2.0),)),
    doc="Pow(f, n): f^n for a fixed integer n",
)
op(
    "Powf",
    2,
    expand=lambda a, b: f("Exp", mul(b, f("Log", a))),
    ref=lambda a, b: a**b,
    test=TestSpec(argdims=(3, 1), ranges=((0.5, 2.0), (-1.0, 1.0))),
    doc="Powf(f, g) = Exp(g*Log(f))",
)


def _round_half_away(x, dt: str):
    """round(x), halves away from zero (C's round, as KeOps), exactly: x - trunc(x) is exact;
    trunc(x) itself where it stays (its sign: round(-0.3) is -0, as C's -- whole + 0 was +0)."""
    t = tirx()
    whole = t.trunc(x)
    frac = x - whole
    one = c(1, dt)
    return sel(frac >= c(0.5, dt), whole + one, sel(frac <= c(-0.5, dt), whole - one, whole))


def _round_te(x, d: int, dt: str):
    if d == 0:
        return _round_half_away(x, dt)
    # the largest |d| with 10^d and 10^-d normal in dt, and dt's significand bits p
    big, p = {"float32": (38, 24), "float64": (307, 53)}.get(dt, (38, 24))
    if abs(d) > big:
        raise FormulaError(f"Round(f, {d}): 10^{d} is outside {dt}'s range (|d| <= {big})")
    s = c(10.0**d, dt)
    # |x| 10^d of 2^p or more is an integer already: x itself (x 10^d may overflow there:
    # Round(1e10, 30) in float32 was inf)
    whole = c(2.0**p / 10.0**d, dt)
    return sel(tirx().abs(x) >= whole, x, _round_half_away(x * s, dt) / s)


def _round_ref(x, d: int):
    """Decimal rounding (ROUND_HALF_UP: halves away from zero) of x * 10^d, then / 10^d."""
    import decimal

    def one(v: float) -> float:
        if not math.isfinite(v) or abs(v * 10.0**d) >= 2.0**53:  # already an integer
            return v
        q = decimal.Decimal(v * 10.0**d).quantize(
            decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP
        )
        return float(q) / 10.0**d if d else float(q)

    flat = [one(v) for v in x.reshape(-1).tolist()]
    return _t().tensor(flat, dtype=x.dtype, device=x.device).reshape(x.shape)


op(
    "Round",
    1,
    nparams=1,
    dim=same_dim,
    te=elementwise(_round_te),
    vjp=lambda g, o, x, d: (None,),
    ref=_round_ref,
    test=TestSpec(params=(2,), ranges=((-3, 3),), points=(0.125, -0.125, 1.375, -2.625, 0.0)),
    doc="Round(f, d): round to d decimals, halves away from zero (as C's round, KeOps)",
)


def _clamp_te(x, a, b, dt: str):
    return sel(x < a, a, sel(x > b, b, x))


def _passed(g: Node, mask: Node) -> Node:
    """g where the 0/1 ``mask`` is 1, else 0 -- a select, as torch's clamp and where pass a
    gradient: an infinite g where it is 0 gives 0 (a product g * mask gave 0 * inf = NaN:
    fuzz seed 97346, the gradient of XLogX(ClampInt(...)) at a clamped value)."""
    return f("IfElse", sub(mask, intcst(1)), g, zero(g.dim))


def _clamp_vjp(g: Node, out: Node, x: Node, a: Node, b: Node) -> tuple:
    # the TE's selects exactly: x is the value where neither x < a nor x > b (a NaN bound
    # compares false: x passes, as torch.where's reference -- a <= x <= b gave it 0), b where
    # x > b and not x < a (a > b: the value is a)
    not_below = sub(intcst(1), f("LessThan", x, a))
    return (
        unbroadcast(_passed(g, mul(not_below, sub(intcst(1), f("GreaterThan", x, b)))), x),
        unbroadcast(_passed(g, f("LessThan", x, a)), a),
        unbroadcast(_passed(g, mul(f("GreaterThan", x, b), not_below)), b),
    )


op(
    "Clamp",
    3,
    dim=elementwise_dim,
    te=elementwise(_clamp_te),
    vjp=_clamp_vjp,
    ref=lambda x, a, b: _t().where(x < a, a, _t().where(x > b, b, x)),
    test=TestSpec(argdims=(3, 1, 1), ranges=((-2, 2), (-1, -0.2), (0.2, 1))),
    doc="Clamp(f, a, b): a if f < a, b if f > b, else f",
)


def _clampint_te(x, a: int, b: int, dt: str):
    return _clamp_te(x, c(a, dt), c(b, dt), dt)


def _clampint_vjp(g: Node, out: Node, x: Node, a: int, b: int) -> tuple:
    return (_passed(g, mul(f("LessOrEqual", intcst(a), x), f("LessOrEqual", x, intcst(b)))),)


op(
    "ClampInt",
    1,
    nparams=2,
    dim=same_dim,
    te=elementwise(_clampint_te),
    vjp=_clampint_vjp,
    ref=lambda x, a, b: _t().clamp(x, a, b),
    test=TestSpec(params=(0, 1), ranges=((-1.5, 2.5),)),
    doc="ClampInt(f, a, b) with fixed integer bounds",
)
op(
    "DiffClampInt",
    1,
    nparams=2,
    expand=lambda x, a, b: mul(
        sub(intcst(1), f("LessThan", x, intcst(a))), sub(intcst(1), f("LessThan", intcst(b), x))
    ),
    ref=lambda x, a, b: _t().where((x < a) | (x > b), 0.0, 1.0).to(x.dtype),
    test=TestSpec(params=(0, 1), ranges=((-1.5, 2.5),)),
    doc="DiffClampInt(f, a, b): 0 where f < a or f > b, else 1 (keopscore's ClampInt derivative)",
)


def _ifelse_vjp(g: Node, out: Node, x: Node, a: Node, b: Node) -> tuple:
    za, zb = zero(g.dim), zero(g.dim)
    return (None, unbroadcast(f("IfElse", x, g, za), a), unbroadcast(f("IfElse", x, zb, g), b))


op(
    "IfElse",
    3,
    dim=elementwise_dim,
    te=elementwise(lambda x, a, b, dt: sel(x >= c(0, dt), a, b)),
    vjp=_ifelse_vjp,
    ref=lambda x, a, b: _t().where(x >= 0, a, b),
    test=TestSpec(argdims=(1, 3, 3)),
    doc="IfElse(f, a, b): a if f >= 0 else b",
)
op(
    "Mod",
    3,
    expand=lambda x, m, o: sub(x, mul(m, f("Floor", div(sub(x, o), m)))),
    ref=lambda x, m, o: _t().remainder(x - o, m) + o,
    test=TestSpec(argdims=(3, 1, 1), ranges=((-3, 3), (1, 2), (-0.5, 0.5))),
    doc="Mod(f, m, off) = f - m*Floor((f - off)/m)",
)


def _atan2_vjp(g: Node, y: Node, x: Node) -> tuple:
    """d/dy = x / r2, d/dx = -y / r2 with r2 = x^2 + y^2; both 0 at (0, 0), as torch (r2 + 1
    there: x and y are 0), not 0/0."""
    r2 = add(f("Square", x), f("Square", y))
    r2 = add(r2, f("LessOrEqual", r2, intcst(0)))
    return (
        unbroadcast(mul(g, div(x, r2)), y),
        unbroadcast(neg(mul(g, div(y, r2))), x),
    )


op(
    "Atan2",
    2,
    dim=elementwise_dim,
    te=elementwise(lambda y, x, dt: tirx().atan2(y, x)),
    vjp=lambda g, out, y, x: _atan2_vjp(g, y, x),
    ref=lambda y, x: _t().atan2(y, x),
    test=TestSpec(argdims=(3, 3), ranges=((-1, 1), (0.3, 1))),
    doc="Atan2(y, x); derivative 0 at (0, 0), as torch",
)

# ----------------------------------------------------------------------------------------------
# Reductions inside the vector, indexing, tensor algebra
# ----------------------------------------------------------------------------------------------


def _best(pick: str, index: bool) -> Callable:
    """The best component (``index``: its position): the first NaN if there is one (NaN
    propagates, as in torch), else the first best one.  ``pick`` is "min" or "max".

    Each component is read a fixed number of times (a chain of min/max, a chain of NaN tests,
    then the first position equal to the result): a sequential "keep the best so far" chain
    reads the running best three times per step, an expression that doubles in size with
    every component."""

    def rule(args: list, params: tuple, dt: str) -> Exprs:
        (x,) = args
        t = tirx()
        if all(isinstance(v, (t.FloatImm, t.IntImm)) for v in x):  # constants: folded here
            return [c(_best_constant([v.value for v in x], pick, index), dt)]
        best = x[0]
        for v in x[1:]:
            best = getattr(t, pick)(best, v)
        nans = [mathfns.is_nan(v, dt) for v in x]
        any_nan = nans[0]
        for v in nans[1:]:
            any_nan = t.Or(any_nan, v)
        if not index:
            return [sel(any_nan, c(float("nan"), dt), best)]
        # bound once: the position search reads both at every k
        # (an int32, not a bool: TVM's vectorizer cannot widen a bool let-binding)
        v, nan = t.Var("best", dt), t.Var("any_nan", "int32")
        flag = sel(any_nan, t.const(1, "int32"), t.const(0, "int32"))  # (a Cast fails too)
        constant = not any(t.analysis.undefined_vars(e, []) for e in x)
        if constant:  # (math TVM does not fold) inlined: an expression of constants may be
            v, nan = best, flag  # inlined twice, a let-bound variable defined twice is not TIR
        idx = c(len(x) - 1, dt)
        for k in range(len(x) - 2, -1, -1):
            hit = t.Or(t.And(nan > 0, nans[k]), t.And(nan == 0, x[k] == v))
            idx = sel(hit, c(k, dt), idx)
        return [idx if constant else t.Let(v, best, t.Let(nan, flag, idx))]

    return rule


def _best_constant(values: list, pick: str, index: bool) -> float:
    """``_best`` of numbers: the first NaN, else the first min (max)."""
    for k, v in enumerate(values):
        if math.isnan(v):
            return float(k) if index else v
    best = min(values) if pick == "min" else max(values)
    return float(values.index(best)) if index else best


def _best_of_components(name: str, arg: str, pick: str, tref: Callable) -> None:
    op(
        name,
        1,
        dim=scalar_dim,
        te=_best(pick, False),
        own_stage=True,
        vjp=lambda g, out, x: (mul(g, f("OneHot", f(arg, x), params=(x.dim,))),),
        ref=lambda x: tref(x, -1, keepdim=True).values,
        doc=f"{name.lower()} of the components (NaN if one is NaN)",
    )
    op(
        arg,
        1,
        dim=scalar_dim,
        te=_best(pick, True),
        own_stage=True,
        vjp=lambda g, out, x: (None,),
        ref=lambda x: tref(x, -1, keepdim=True).indices.to(x.dtype),
        doc=f"index of the {name.lower()} component (first one on ties; of the first NaN)",
    )


_best_of_components("Max", "ArgMax", "max", lambda *a, **k: _t().max(*a, **k))
_best_of_components("Min", "ArgMin", "min", lambda *a, **k: _t().min(*a, **k))


#: Independent accumulation chains of a sum of many terms (see _sum_te): the target's choice
#: (``TargetTemplate.sum_chains``), set by :func:`tvmred.lower.lower` while it builds a kernel
SUM_CHAINS: contextvars.ContextVar[int] = contextvars.ContextVar("tvmred_sum_chains", default=4)


def sum_chains(count: int) -> contextlib.AbstractContextManager:
    """Sums of many terms built, inside the block, as ``count`` interleaved chains."""
    return mathfns.scoped(SUM_CHAINS, count)


def _sum_te(args: list, params: tuple, dt: str) -> Exprs:
    """A sum of d terms as ``SUM_CHAINS`` interleaved sequential chains (term k goes to chain
    k mod the count), the chains then added pairwise.  In a chain every product term ``u * v``
    meets its running sum as ``s + u * v``, which LLVM and nvcc contract to one FMA: a dot
    product or squared distance of dimension d costs d FMAs (+ d subtractions) where a
    pairwise tree costs d/2 FMAs, d/2 multiplies and d/2 adds (on sm_90, D = 64 SqDist: 95
    FADD + 33 FMUL + 33 FFMA a pair as a tree; a GPU hides the chains' latency with warps).
    A CPU runs its adds on other pipes than its FMAs, so there the short latency of more
    chains wins: 16 for float32 (see ``schedules.cpu.cpu_sum_chains``).  The rounding error
    bound grows with the chain length (d/count adds), not log2(d): negligible at the
    dimensions formulas have."""
    count = SUM_CHAINS.get()
    terms = list(args[0])
    chains = [terms[k::count] for k in range(min(count, len(terms)))]
    sums = []
    for chain in chains:
        acc = chain[0]
        for t in chain[1:]:
            acc = acc + t
        sums.append(acc)
    while len(sums) > 1:
        pairs = [sums[k] + sums[k + 1] for k in range(0, len(sums) - 1, 2)]
        sums = pairs + ([sums[-1]] if len(sums) % 2 else [])
    return [sums[0]]


op(
    "Sum",
    1,
    dim=scalar_dim,
    te=_sum_te,
    vjp=lambda g, out, x: (f("SumT", g, params=(x.dim,)),),
    ref=lambda x: x.sum(-1, keepdim=True),
    zero="all",
    doc="sum of the components",
)


def _sumt_dim(d: int, n: int) -> int:
    _require(d == 1, f"SumT needs a scalar argument, got dim {d}")
    return n


op(
    "SumT",
    1,
    nparams=1,
    dim=_sumt_dim,
    te=lambda a, p, dt: a[0] * p[0],
    vjp=lambda g, out, x, n: (f("Sum", g),),
    ref=lambda x, n: x.expand(*x.shape[:-1], n),
    zero="all",
    cheap=True,
    test=TestSpec(argdims=(1,), params=(3,)),
    doc="SumT(f, d): the scalar f repeated d times (adjoint of Sum)",
)


def _scalprod_dim(a: int, b: int) -> int:
    _require(a == b, f"(f|g) needs equal dims, got {a} and {b}")
    return 1


def _scalprod_te(args: list, params: tuple, dt: str) -> Exprs:
    a, b = args
    return _sum_te([[u * v for u, v in zip(a, b)]], (), dt)


op(
    "Scalprod",
    2,
    dim=_scalprod_dim,
    te=_scalprod_te,
    vjp=lambda g, out, a, b: (mul(g, b), mul(g, a)),
    ref=lambda a, b: (a * b).sum(-1, keepdim=True),
    zero="any",
    doc="(f|g): dot product, dim 1",
)
op(
    "SqNorm2",
    1,
    expand=lambda x: f("Scalprod", x, x),
    ref=lambda x: (x * x).sum(-1, keepdim=True),
    doc="(f|f)",
)
op(
    "Norm2",
    1,
    expand=lambda x: f("Sqrt", f("SqNorm2", x)),
    ref=lambda x: _t().linalg.vector_norm(x, dim=-1, keepdim=True),
    doc="Sqrt((f|f))",
)
op(
    "Normalize",
    1,
    expand=lambda x: mul(f("Rsqrt", f("SqNorm2", x)), x),
    ref=lambda x: x / _t().linalg.vector_norm(x, dim=-1, keepdim=True),
    doc="f/|f|",
)
op(
    "SqDist",
    2,
    expand=lambda a, b: f("SqNorm2", sub(a, b)),
    ref=lambda a, b: ((a - b) ** 2).sum(-1, keepdim=True),
    doc="|f-g|^2",
)


def _guard_dim(d: int, n: int, y: int) -> int:
    _require(n == 1, f"NormGuard(f, n, y): n must have dim 1, got {n}")
    return d


def _qguard_dim(d: int, n: int, y: int, yq: int, qc: int) -> int:
    _require(n == 1 and qc == 4 and yq == (y + 1) // 2,
             f"NormGuardQ(f, n, y, yq, qc): dims 1, D, (D + 1) // 2, 4 expected, got "
             f"{n}, {y}, {yq}, {qc}")  # fmt: skip
    return d


def _box_dim(d: int, y: int) -> int:
    return d


#: the formulas of the CPU K-min kernels' guards (``Reduction.spec``): their first argument is
#: the formula, the others the guard's extra inputs; DOT_GUARDS those of the dot-product guard
DOT_GUARDS = ("NormGuard", "NormGuardQ")
GUARD_OPS = (*DOT_GUARDS, "BoxGuard")

for _name, _nargs, _dim, _doc in (
    ("NormGuard", 3, _guard_dim, "NormGuard(f, n, y) = f; n, the reduced rows' squared norms, "
     "and y, their points again, are read by the CPU K-min kernels' dot-product guard (built "
     "by tvmred for K-nearest-neighbour searches)"),
    ("NormGuardQ", 5, _qguard_dim, "NormGuardQ(f, n, y, yq, qc) = f; NormGuard with the "
     "reduced points quantized to 16-bit integers, yq, and the quantization's scales and "
     "bounds, qc (the guard's dot products in integers on CPUs with AVX-512 VNNI or AVX2)"),
    ("BoxGuard", 2, _box_dim, "BoxGuard(f, y) = f; y, the reduced points again, in blocks "
     "of j (each value's contiguous), is read by the low-dimensional CPU K-min kernels' box test "
     "(built by tvmred for K-nearest-neighbour searches)"),
):  # fmt: skip
    op(_name, _nargs, dim=_dim, te=lambda a, p, dt: list(a[0]), test=None, doc=_doc)


def _sqnorm_iso(s: Node, x: Node) -> Node:
    return mul(s, f("SqNorm2", x))


def _sqnorm_diag(s: Node, x: Node) -> Node:
    return f("Sum", mul(s, f("Square", x)))


def _sym_sqnorm(a: Node, x: Node) -> Node:
    return f("Sum", mul(a, f("TensorProd", x, x)))


def _wsqnorm(s: Node, x: Node) -> Node:
    if s.dim == 1:
        return _sqnorm_iso(s, x)
    if s.dim == x.dim:
        return _sqnorm_diag(s, x)
    if s.dim == x.dim * x.dim:
        return _sym_sqnorm(s, x)
    raise DimError(
        f"WeightedSqNorm(s, f): dim s must be 1, dim f or (dim f)^2; got {s.dim}, {x.dim}"
    )


def _wsqnorm_ref(s, x):
    d = x.shape[-1]
    if s.shape[-1] == 1:
        return s * (x * x).sum(-1, keepdim=True)
    if s.shape[-1] == d:
        return (s * x * x).sum(-1, keepdim=True)
    S = s.reshape(*s.shape[:-1], d, d)
    return (x.unsqueeze(-2) @ S @ x.unsqueeze(-1)).squeeze(-1)


op(
    "WeightedSqNorm",
    2,
    expand=_wsqnorm,
    ref=_wsqnorm_ref,
    test=TestSpec(argdims=(9, 3)),
    doc="s-weighted |f|^2: s of dim 1 (isotropic), dim f (diagonal) or dim f^2 (full)",
)
op(
    "Factorize",
    2,
    expand=lambda x, g: x,
    test=None,  # f itself (tests/test_syntax.py)
    doc="Factorize(f, g) = f: pykeops' hint to compute g once (tvmred shares every repeat)",
)
op(
    "AutoFactorize",
    1,
    expand=lambda x: x,
    test=None,
    doc="AutoFactorize(f) = f (as Factorize)",
)
op(
    "SqNormIso",
    2,
    expand=_sqnorm_iso,
    ref=lambda s, x: s * (x * x).sum(-1, keepdim=True),
    test=TestSpec(argdims=(1, 3)),
    doc="SqNormIso(s, f) = s SqNorm2(f) (keopscore's; WeightedSqNorm with s of dim 1)",
)
op(
    "SqNormDiag",
    2,
    expand=_sqnorm_diag,
    ref=lambda s, x: (s * x * x).sum(-1, keepdim=True),
    test=TestSpec(argdims=(3, 3)),
    doc="SqNormDiag(s, f) = Sum(s Square(f)) (keopscore's)",
)
op(
    "SymSqNorm",
    2,
    expand=_sym_sqnorm,
    ref=lambda a, x: (a * (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)).sum(-1, keepdim=True),
    test=TestSpec(argdims=(9, 3)),
    doc="SymSqNorm(a, f) = Sum(a TensorProd(f, f)) (keopscore's)",
)
op(
    "WeightedSqDist",
    3,
    expand=lambda s, a, b: _wsqnorm(s, sub(a, b)),
    ref=lambda s, a, b: _wsqnorm_ref(s, a - b),
    test=TestSpec(argdims=(3, 3, 3)),
    doc="WeightedSqNorm(s, f-g)",
)


def _elem_dim(d: int, m: int) -> int:
    _require(0 <= m < d, f"Elem(f, {m}) needs 0 <= {m} < dim f = {d}")
    return 1


def _elemt_dim(d: int, n: int, m: int) -> int:
    _require(d == 1 and 0 <= m < n, f"ElemT(f, {n}, {m}) needs dim f = 1 and 0 <= {m} < {n}")
    return n


def _elemt_ref(x, n, m):
    out = _t().zeros(*x.shape[:-1], n, dtype=x.dtype)
    out[..., m : m + 1] = x
    return out


op(
    "Elem",
    1,
    nparams=1,
    dim=_elem_dim,
    te=lambda a, p, dt: [a[0][p[0]]],
    vjp=lambda g, out, x, m: (f("ElemT", g, params=(x.dim, m)),),
    ref=lambda x, m: x[..., m : m + 1],
    zero="all",
    cheap=True,
    test=TestSpec(params=(1,)),
    doc="Elem(f, m): component m",
)
op(
    "ElemT",
    1,
    nparams=2,
    dim=_elemt_dim,
    te=lambda a, p, dt: [a[0][0] if k == p[1] else c(0, dt) for k in range(p[0])],
    vjp=lambda g, out, x, n, m: (f("Elem", g, params=(m,)),),
    ref=_elemt_ref,
    zero="all",
    cheap=True,
    test=TestSpec(argdims=(1,), params=(4, 2)),
    doc="ElemT(f, n, m): scalar f at position m of a zero vector of dim n",
)


def _extract_dim(d: int, s: int, n: int) -> int:
    _require(0 <= s and n >= 1 and s + n <= d, f"Extract(f, {s}, {n}) out of range for dim {d}")
    return n


def _extractt_dim(d: int, s: int, n: int) -> int:
    _require(0 <= s and s + d <= n, f"ExtractT(f, {s}, {n}) out of range for dim {d}")
    return n


def _extractt_ref(x, s, n):
    out = _t().zeros(*x.shape[:-1], n, dtype=x.dtype)
    out[..., s : s + x.shape[-1]] = x
    return out


op(
    "Extract",
    1,
    nparams=2,
    dim=_extract_dim,
    te=lambda a, p, dt: a[0][p[0] : p[0] + p[1]],
    vjp=lambda g, out, x, s, n: (f("ExtractT", g, params=(s, x.dim)),),
    ref=lambda x, s, n: x[..., s : s + n],
    zero="all",
    cheap=True,
    test=TestSpec(argdims=(5,), params=(1, 3)),
    doc="Extract(f, start, d): a slice",
)
op(
    "ExtractT",
    1,
    nparams=2,
    dim=_extractt_dim,
    te=lambda a, p, dt: [c(0, dt)] * p[0] + a[0] + [c(0, dt)] * (p[1] - p[0] - len(a[0])),
    vjp=lambda g, out, x, s, n: (f("Extract", g, params=(s, x.dim)),),
    ref=_extractt_ref,
    zero="all",
    cheap=True,
    test=TestSpec(argdims=(3,), params=(1, 5)),
    doc="ExtractT(f, start, D): f embedded in a zero vector of dim D",
)
op(
    "Concat",
    2,
    dim=lambda a, b: a + b,
    te=lambda a, p, dt: a[0] + a[1],
    vjp=lambda g, out, a, b: (
        f("Extract", g, params=(0, a.dim)),
        f("Extract", g, params=(a.dim, b.dim)),
    ),
    ref=lambda a, b: _t().cat(_lead_broadcast(a, b), -1),
    zero="all",
    cheap=True,
    test=TestSpec(argdims=(3, 2)),
    doc="Concat(f, g)",
)


def _onehot_dim(d: int, n: int) -> int:
    _require(d == 1 and n >= 1, f"OneHot(f, {n}) needs a scalar f, got dim {d}")
    return n


def _onehot_te(args: list, params: tuple, dt: str) -> Exprs:
    x = args[0][0]
    low = tirx().floor(x)
    r = low + sel(x - low >= c(0.5, dt), c(1, dt), c(0, dt))  # exact: x - floor(x) is exact
    return [sel(r == c(k, dt), c(1, dt), c(0, dt)) for k in range(params[0])]


def _onehot_ref(x, n):
    """Component k is 1 where k - 1/2 <= x < k + 1/2."""
    k = _t().arange(n, dtype=x.dtype, device=x.device)
    return ((k - 0.5 <= x) & (x < k + 0.5)).to(x.dtype)


op(
    "OneHot",
    1,
    nparams=1,
    dim=_onehot_dim,
    te=_onehot_te,
    vjp=lambda g, out, x, n: (None,),
    ref=_onehot_ref,
    test=TestSpec(
        argdims=(1,),
        params=(4,),
        integer=True,
        ranges=((-2, 6),),
        points=(-0.5, 0.5, 3.5, 3.49999999999999956, -0.5000000000000001, 0.49999999999999994),
    ),
    doc="OneHot(f, D): 1 at round(f) (halves up: k - 1/2 <= f < k + 1/2), zeros when outside 0..D-1",
)


def _mv_dim(a: int, b: int) -> int:
    _require(a % b == 0, f"matrix of dim {a} and vector of dim {b}: {b} does not divide {a}")
    return a // b


def _matvec_te(args: list, params: tuple, dt: str) -> Exprs:
    A, v = args
    p = len(v)
    return [
        _sum_te([[A[i * p + k] * v[k] for k in range(p)]], (), dt)[0] for i in range(len(A) // p)
    ]


def _vecmat_te(args: list, params: tuple, dt: str) -> Exprs:
    v, A = args
    n = len(A) // len(v)
    return [_sum_te([[v[k] * A[k * n + i] for k in range(len(v))]], (), dt)[0] for i in range(n)]


def _tensorprod_te(args: list, params: tuple, dt: str) -> Exprs:
    a, b = args
    return [u * v for u in a for v in b]


op(
    "MatVecMult",
    2,
    dim=_mv_dim,
    te=_matvec_te,
    vjp=lambda g, out, A, v: (f("TensorProd", g, v), f("VecMatMult", g, A)),
    ref=lambda A, v: (A.reshape(*A.shape[:-1], -1, v.shape[-1]) @ v.unsqueeze(-1)).squeeze(-1),
    zero="any",
    test=TestSpec(argdims=(6, 2)),
    doc="MatVecMult(A, v): A (dim n*p, row-major n x p) times v (dim p), dim n",
)
op(
    "VecMatMult",
    2,
    dim=lambda b, a: _mv_dim(a, b),
    te=_vecmat_te,
    vjp=lambda g, out, v, A: (f("MatVecMult", A, g), f("TensorProd", v, g)),
    ref=lambda v, A: (v.unsqueeze(-2) @ A.reshape(*A.shape[:-1], v.shape[-1], -1)).squeeze(-2),
    zero="any",
    test=TestSpec(argdims=(2, 6)),
    doc="VecMatMult(v, A): v (dim p) times A (dim p*n, row-major p x n), dim n",
)
op(
    "TensorProd",
    2,
    dim=lambda a, b: a * b,
    te=_tensorprod_te,
    vjp=lambda g, out, a, b: (f("MatVecMult", g, b), f("VecMatMult", a, g)),
    ref=lambda a, b: (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2),
    zero="any",
    test=TestSpec(argdims=(3, 2)),
    doc="TensorProd(f, g): outer product, row-major",
)

# ----------------------------------------------------------------------------------------------
# TensorDot and Kron (keopscore's): both are sums of products a_i b_j listed per output
# component, one op "Bilinear" whose derivatives are Bilinear ops again
# ----------------------------------------------------------------------------------------------


def _strides(shape: Sequence[int]) -> list[int]:
    out, s = [], 1
    for n in reversed(shape):
        out.append(s)
        s *= n
    return out[::-1]


def _multi(shape: Sequence[int]):
    """Every multi-index of ``shape``, row-major."""
    idx = [()]
    for n in shape:
        idx = [i + (k,) for i in idx for k in range(n)]
    return idx


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _shape(name: str, s: Any) -> tuple:
    if not isinstance(s, (tuple, list)) or not all(isinstance(n, int) and n >= 1 for n in s):
        raise FormulaError(f"{name}: a shape must be a list of positive integers, got {s!r}")
    return tuple(s)


def _tensordot_table(da, db, ca, cb, perm) -> tuple:
    """(len(table), table) of TensorDot(a, b, da, db, ca, cb, perm): a and b are row-major
    tensors of shapes da, db; axes ca of a are contracted with axes cb of b (as
    numpy.tensordot); the free axes of a then of b give the output, free axis k at output
    position ``perm[k]`` (keopscore's convention; default: in order)."""
    da, db = _shape("TensorDot", da), _shape("TensorDot", db)
    ca, cb = tuple(ca), tuple(cb)
    if (
        len(ca) != len(cb)
        or any(not 0 <= k < len(da) for k in ca)
        or any(not 0 <= k < len(db) for k in cb)
        or len(set(ca)) != len(ca)
        or len(set(cb)) != len(cb)
    ):
        raise FormulaError(f"TensorDot: bad contracted axes {list(ca)} and {list(cb)}")
    if any(da[i] != db[j] for i, j in zip(ca, cb)):
        raise FormulaError(
            f"TensorDot: contracted axes of sizes {[da[i] for i in ca]} and {[db[j] for j in cb]}"
        )
    fa = [k for k in range(len(da)) if k not in ca]
    fb = [k for k in range(len(db)) if k not in cb]
    free = [da[k] for k in fa] + [db[k] for k in fb]
    perm = tuple(perm) or tuple(range(len(free)))
    if sorted(perm) != list(range(len(free))):
        raise FormulaError(
            f"TensorDot: {list(perm)} is not a permutation of the {len(free)} free axes"
        )
    out_shape = [0] * len(free)
    for k, p in enumerate(perm):
        out_shape[p] = free[k]
    sa, sb = _strides(da), _strides(db)
    table = []
    for oi in _multi(out_shape):
        fi = [oi[p] for p in perm]
        ia, ib = [0] * len(da), [0] * len(db)
        for k, ax in enumerate(fa):
            ia[ax] = fi[k]
        for k, ax in enumerate(fb):
            ib[ax] = fi[len(fa) + k]
        pairs = []
        for ci in _multi([da[i] for i in ca]):
            for k, (i, j) in enumerate(zip(ca, cb)):
                ia[i], ib[j] = ci[k], ci[k]
            pairs.append((sum(x * s for x, s in zip(ia, sa)), sum(x * s for x, s in zip(ib, sb))))
        table.append(tuple(pairs))
    return _prod(da), _prod(db), tuple(table)


def _kron_table(da, db) -> tuple:
    """Kron(a, b, da, db) = numpy.kron of the row-major tensors (same number of axes): a
    TensorDot without contraction whose free axes are interleaved (a0, b0, a1, b1, ...)."""
    da, db = _shape("Kron", da), _shape("Kron", db)
    if len(da) != len(db):
        raise FormulaError(f"Kron: shapes {list(da)} and {list(db)} have different numbers of axes")
    n = len(da)
    perm = tuple(2 * i for i in range(n)) + tuple(2 * i + 1 for i in range(n))
    return _tensordot_table(da, db, (), (), perm)


def _bilinear(a: Node, b: Node, na: int, nb: int, table: tuple) -> Node:
    return f("Bilinear", a, b, params=(na, nb, table))


def _bilinear_dim(da: int, db: int, na: int, nb: int, table: tuple) -> int:
    if (da, db) != (na, nb):
        raise DimError(f"Bilinear: arguments of dims {da} and {db}, expected {na} and {nb}")
    return len(table)


def _bilinear_te(args: list, params: tuple, dt: str) -> Exprs:
    a, b = args
    out = []
    for pairs in params[2]:
        terms = [a[i] * b[j] for i, j in pairs]
        e = terms[0] if terms else c(0, dt)
        for t in terms[1:]:
            e = e + t
        out.append(e)
    return out


def _bilinear_vjp(g: Node, out: Node, a: Node, b: Node, na: int, nb: int, table: tuple):
    """out_k = sum_(i,j) a_i b_j: d/da_i = sum over the (k, j) with i in out_k's pairs of
    g_k b_j, a Bilinear of (g, b) -- and the same for b."""
    ta: list = [[] for _ in range(na)]
    tb: list = [[] for _ in range(nb)]
    for k, pairs in enumerate(table):
        for i, j in pairs:
            ta[i].append((k, j))
            tb[j].append((k, i))
    n = len(table)
    return (
        _bilinear(g, b, n, nb, tuple(map(tuple, ta))),
        _bilinear(g, a, n, na, tuple(map(tuple, tb))),
    )


def _bilinear_ref(a, b, na, nb, table):
    torch = _t()
    k = torch.tensor([q for q, pairs in enumerate(table) for _ in pairs], dtype=torch.long)
    ia = torch.tensor([i for pairs in table for i, _ in pairs], dtype=torch.long)
    ib = torch.tensor([j for pairs in table for _, j in pairs], dtype=torch.long)
    terms = a[..., ia] * b[..., ib]
    out = torch.zeros(*terms.shape[:-1], len(table), dtype=terms.dtype, device=terms.device)
    return out.index_add(-1, k.to(terms.device), terms)


op(
    "Bilinear",
    2,
    nparams=3,
    dim=_bilinear_dim,
    te=_bilinear_te,
    vjp=_bilinear_vjp,
    ref=_bilinear_ref,
    zero="any",
    test=TestSpec(argdims=(2, 3), params=(2, 3, [[[0, 0], [1, 2]], [], [[1, 1]]])),
    doc="Bilinear(a, b, na, nb, table): out_k = sum of a_i b_j over the pairs (i, j) of "
    "table[k] (what TensorDot and Kron become)",
)


def _tensordot_ref(a, b, da, db, ca, cb, perm=()):
    lead = a.shape[:-1]
    A, B = a.reshape(*lead, *da), b.reshape(*b.shape[:-1], *db)
    la, lb = len(lead), len(b.shape) - 1
    letters = "abcdefghijklmnopqrstuvwxyz"
    sa = [letters[k] for k in range(len(da))]
    sb = [letters[len(da) + k] for k in range(len(db))]
    for i, j in zip(ca, cb):
        sb[j] = sa[i]
    free = [x for k, x in enumerate(sa) if k not in ca] + [
        x for k, x in enumerate(sb) if k not in cb
    ]
    perm = tuple(perm) or tuple(range(len(free)))
    res = [""] * len(free)
    for k, p in enumerate(perm):
        res[p] = free[k]
    res = "".join(res)
    r = _t().einsum(f"...{''.join(sa)},...{''.join(sb)}->...{res}", A, B)
    return r.reshape(*r.shape[: max(la, lb)], -1)


op(
    "TensorDot",
    2,
    nparams=5,
    defaults=((),),
    expand=lambda a, b, da, db, ca, cb, perm: _bilinear(
        a, b, *_tensordot_table(da, db, ca, cb, perm)
    ),
    ref=_tensordot_ref,
    test=TestSpec(argdims=(12, 6), params=([2, 3, 2], [3, 2], [1], [0], [2, 0, 1])),
    doc="TensorDot(a, b, shape_a, shape_b, axes_a, axes_b[, perm]): numpy.tensordot of the "
    "row-major tensors a and b over the paired axes, free axis k at position perm[k], flattened",
)


def _kron_ref(a, b, da, db):
    lead = a.shape[:-1]
    A, B = a.reshape(*lead, *da), b.reshape(*b.shape[:-1], *db)
    n = len(da)
    letters = "abcdefghijklmnopqrstuvwxyz"
    sa, sb = letters[:n], letters[n : 2 * n]
    res = "".join(x + y for x, y in zip(sa, sb))
    r = _t().einsum(f"...{sa},...{sb}->...{res}", A, B)
    return r.reshape(*r.shape[: -2 * n], -1)


op(
    "Kron",
    2,
    nparams=2,
    expand=lambda a, b, da, db: _bilinear(a, b, *_kron_table(da, db)),
    ref=_kron_ref,
    test=TestSpec(argdims=(6, 4), params=([3, 2], [2, 2])),
    doc="Kron(a, b, shape_a, shape_b): numpy.kron of the row-major tensors a and b, flattened",
)


# ----------------------------------------------------------------------------------------------
# B-splines (keopscore's BSpline): a macro over the ops above
# ----------------------------------------------------------------------------------------------


def _ratio(x: Node, lo: Node, hi: Node) -> Node:
    """(x - lo) / (hi - lo) where lo < hi, else 0 -- without a 0/0 in either branch (the
    denominator is 1 where the knots coincide), so values and gradients stay finite."""
    ok = f("LessThan", lo, hi)
    return div(mul(sub(x, lo), ok), add(sub(hi, lo), f("GreaterOrEqual", lo, hi)))


def _bspline(knots: Node, x: Node, order: int) -> Node:
    """Cox-de Boor: B_j,0 = [t_j <= x < t_j+1]; B_i,k = w_i,k B_i,k-1 + (1 - w_i+1,k) B_i+1,k-1
    with w_i,k = (x - t_i) / (t_i+k - t_i) (0 where t_i+k = t_i)."""
    n = knots.dim
    if x.dim != 1:
        raise DimError(f"BSpline: x must be scalar, got dim {x.dim}")
    if order < 0 or n < order + 2:
        raise DimError(f"BSpline of order {order} needs at least {order + 2} knots, got {n}")
    t = [f("Elem", knots, params=(k,)) if n > 1 else knots for k in range(n)]
    b = [mul(f("LessOrEqual", t[j], x), f("LessThan", x, t[j + 1])) for j in range(n - 1)]
    for k in range(1, order + 1):
        b = [
            add(
                mul(_ratio(x, t[i], t[i + k]), b[i]),
                mul(sub(intcst(1), _ratio(x, t[i + 1], t[i + 1 + k])), b[i + 1]),
            )
            for i in range(len(b) - 1)
        ]
    out = b[0]
    for v in b[1:]:
        out = f("Concat", out, v)
    return out


def _bspline_ref(knots, x, order):
    torch = _t()
    t = [knots[..., k : k + 1] for k in range(knots.shape[-1])]
    b = [((t[j] <= x) & (x < t[j + 1])).to(x.dtype) for j in range(len(t) - 1)]

    def w(lo, hi):
        return torch.where(lo < hi, (x - lo) / torch.where(lo < hi, hi - lo, 1.0), 0.0)

    for k in range(1, order + 1):
        b = [w(t[i], t[i + k]) * b[i] + (1 - w(t[i + 1], t[i + 1 + k])) * b[i + 1]
             for i in range(len(b) - 1)]  # fmt: skip
    return torch.cat(torch.broadcast_tensors(*b), dim=-1)


op(
    "BSpline",
    2,
    nparams=1,
    expand=_bspline,
    ref=_bspline_ref,
    test=TestSpec(argdims=(6, 1), params=(2,), ranges=((0.0, 1.0), (0.0, 1.0))),
    doc="BSpline(knots, x, k): the B-splines of order k on the knots (dim n), at the scalar x: "
    "dim n - k - 1 (Cox-de Boor)",
)


def _difference_matrix(x: Node, y: Node) -> Node:
    """out[j n + i] = x_i - y_j (dim n m): Concat over j of x - y_j."""
    cols = [sub(x, f("Elem", y, params=(j,)) if y.dim > 1 else y) for j in range(y.dim)]
    out = cols[0]
    for c in cols[1:]:
        out = f("Concat", out, c)
    return out


op(
    "DifferenceMatrix",
    2,
    expand=_difference_matrix,
    ref=lambda x, y: (x[..., None, :] - y[..., :, None]).flatten(-2),
    test=TestSpec(argdims=(3, 2)),
    doc="DifferenceMatrix(x, y): x_i - y_j at j n + i (dim n m)",
)


def _softmin3(a: Node, b: Node, c: Node, gamma: Node) -> Node:
    """-gamma log(e^-a/gamma + e^-b/gamma + e^-c/gamma), shifted by the min m of the three
    (m - gamma log sum e^((m - r)/gamma)): finite for any spread of a, b, c."""
    m = f("Min", f("Concat", f("Concat", a, b), c))
    s = add(add(f("Exp", div(sub(m, a), gamma)), f("Exp", div(sub(m, b), gamma))),
            f("Exp", div(sub(m, c), gamma)))  # fmt: skip
    return sub(m, mul(gamma, f("Log", s)))


#: The most cells (n m) a SoftDTW_SqDist unrolls into a DAG of formula nodes (differentiable
#: to any order, like every formula); longer sequences run the recursion as a loop
#: (:func:`_dtw_program`: first derivatives in x, y and gamma; ``SOFTDTW_LOOP_CELLS``)
SOFTDTW_CELLS = 16
#: The most cells (n m) a SoftDTW_SqDist's gradient takes: it keeps the n m values of the
#: recursion per pair (per SIMD lane on CPUs: 8 MiB per thread at float64 x 32 lanes; per
#: thread on GPUs, 256 KiB of local memory at float64, half CUDA's limit)
SOFTDTW_LOOP_CELLS = 32768


def _softdtw_sqdist(x: Node, y: Node, gamma: Node) -> Node:
    """Soft-DTW of the sequences x (dim n) and y (dim m) for the cost (x_i - y_j)^2:
    r_ij = (x_i - y_j)^2 + softmin_gamma(r_i-1,j-1, r_i-1,j, r_i,j-1), first row and column
    cumulative sums (keopscore's SoftDTW_SqDist).  Up to ``SOFTDTW_CELLS`` cells: a DAG of
    n m cells, each used three times (its text form names the shared nodes, tree.Node, so the
    cache key stays linear); beyond, a loop operation (:func:`_dtw_program`)."""
    if gamma.dim != 1:
        raise DimError(f"SoftDTW_SqDist: gamma must be scalar, got dim {gamma.dim}")
    n, m = x.dim, y.dim
    if n * m > SOFTDTW_CELLS:
        if max(a.depth for a in (x, y, gamma)) >= MAX_DEPTH:
            raise FormulaError(f"formula nested deeper than {MAX_DEPTH} levels")
        return Node("SoftDTW_SqDist", (x, y, gamma), (), 1)
    xs = [f("Elem", x, params=(i,)) if n > 1 else x for i in range(n)]
    ys = [f("Elem", y, params=(j,)) if m > 1 else y for j in range(m)]
    r: dict[tuple[int, int], Node] = {}
    for j in range(m):
        for i in range(n):
            d = f("Square", sub(xs[i], ys[j]))
            if i == 0 and j == 0:
                r[i, j] = d
            elif j == 0:
                r[i, j] = add(d, r[i - 1, 0])
            elif i == 0:
                r[i, j] = add(d, r[0, j - 1])
            else:
                r[i, j] = add(d, _softmin3(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1], gamma))
    return r[n - 1, m - 1]


def _dtw_program(p: loops.Program, args: list, out: str, emit: Callable) -> None:
    """The soft-DTW recursion of ``_softdtw_sqdist`` as loops over its cells, column by
    column.  ``out`` "value": r_n-1,m-1, keeping one column of r; "xy": its gradient w.r.t.
    x then y (dim n + m); "gamma": w.r.t. gamma.  The gradients keep all of r and run the
    recursion of the adjoints e_ij = d r_n-1,m-1 / d r_ij backwards (Cuturi and Blondel,
    2017): e_ij sums over the three cells reading r_ij their e times d r_cell / d r_ij, the
    softmin's weight exp((r_cell - d_cell - r_ij) / gamma) (1 on the first row and column,
    cumulative sums); x_i's gradient sums 2 (x_i - y_j) e_ij over j, y_j's the opposite over
    i, and gamma's sums e_ij (s_ij - sum_k w_k r_k) / gamma over the inner cells, s_ij the
    softmin and w_k its weights."""
    t = tirx()
    dt = p.dt
    x, y, (gamma,) = args
    n, m = len(x), len(y)
    xs, ys = p.array("x", n), p.array("y", m)
    for k, e in enumerate(x):
        p.set(xs, k, e)
    for k, e in enumerate(y):
        p.set(ys, k, e)
    g = p.let("g", gamma)
    ig = p.let("ig", p.const(1.0) / g)
    exp = lambda v: mathfns.exp(v, dt)  # noqa: E731

    def sq(i, j):
        d = xs[i] - ys[j]
        return d * d

    def softmin(a, b, c):  # every value read several times is bound once (p.let)
        lo = p.let("lo", t.min(t.min(a, b), c))
        terms = [exp(p.let("u", (lo - v) * ig)) for v in (a, b, c)]
        return lo - g * mathfns.log(terms[0] + terms[1] + terms[2], dt)  # of [1, 3]

    # "value": r[i] holds r_i,j-1, then r_i,j; the gradients: r_ij at j n + i.  The first
    # column (cumulative sums) is at r[i] either way
    r = p.array("r", n if out == "value" else n * m)
    p.set(r, 0, sq(0, 0))
    with p.loop("i", n - 1) as k:
        p.set(r, k + 1, r[k] + sq(k + 1, 0))
    if out == "value":
        diag = p.array("rd", 1)  # r_i-1,j-1
        with p.loop("j", m - 1) as jk:
            j = jk + 1
            p.set(diag, 0, r[0])
            p.set(r, 0, r[0] + sq(0, j))
            with p.loop("i", n - 1) as k:
                i = k + 1
                up = p.let("up", r[i])
                p.set(r, i, sq(i, j) + softmin(diag[0], up, r[i - 1]))
                p.set(diag, 0, up)
        emit(0, r[n - 1])
        return
    with p.loop("j", m - 1) as jk:
        j = jk + 1
        p.set(r, j * n, r[(j - 1) * n] + sq(0, j))
        with p.loop("i", n - 1) as k:
            i = k + 1
            at = j * n + i
            p.set(r, at, sq(i, j) + softmin(r[at - n - 1], r[at - 1], r[at - n]))
    zero, one = p.const(0.0), p.const(1.0)
    col = p.array("e", n, fill=zero)  # e_i,j+1, then e_i,j
    below, diag = p.array("eb", 1), p.array("ed", 1)  # e_i+1,j and e_i+1,j+1
    if out == "xy":
        gx, gy = p.array("gx", n, fill=zero), p.array("gy", m, fill=zero)
    else:
        gg = p.array("gg", 1, fill=zero)
    with p.loop("j", m, reverse=True) as j:
        p.set(below, 0, zero)
        p.set(diag, 0, zero)
        with p.loop("i", n, reverse=True) as i:
            rij = p.let("rij", r[j * n + i])
            # the neighbours' reads clamped into the arrays and bound before the Selects that
            # drop them at the edges (both sides of a Select are evaluated, and inside one TVM
            # simplifies a clamp away by the Select's condition: reads past the arrays)
            i1, j1 = t.min(i + 1, n - 1), t.min(j + 1, m - 1)
            last_i, last_j = t.EQ(i, n - 1), t.EQ(j, m - 1)
            w_b = p.let("wb", exp((r[j * n + i1] - sq(i1, j) - rij) * ig))
            w_r = p.let("wr", exp((r[j1 * n + i] - sq(i, j1) - rij) * ig))
            w_diag = p.let("wd", exp((r[j1 * n + i1] - sq(i1, j1) - rij) * ig))
            w_below = t.Select(j > 0, w_b, one)
            w_right = t.Select(i > 0, w_r, one)
            e = (
                t.Select(last_i, zero, below[0] * w_below)
                + t.Select(last_j, zero, col[i] * w_right)
                + t.Select(t.Or(last_i, last_j), zero, diag[0] * w_diag)
            )
            e = p.let("e", t.Select(t.And(last_i, last_j), one, e))
            p.set(diag, 0, col[i])
            p.set(col, i, e)
            p.set(below, 0, e)
            if out == "xy":
                de = p.let("de", (xs[i] - ys[j]) * e * p.const(2.0))
                p.set(gx, i, gx[i] + de)
                p.set(gy, j, gy[j] - de)
            else:
                i0, j0 = t.max(i - 1, 0), t.max(j - 1, 0)
                s = p.let("s", rij - sq(i, j))
                rs = [p.let("rk", v) for v in (r[j0 * n + i0], r[j * n + i0], r[j0 * n + i])]
                mean = p.let(
                    "mean",
                    sum((exp((s - v) * ig) * v for v in rs[1:]), exp((s - rs[0]) * ig) * rs[0]),
                )
                inner = t.And(i > 0, j > 0)
                p.set(gg, 0, gg[0] + t.Select(inner, e * (s - mean) * ig, zero))
    if out == "xy":
        for k in range(n):
            emit(k, gx[k])
        for k in range(m):
            emit(n + k, gy[k])
    else:
        emit(0, gg[0])


def _loop_op(name: str, dim: Callable, out: str, vjp: Callable, **kw: Any) -> None:
    op(
        name,
        3,
        dim=dim,
        te=loops.placeholder(name, dim),
        loop=lambda p, args, params, emit: _dtw_program(p, args, out, emit),
        own_stage=True,
        vjp=vjp,
        **kw,
    )


def _dtw_vjp(g: Node, out: Node, x: Node, y: Node, gamma: Node) -> tuple:
    gxy = f("GradSoftDTW_SqDist", x, y, gamma)
    return (
        mul(g, f("Extract", gxy, params=(0, x.dim))),
        mul(g, f("Extract", gxy, params=(x.dim, y.dim))),
        mul(g, f("GradSoftDTW_SqDist_Gamma", x, y, gamma)),
    )


def _no_second_derivative(g: Node, out: Node, x: Node, y: Node, gamma: Node) -> tuple:
    raise FormulaError(
        f"second derivatives of SoftDTW_SqDist are available for sequences of at most "
        f"{SOFTDTW_CELLS} cells (n m; these are {x.dim} x {y.dim}): longer ones run the "
        "recursion as a loop, differentiated once"
    )


def _dtw_dims(n: int, m: int, gamma: int) -> int:
    """GradSoftDTW_SqDist's dimension (n + m)."""
    if gamma != 1:
        raise DimError(f"SoftDTW_SqDist: gamma must be scalar, got dim {gamma}")
    if n * m > SOFTDTW_LOOP_CELLS:
        raise DimError(
            f"the gradient of SoftDTW_SqDist of sequences of lengths {n} and {m}: it keeps "
            f"the {n * m} cells of the recursion per pair, more than {SOFTDTW_LOOP_CELLS}"
        )
    return n + m


def _softdtw_ref(x, y, gamma):
    torch = _t()
    n, m = x.shape[-1], y.shape[-1]
    r: dict = {}
    for j in range(m):
        for i in range(n):
            d = (x[..., i] - y[..., j]) ** 2
            if i == 0 and j == 0:
                r[i, j] = d
            elif j == 0:
                r[i, j] = d + r[i - 1, 0]
            elif i == 0:
                r[i, j] = d + r[0, j - 1]
            else:
                prev = torch.stack([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]], -1)
                r[i, j] = d - gamma[..., 0] * torch.logsumexp(-prev / gamma, -1)
    return r[n - 1, m - 1][..., None]


_DTW_TEST = dict(argdims=(6, 5, 1), ranges=((-1.0, 1.0), (-1.0, 1.0), (0.5, 1.5)))
_loop_op(
    "SoftDTW_SqDist",
    scalar_dim,
    "value",
    _dtw_vjp,
    expand=_softdtw_sqdist,
    ref=_softdtw_ref,
    test=TestSpec(**_DTW_TEST),
    doc="SoftDTW_SqDist(x, y, gamma): soft-DTW of the sequences x, y for the cost (x_i - y_j)^2 "
    f"(unrolled up to {SOFTDTW_CELLS} cells n m: derivatives of any order; beyond, one loop, "
    f"differentiable once -- the gradient up to {SOFTDTW_LOOP_CELLS} cells)",
)


def _softdtw_grad_ref(x, y, gamma, which: str = "xy"):
    """torch's autograd through the unrolled recursion of :func:`_softdtw_ref`."""
    torch = _t()
    with torch.enable_grad():
        leaves = [a.detach().requires_grad_() for a in (x, y, gamma)]
        out = _softdtw_ref(*leaves)
        # gamma is unused when a sequence has one element (no softmin)
        grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    gx, gy, gg = (torch.zeros_like(a) if g is None else g for g, a in zip(grads, leaves))
    return torch.cat([gx, gy], -1) if which == "xy" else gg


_loop_op(
    "GradSoftDTW_SqDist",
    _dtw_dims,
    "xy",
    _no_second_derivative,
    ref=_softdtw_grad_ref,
    test=TestSpec(**_DTW_TEST, grad=False),
    doc="GradSoftDTW_SqDist(x, y, gamma): the gradient of SoftDTW_SqDist w.r.t. x, then y",
)
_loop_op(
    "GradSoftDTW_SqDist_Gamma",
    lambda n, m, gamma: _dtw_dims(n, m, gamma) and 1,
    "gamma",
    _no_second_derivative,
    ref=lambda x, y, gamma: _softdtw_grad_ref(x, y, gamma, "gamma"),
    test=TestSpec(**_DTW_TEST, grad=False),
    doc="GradSoftDTW_SqDist_Gamma(x, y, gamma): the derivative of SoftDTW_SqDist w.r.t. gamma",
)


#: Names the parser accepts for the comparison operators.
COMPARISONS = {
    "==": "Equal",
    "!=": "NotEqual",
    "<": "LessThan",
    "<=": "LessOrEqual",
    ">": "GreaterThan",
    ">=": "GreaterOrEqual",
}


# ----------------------------------------------------------------------------------------------
# Signs, for Exp of an argument that cannot be positive (a Gaussian's -|x - y|^2)
# ----------------------------------------------------------------------------------------------

#: Operations whose values are >= 0 (NaN aside) whatever their arguments, and of these, those
#: whose zeros are +0 (so that 1 / them is +inf, never -inf)
_NONNEG = {"Rsqrt", "ReLU"}
_PLUS = {"Square", "Abs", "Exp", "Step", "OneHot", *COMPARISONS.values()}
#: Operations with their arguments' sign (component by component, or summed; sqrt(-0) is -0)
_SAME_SIGN = {"Sum", "Max", "Min", "Elem", "Extract", "SumT", "ElemT", "ExtractT", "Concat"}
_SAME_SIGN |= {"Add", "Sqrt"}


def _sign(n: Node, s: dict, nonneg: frozenset = frozenset()) -> tuple[bool, bool, bool]:
    """(every value >= 0, every value <= 0, every value's sign bit clear) -- NaN aside --
    from the arguments' (``s``); a parameter whose position is in ``nonneg`` is known to be
    +0 or more.  The third is what a divisor needs: x / -0 is -inf."""
    a = [s[id(x)] for x in n.args]
    if n.is_var:
        pos, _, cat = n.params
        return (True, False, True) if cat == 2 and pos in nonneg else (False, False, False)
    if n.op == "Zero":
        return True, True, True
    if n.op in ("IntCst", "Cst"):
        v = n.params[0]
        return v >= 0, v <= 0, math.copysign(1.0, v) > 0
    if n.op in _PLUS or (n.op in ("Mult", "Scalprod") and n.args[0] == n.args[1]):
        return True, False, True  # SqDist(x,y) is (x-y | x-y)
    if n.op in _NONNEG:
        return True, False, False
    if n.op in _SAME_SIGN:
        return all(x[0] for x in a), all(x[1] for x in a), all(x[2] for x in a)
    if n.op == "Pow":  # x^2k >= +0; 1 / x^2k too where x^2k is +0 or more; x^(2k+1): x's sign
        p = n.params[0]
        if p % 2 == 0 and (p > 0 or a[0][2]):
            return True, False, True
        return a[0] if p > 0 else (False, False, False)
    if n.op == "Minus":
        return a[0][1], a[0][0], False
    if n.op == "Subtract":
        return a[0][0] and a[1][1], a[0][1] and a[1][0], False
    if n.op in ("Mult", "Scalprod"):
        (p0, n0, z0), (p1, n1, z1) = a
        return (p0 and p1) or (n0 and n1), (p0 and n1) or (n0 and p1), z0 and z1
    if n.op == "Divide" and a[1][2]:  # by +0 or more: the dividend's sign
        return a[0]
    if n.op == "Divide" and n.args[1].op in ("IntCst", "Cst") and n.args[1].params[0] < 0:
        return a[0][1], a[0][0], False
    if n.op == "Inv" and a[0][2]:
        return True, False, True  # 1 / (+0 or more)
    return False, False, False


def signs(root: Node, nonneg: frozenset = frozenset()) -> dict[int, tuple[bool, bool, bool]]:
    """Node id -> (every value >= 0, every value <= 0, no value -0 or below) -- NaN aside --
    for each node of ``root``, from the operations alone (a variable: nothing known, but for
    the parameters at the positions ``nonneg``, +0 or more: checked by the caller)."""
    s: dict[int, tuple[bool, bool, bool]] = {}
    for n in postorder(root):
        s[id(n)] = _sign(n, s, nonneg)
    return s


def nonpositive_exps(root: Node, nonneg: frozenset = frozenset()) -> frozenset[int]:
    """The ``id`` of each Exp node of ``root`` whose argument is never positive (NaN aside):
    -SqDist(x,y), -Abs(x), SqNorm2(x) * -0.5, and -g * SqDist(x,y) where ``nonneg`` has g's
    position (:func:`node_te` computes those as e^-y)."""
    s = signs(root, nonneg)
    return frozenset(id(n) for n in postorder(root) if n.op == "Exp" and s[id(n.args[0])][1])


def node_te(n: Node, vals: dict, dtype: str, expneg: frozenset = frozenset()) -> Exprs:
    """``n``'s component expressions from its arguments' (``vals``: node id -> expressions).
    An Exp in ``expneg`` (:func:`nonpositive_exps`) is ``mathfns.exp_neg`` of the negated
    argument -- of -x's x itself where there is one: one clamp, not two, and 2^n in one piece,
    as accurate as :func:`mathfns.exp` (a Gaussian kernel 1.13-1.18x faster with AVX2 kernels,
    1.08x with AVX-512; float64 1.08-1.11x and 1.03-1.04x; Zen 4)."""
    if id(n) not in expneg:
        return REGISTRY[n.op].te([vals[id(a)] for a in n.args], n.params, dtype)
    a = n.args[0]
    if a.op == "Minus" and id(a.args[0]) in vals:
        ys = vals[id(a.args[0])]
    else:
        ys = [-v for v in vals[id(a)]]
    return [mathfns.exp_neg(y, dtype) for y in ys]


__all__ = ["REGISTRY", "OpDef", "TestSpec", "DimError", "FormulaError", "make", "op"]
