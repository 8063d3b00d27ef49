"""Registry-wide conformance: every operation's value and gradient, inside a Sum reduction over
j (axis=1) and over i (axis=0), against its own torch reference evaluated densely in float64."""

import math

import pytest
import torch

from tvmred.ops import REGISTRY
from tvmred.torch import Genred

M, N = 300, 500
CASES = sorted(name for name, d in REGISTRY.items() if d.test is not None)


def inputs(name, dtype=torch.float64):
    d = REGISTRY[name]
    spec = d.test
    dims = spec.argdims or (3,) * d.nargs
    ranges = spec.ranges or ((-1.0, 1.0),) * d.nargs
    args, aliases = [], []
    for k, dim in enumerate(dims):
        cat = k % 2  # alternate i- and j-variables
        rows = M if cat == 0 else N
        lo, hi = ranges[k] if k < len(ranges) else ranges[-1]
        a = lo + (hi - lo) * torch.rand(rows, dim, dtype=torch.float64)
        if spec.integer:
            a = torch.floor(a)
        args.append(a.to(dtype))
        aliases.append(f"a{k} = {'Vi' if cat == 0 else 'Vj'}({dim})")
    # an unused j-variable fixes N even for ops whose arguments are all i-variables
    args.append(torch.rand(N, 1, dtype=dtype))
    aliases.append("z = Vj(1)")
    names = [f"a{k}" for k in range(len(dims))] + [str(p) for p in spec.params]
    return f"{name}({','.join(names)})", aliases, args


def dense(name, args, axis):
    """The op's torch reference on the full (M, N) grid, reduced densely."""
    d = REGISTRY[name]
    grid = [
        (a[:, None, :] if k % 2 == 0 else a[None, :, :]).expand(M, N, a.shape[-1])
        for k, a in enumerate(args[:-1])
    ]
    out = d.ref(*grid, *d.test.params)
    out = out.expand(M, N, out.shape[-1])
    return out.sum(axis)


def scale(t):
    return max(t.abs().max().item(), 1.0)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("name", CASES)
def test_value_and_gradient(name, axis):
    formula, aliases, args = inputs(name)
    args = [a.requires_grad_() for a in args]
    c = Genred(formula, aliases, reduction_op="Sum", axis=axis)(*args)
    ref = dense(name, args, axis)
    assert c.shape == ref.shape
    torch.testing.assert_close(c, ref, rtol=1e-9, atol=1e-9 * scale(ref))
    if not REGISTRY[name].test.grad:
        return
    e = torch.randn_like(ref)
    got = torch.autograd.grad(c, args, e)
    want = (
        torch.autograd.grad(ref, args, e, allow_unused=True)
        if ref.requires_grad
        else [None] * len(args)
    )
    for k, (g, w) in enumerate(zip(got, want)):
        w = torch.zeros_like(args[k]) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-8 * scale(w), msg=f"{name}: d/d a{k}")


@pytest.mark.parametrize("name", CASES)
def test_value_float32(name):
    formula, aliases, args = inputs(name, torch.float32)
    c = Genred(formula, aliases, reduction_op="Sum", axis=1)(*args)
    ref = dense(name, [a.double() for a in args], 1)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c.double(), ref, rtol=1e-4, atol=1e-4 * scale(ref))


SPECIAL = sorted(name for name, d in REGISTRY.items() if d.test is not None and d.test.points)


@pytest.mark.parametrize("name", SPECIAL)
def test_special_points(name):
    """Each op's special inputs (0 for Sqrt, Rsqrt, XLogX, SinXDivX, Abs, ReLU...; ties for
    Round and OneHot; OneHot outside 0..D-1), value against the op's torch reference and
    derivative against an independent derivative reference (``TestSpec.dref``, which
    states the conventions: Sqrt'(0) = 0 and ReLU'(0) = 1 as KeOps, SinXDivX'(0) = 0)."""
    d = REGISTRY[name]
    spec = d.test
    dim = (spec.argdims or (3,))[0]
    points = torch.tensor(spec.points, dtype=torch.float64)
    x = torch.cat([points[:, None].expand(-1, dim), 2 * torch.rand(5, dim, dtype=torch.float64)])
    x.requires_grad_()
    z = torch.rand(3, 1, dtype=torch.float64)
    params = "".join(f",{p}" for p in spec.params)
    c = Genred(f"{name}(x{params})", [f"x = Vi({dim})", "z = Vj(1)"], axis=1)(x, z)
    want = 3 * d.ref(x.detach(), *spec.params)
    torch.testing.assert_close(c.detach(), want, equal_nan=True, msg=f"{name} at {spec.points}")
    if spec.dref is not None:
        e = torch.randn_like(c)
        (g,) = torch.autograd.grad(c, x, e)
        torch.testing.assert_close(g, 3 * e * spec.dref(x.detach()), equal_nan=True, msg=f"{name}'")


def test_clamp_with_bounds_crossed():
    """Clamp(x, a, b) with a > b is a where x < a (KeOps' order of the tests), and its
    gradient goes to a there, not also to b (found by the fuzz test, seed 3098): against
    torch autograd through the same nested where, in float64."""
    g = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(40, 1, generator=g, dtype=torch.float64) for _ in range(3))
    args = [t.clone().requires_grad_() for t in (x, a, b)]
    c = Genred("Clamp(x,a,b)", ["x = Vi(1)", "a = Vi(1)", "b = Vi(1)", "z = Vj(1)"], axis=1)(
        *args, torch.ones(1, 1, dtype=torch.float64)
    )
    refs = [t.clone().requires_grad_() for t in (x, a, b)]
    want = torch.where(refs[0] < refs[1], refs[1], torch.where(refs[0] > refs[2], refs[2], refs[0]))
    assert ((a > b) & (x < a) & (x > b)).sum() >= 5  # the crossed case is exercised
    torch.testing.assert_close(c, want)
    e = torch.randn(40, 1, generator=g, dtype=torch.float64)
    for got, ref in zip(torch.autograd.grad(c, args, e), torch.autograd.grad(want, refs, e)):
        torch.testing.assert_close(got, ref)


def test_atan2_gradient_at_the_origin():
    """Atan2'(0, 0) is 0 w.r.t. both arguments, as torch's (not 0/0 = NaN, which poisoned the
    gradient of a whole sum: fuzz seed 5000); elsewhere x/r^2 and -y/r^2, against torch."""
    y = torch.tensor([[0.0], [0.0], [0.3], [-1.2]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.0], [0.5], [0.0], [2.0]], dtype=torch.float64, requires_grad=True)
    one = torch.ones(1, 1, dtype=torch.float64)
    c = Genred("Atan2(y,x)", ["y = Vi(1)", "x = Vi(1)", "z = Vj(1)"], axis=1)(y, x, one)
    yr, xr = (t.detach().clone().requires_grad_() for t in (y, x))
    want = torch.atan2(yr, xr)
    torch.testing.assert_close(c, want)
    got_g, want_g = torch.autograd.grad(c.sum(), [y, x]), torch.autograd.grad(want.sum(), [yr, xr])
    for a, b in zip(got_g, want_g):
        assert a[0].item() == 0.0 and b[0].item() == 0.0
        torch.testing.assert_close(a, b)


def test_relu_gradient_is_a_select():
    """ReLU passes its gradient where x >= 0 and gives 0 elsewhere, whatever it is given: the
    gradient of XLogX(ReLU(p)) at p < 0 (log 0 = -inf upstream) is 0, as torch's (a product
    g * Step(x) made it 0 * -inf = NaN: fuzz seeds 61366, 62104, 72096); elsewhere as torch."""
    p = torch.tensor([[-0.5], [0.25], [1.5], [-2.0]], dtype=torch.float64, requires_grad=True)
    one = torch.ones(1, 1, dtype=torch.float64)
    c = Genred("XLogX(ReLU(p))", ["p = Vi(1)", "z = Vj(1)"], axis=1)(p, one)
    pr = p.detach().clone().requires_grad_()
    r = torch.relu(pr)
    want = torch.special.xlogy(r, r)
    torch.testing.assert_close(c, want)
    got, ref = torch.autograd.grad(c.sum(), p)[0], torch.autograd.grad(want.sum(), pr)[0]
    assert got[0].item() == 0.0 and got[3].item() == 0.0
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("formula", ["XLogX(ClampInt(p,0,2))", "XLogX(Clamp(p,a,b))"])
def test_clamp_gradients_are_selects(formula):
    """Clamp and ClampInt pass their gradient where the value is x and give 0 where it is
    clamped, whatever they are given: XLogX of a value clamped to 0 (log 0 = -inf upstream)
    has gradient 0 there, as torch's clamp (a product g * mask gave NaN: fuzz seed 97346);
    Clamp's bounds get the gradient where they are the value."""
    p = torch.tensor(
        [[-0.5], [0.25], [1.5], [-2.0], [2.5]], dtype=torch.float64, requires_grad=True
    )
    a = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)  # the bounds as Vj rows
    b = torch.full((1, 1), 2.0, dtype=torch.float64, requires_grad=True)
    al = ["p = Vi(1)", "a = Vj(1)", "b = Vj(1)"]
    got = Genred(formula, al, axis=1)(p, a, b)
    refs = [t.detach().clone().requires_grad_() for t in (p, a, b)]
    r = torch.clamp(refs[0], refs[1][0, 0], refs[2][0, 0])
    want = torch.where(r == 0, torch.zeros_like(r), r * torch.log(torch.where(r == 0, 1.0, r)))
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), (p, a, b))
    (want_p,) = torch.autograd.grad(want.sum(), refs[0])
    assert grads[0][0].item() == 0.0 and grads[0][3].item() == 0.0
    torch.testing.assert_close(grads[0], want_p)
    if "Clamp(" in formula:  # a bound gets XLogX's derivative where it is the value
        assert grads[1].item() == -math.inf  # log 0 + 1, twice (-0.5 and -2 clamped to 0)
        torch.testing.assert_close(grads[2][0, 0].item(), math.log(2.0) + 1)  # 2.5 -> 2


@pytest.mark.parametrize("name", ["Min", "ArgMin", "Max", "ArgMax"])
def test_min_max_of_long_vectors(name):
    """Min/Max/ArgMin/ArgMax of a 9-vector formula and of a 64-vector: each component is read
    a fixed number of times (the running-best chain doubled its expression with every
    component: ArgMin(TensorProd(y,y)) took minutes to build, a 64-vector never finished;
    fuzz seed 7149), values and first-index ties against torch, NaN first."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64).round()  # small integers: ties
    y = torch.randn(30, 3, generator=g, dtype=torch.float64).round()
    y[4, 1] = float("nan")
    ref = {"Min": torch.min, "Max": torch.max, "ArgMin": torch.argmin, "ArgMax": torch.argmax}
    pick = ref[name]
    one = lambda t: t[0] if isinstance(t, tuple) else t  # noqa: E731
    tp = (x[:, None, :, None] * y[None, :, None, :]).reshape(20, 30, 9)
    want = one(pick(tp, -1)).to(torch.float64).sum(1, keepdim=True)
    al = ["x = Vi(3)", "y = Vj(3)"]
    got = Genred(f"{name}(TensorProd(x,y))", al, axis=1)(x, y)
    torch.testing.assert_close(got, want, equal_nan=True)
    u, v = (
        torch.randn(20, 64, generator=g, dtype=torch.float64),
        torch.randn(30, 64, generator=g, dtype=torch.float64),
    )
    want = one(pick(u[:, None] * v[None], -1)).to(torch.float64).sum(1, keepdim=True)
    got = Genred(f"{name}(u*v)", ["u = Vi(64)", "v = Vj(64)"], axis=1)(u, v)
    torch.testing.assert_close(got, want)
