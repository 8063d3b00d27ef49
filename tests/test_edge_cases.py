"""Regression tests: valid formulas that used to raise, bad inputs that used to pass or fail
unclearly, empty inputs -- each against a dense float64 torch reference or a clear error."""

import pytest
import torch

import tvmred
from tvmred.launch import MAX_STATE, column_chunks
from tvmred.torch import Genred

F64 = torch.float64


def rand(*shape):
    return torch.rand(*shape, dtype=F64)


# ------------------------------------------------------------- valid formulas that raised


@pytest.mark.parametrize(
    "formula,aliases,ref",
    [
        # the simplifier removes every use of an output-indexed variable
        ("SqDist(x,x)+y", ["x = Vi(3)", "y = Vj(1)"], lambda x, y: y.sum().expand(len(x), 1)),
        ("(x-x)*y", ["x = Vi(3)", "y = Vj(1)"], lambda x, y: torch.zeros_like(x)),
        # two aliases of one position
        (
            "SqDist(x,z)*y",
            ["x = Vi(0,3)", "y = Vj(1,1)", "z = Vi(0,3)"],
            lambda x, y: torch.zeros(len(x), 1, dtype=F64),
        ),
        # IfElse with a constant condition ([1, 0] >= 0): the Exp branch was a dead stage
        (
            "IfElse(ElemT(IntCst(1),2,0),x*y,Exp(IntCst(1)))",
            ["x = Vi(3)", "y = Vj(1)"],
            lambda x, y: None,
        ),
    ],
)
def test_formulas_the_simplifier_folds(formula, aliases, ref):
    x, y = rand(39, 3), rand(26, 1)
    if "IfElse" in formula:  # x*y has dim 3, the condition dim 2: a DimError, as KeOps
        with pytest.raises(tvmred.DimError):
            Genred(formula, aliases, axis=1)
        x = x[:, :1]
        got = Genred(formula, ["x = Vi(1)", "y = Vj(1)"], axis=1)(x, y)
        torch.testing.assert_close(got, (x * y.sum()).expand(-1, 2))
        return
    torch.testing.assert_close(Genred(formula, aliases, axis=1)(x, y), ref(x, y))


def test_logsumexp_gradient_of_a_folded_condition():
    """The gradient kernel of this LogSumExp had a stage folded away (int32 overflow)."""
    x = rand(7, 1).requires_grad_()
    p, y = rand(2), rand(9, 1)
    g = Genred(
        "Elem(IfElse(x*(Abs(Zero(2))+0.5),x,p),1)*y",
        ["x = Vi(1)", "p = Pm(2)", "y = Vj(1)"],
        reduction_op="LogSumExp",
        axis=1,
    )
    c = g(x, p, y)
    xr = x.detach().clone().requires_grad_()
    f = torch.where(xr * 0.5 >= 0, xr, p[1]) * y.T  # Elem(.., 1) of IfElse(cond, x, p)
    ref = torch.logsumexp(f, 1, keepdim=True)
    torch.testing.assert_close(c, ref)
    torch.testing.assert_close(
        torch.autograd.grad(c.sum(), x)[0], torch.autograd.grad(ref.sum(), xr)[0]
    )


@pytest.mark.parametrize("aliases", [[], ["x = Vi(3)"], ["a = Vi(0, 3)"]])
def test_inline_variables(aliases):
    x, y = rand(10, 3), rand(20, 3)
    formula = "Var(0,3,0)*Var(1,3,1)" if not aliases else f"{aliases[0].split()[0]}*Vj(1,3)"
    got = Genred(formula, aliases, axis=1)(x, y)
    torch.testing.assert_close(got, x * y.sum(0))


def test_inline_variable_conflicting_with_an_alias():
    with pytest.raises(ValueError, match=r"uses Var\(0,3,1\), but position 0 is Var\(0,3,0\)"):
        Genred("x*Var(0,3,1)", ["x = Vi(3)"], axis=1)
    with pytest.raises(ValueError, match=r"not \[1\]"):
        Genred("Var(0,3,0)*Var(2,3,1)", [], axis=1)


def test_a_formula_without_variables():
    got = Genred("IntCst(3)*Exp(IntCst(1))", [], axis=1)()
    torch.testing.assert_close(got.double(), torch.tensor([[3 * 2.718281828459045]], dtype=F64))


# ------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("make_y", ["expanded", "strided"])
def test_empty_reduced_index_gives_the_identity(make_y):
    x = rand(10, 1)
    y = rand(1, 1).expand(0, 1) if make_y == "expanded" else rand(0, 5)[:, 2:3]
    al = ["x = Vi(1)", "y = Vj(1)"]
    assert torch.equal(Genred("x*y", al, axis=1)(x, y), torch.zeros(10, 1, dtype=F64))
    v, i = Genred("x*y", al, reduction_op="Min_ArgMin", axis=1)(x, y)
    assert torch.all(v == float("inf")) and torch.all(i == -1)
    assert torch.all(Genred("x*y", al, reduction_op="LogSumExp", axis=1)(x, y) == float("-inf"))


DIFFERENTIABLE = [
    ("Sum", None),
    ("Min", None),
    ("Max_ArgMax", None),
    ("KMin", 2),
    ("LogSumExp", None),
]


@pytest.mark.parametrize("red,k", DIFFERENTIABLE)
@pytest.mark.parametrize("empty", ["M", "N"])
def test_empty_inputs_with_gradients(red, k, empty):
    M, N = (0, 5) if empty == "M" else (4, 0)
    x = rand(M, 3).requires_grad_()
    y = rand(10, 3)[:N].requires_grad_()  # an empty view with the strides of its base
    g = Genred("(x|y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op=red, opt_arg=k, axis=1)
    out = g(x, y)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape[0] == M
    gx, gy = torch.autograd.grad(out.sum(), (x, y), allow_unused=True)
    assert gx.shape == x.shape and gy.shape == y.shape
    assert torch.all(gx == 0) and torch.all(gy == 0)


# ---------------------------------------------------------------- wide and deep formulas


def test_wide_reductions_run_in_column_chunks(monkeypatch):
    """A Sum of a 100-vector, a Min_ArgMin of a 40-vector and a softmax with a 70-vector
    weight (with 31 weight columns a kernel, blocked or not): several kernels over column
    slices, one result (values and gradients)."""
    from tvmred.reductions import lse

    monkeypatch.setattr(lse, "LSE_COLUMNS", 31)
    monkeypatch.setattr(lse, "LSE_COLUMNS_BLOCKED", 31)
    x, y = rand(20, 100).requires_grad_(), rand(30, 100)
    g = Genred("x*y", ["x = Vi(100)", "y = Vj(100)"], axis=1)
    assert len(column_chunks(g.reduction, "float64")) == 2
    c = g(x, y)
    torch.testing.assert_close(c, x * y.sum(0))
    torch.testing.assert_close(torch.autograd.grad(c.sum(), x)[0], y.sum(0).expand(20, -1))
    v, i = Genred("x-y", ["x = Vi(40)", "y = Vj(40)"], reduction_op="Min_ArgMin", axis=1)(
        x[:, :40], y[:, :40]
    )
    d = x[:, None, :40] - y[None, :, :40]
    torch.testing.assert_close(v, d.min(1).values)
    assert torch.equal(i, d.min(1).indices)
    b = rand(30, 70)
    sm = Genred(
        "-SqDist(x,y)",
        ["x = Vi(3)", "y = Vj(3)", "b = Vj(70)"],
        reduction_op="SumSoftMaxWeight",
        formula2="b",
        axis=1,
    )
    assert len(column_chunks(sm.reduction, "float64")) == 3
    s = sm(x[:, :3], y[:, :3], b)
    torch.testing.assert_close(s, torch.softmax(-(torch.cdist(x[:, :3], y[:, :3]) ** 2), 1) @ b)


def test_column_chunks_are_the_fewest_and_balanced():
    """A softmax's weight columns (and its denominator's) in one kernel up to LSE_COLUMNS
    (CUDA) or LSE_COLUMNS_BLOCKED (the CPU's blocked kernels), beyond in the fewest slices
    of at most that many, their widths within one of each other; a Sum of a 300-vector in
    the fewest slices of at most MAX_STATE."""
    from tvmred.frontend import make_reduction
    from tvmred.reductions.lse import LSE_COLUMNS, LSE_COLUMNS_BLOCKED

    for device, most in (("cuda", LSE_COLUMNS), ("cpu", LSE_COLUMNS_BLOCKED)):
        for e in (64, most - 1, most, 3 * most + 5):
            names = ["q = Vi(8)", "k = Vj(8)", f"v = Vj({e})"]
            r = make_reduction("(q|k)", names, "SumSoftMaxWeight", 1, "auto", formula2="v")
            widths = [p.formula.dim - 1 for p in column_chunks(r, "float32", device)]
            assert sum(widths) == e + 1 and max(widths) <= most  # F's and G's columns
            assert len(widths) == -(-(e + 1) // most) and max(widths) - min(widths) <= 1
    r = make_reduction("x*y", ["x = Vi(300)", "y = Vj(300)"], "Sum", 1, "auto")
    widths = [p.formula.dim for p in column_chunks(r, "float32")]
    assert sum(widths) == 300 and len(widths) == -(-300 // MAX_STATE)
    assert max(widths) - min(widths) <= 1


def test_column_chunks_respect_the_state_budget():
    from tvmred.frontend import make_reduction

    r = make_reduction("x*y", ["x = Vi(300)", "y = Vj(300)"], "Sum", 1, "auto")
    for dtype in ("float32", "float64"):
        parts = column_chunks(r, dtype)
        acc, variant = r.resolve(dtype)
        widths = [p.formula.dim for p in parts]
        assert sum(widths) == 300 and len(parts) > 1
        for w in widths:
            assert sum(c for c, _ in r.rdef.state(w, variant, dtype, acc)) <= MAX_STATE


def test_too_large_k_is_refused_quickly():
    with pytest.raises(ValueError, match=r"opt_arg=5000 is above the limit K <= 128"):
        Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="KMin", opt_arg=5000, axis=1)


def test_deep_nesting_is_a_parse_error():
    for text in ["(" * 300 + "x" + ")" * 300, "Exp(" * 300 + "x" + ")" * 300, "-" * 300 + "x"]:
        with pytest.raises(tvmred.ParseError, match="nested deeper than 100 levels"):
            Genred(text, ["x = Vi(1)"], axis=1)
    with pytest.raises(tvmred.ParseError, match="nested deeper than 1000 levels"):
        Genred("+".join(["x", "y"] * 600), ["x = Vi(1)", "y = Vj(1)"], axis=1)


def test_a_deep_chain_computes_with_gradients():
    """Depth 250 (deeper than Python's recursion allows a recursive walk): values and
    gradients against torch."""
    from tvmred.ops import make
    from tvmred.reductions import Reduction
    from tvmred.torch.autograd import apply_fn
    from tvmred.tree import var

    xv, yv = var(0, 1, 0), var(1, 1, 1)
    n = make("Mult", xv, yv)
    for k in range(250):
        n = make("Sin", n) if k % 2 else make("Add", n, yv)
    r = Reduction(n, "Sum", 0, (xv, yv), ("x", "y"))
    x, y = rand(5, 1).requires_grad_(), rand(6, 1)
    c = apply_fn(r, x, y)
    v = x[:, None] * y[None]
    for k in range(250):
        v = torch.sin(v) if k % 2 else v + y[None]
    ref = v.sum(1)
    torch.testing.assert_close(c, ref)
    torch.testing.assert_close(
        torch.autograd.grad(c.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0]
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_constants_tvm_cannot_fold_are_computed_once(dtype):
    """An Exp (or Asin, Log...) of a constant does not fold to a literal (TVM folds no math
    function): read several times by an outer Exp, it was copied into each read, nested --
    ``Exp(Exp(Asin(1/2)))`` made a float64 kernel of hundreds of thousands of characters that
    compiled for over ten minutes.  Such constants are staged like varying sub-formulas: the
    kernel stays small and the value is right (math's, in float64)."""
    import math

    from tvmred.lower import lower
    from tvmred.parse import parse, parse_aliases
    from tvmred.reductions import KernelSpec, Variant

    f = "SqDist(x,y)*Exp(Exp(Asin(IntInv(2))))"
    al = ["x = Vi(3)", "y = Vj(3)"]
    dt = str(dtype).split(".")[1]
    spec = KernelSpec(parse(f, parse_aliases(al)), "Sum", 0, dt, dt, Variant())
    assert len(lower(spec, 8).func.script()) < 40_000
    x, y = rand(20, 3).to(dtype), rand(30, 3).to(dtype)
    got = Genred(f, al, axis=1)(x, y)
    d = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
    want = d.sum(1, keepdim=True) * math.exp(math.exp(math.asin(0.5)))
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=0)


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("axis", [True, 1.0, "1", 2, -1])
def test_bad_axis(axis):
    with pytest.raises(ValueError, match="axis must be 0"):
        Genred("x", ["x = Vi(1)"], axis=axis)


def test_out_of_range_literal():
    with pytest.raises(tvmred.ParseError, match="1e400 is outside the float64 range"):
        Genred("x*1e400", ["x = Vi(1)"], axis=1)


def test_batched_shape_error_shows_the_full_shape():
    g = Genred("x+y", ["x = Vi(3)", "y = Vj(3)"], axis=1)
    with pytest.raises(ValueError, match=r"has shape \(2, 10, 4\); expected \(\.\.\., rows, dim\)"):
        g(rand(2, 10, 4), rand(2, 5, 3))


def ranges_for(x, y):
    """Two output ranges [0,5), [5,10), each reducing over [0,4) and [4,8)."""
    ri = torch.tensor([[0, 5], [5, 10]])
    rj = torch.tensor([[0, 4], [4, 8], [0, 4], [4, 8]])
    si = torch.tensor([2, 4])
    return [ri, si, rj, rj[:2], torch.tensor([1, 2]), ri[:1]]


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda r: r.__setitem__(1, torch.tensor([2.0, 4.0])), "slices_i must hold integers"),
        (lambda r: r.__setitem__(1, torch.tensor([3, 2])), "non-decreasing"),
        (lambda r: r.__setitem__(0, torch.tensor([0, 5, 5])), r"ranges_i must have shape \(n, 2\)"),
        (
            lambda r: r.__setitem__(0, torch.tensor([[0, 5, 1], [5, 10, 1]])),
            r"must have shape \(n, 2\)",
        ),
        (lambda r: r.__setitem__(0, torch.tensor([[0, 6], [5, 10]])), "ranges_i overlap"),
        (
            lambda r: r.__setitem__(0, torch.tensor([[5, 0], [5, 10]])),
            "out of bounds .* or decreasing",
        ),
        (
            lambda r: r.__setitem__(2, torch.tensor([[0, 4], [3, 8], [0, 4], [4, 8]])),
            "redranges_j.*overlap",
        ),
        (lambda r: r.__setitem__(1, torch.tensor([2])), "has 2 rows but slices_i has 1"),
    ],
)
def test_bad_ranges(damage, match):
    x, y = rand(10, 1), rand(8, 1)
    r = ranges_for(x, y)
    g = Genred("x*y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    torch.testing.assert_close(g(x, y, ranges=r), g(x, y))  # the undamaged ranges are dense
    damage(r)
    with pytest.raises(ValueError, match=match):
        g(x, y, ranges=r)


def test_nested_polynomials_are_staged_not_copied():
    """The formula that compiled for 281 s (issue 21): Exp's and Log's polynomials read their
    argument several times, ArgMax its components; inlined and nested, the copies multiplied.
    Now a large sub-expression read several times gets its own stage: the kernel stays small
    (the bound is the _staged estimate, the structure that made the compile slow) and right."""
    from tvmred import lower

    g = Genred(
        "ArgMax(Powf(Abs(y*Sum(b)-Sum(Cos(p)))+0.5, Min(IntInv(4)*x)))",
        ["x = Vi(1)", "y = Vj(3)", "b = Vj(2)", "p = Pm(4)"],
        reduction_op="LogSumExp",
        axis=0,
    )
    spec = g.reduction.spec("float64")
    staged = lower._staged(spec.formula, "float64", [2])
    before = lower.INLINE_CHARS
    try:
        lower.INLINE_CHARS = 10**12  # the old rule: nothing staged for its size
        assert len(lower._staged(spec.formula, "float64", [2])) < len(staged)
    finally:
        lower.INLINE_CHARS = before
    torch.manual_seed(0)
    x, y = torch.rand(50, 1, dtype=torch.float64), torch.rand(60, 3, dtype=torch.float64)
    b, p = torch.rand(60, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    base = torch.abs(y[None] * b.sum(-1)[None, :, None] - torch.cos(p).sum()) + 0.5
    am = (base ** (0.25 * x)[:, None, :]).argmax(-1).double()
    torch.testing.assert_close(g(x, y, b, p), torch.logsumexp(am, 0)[:, None])


@pytest.mark.parametrize("red,k", [("KMin_ArgKMin", 8), ("Min_ArgMin", None)])
def test_folded_constants_reach_the_kernel_as_literals(red, k):
    """A constant TVM's simplifier folds is a literal in the kernel: ``OneHot`` rounds with
    a floor, which TVM's passes left unfolded, and a K-min's insertions copied the whole
    expression -- the K-min of ``Min(OneHot(LessThan(0.5,3),4))`` (fuzz seed 72029) compiled
    for 2 minutes.  The lowered kernel holds no floor now; the values and indices as the
    dense answer (a constant 0: every j ties, the lowest indices first)."""
    from tvmred import lower
    from tvmred.tree import postorder

    g = Genred("Min(OneHot(LessThan(0.5,3),4))", ["x = Vi(3)", "y = Vj(2)"],
               reduction_op=red, axis=1, opt_arg=k)  # fmt: skip
    spec = g.reduction.spec("float64")
    assert id(spec.formula) in lower._folded(postorder(spec.formula), "float64")
    assert "floor" not in str(lower.lower(spec, 8).func)
    x, y = rand(5, 3), rand(11, 2)
    v, i = g(x, y)
    kk = k or 1
    torch.testing.assert_close(v, torch.zeros(5, kk, dtype=v.dtype))
    assert torch.equal(i, torch.arange(kk).expand(5, kk))


def staged_only_with_the_weight(text: str, aliases: list, red: str, op: str, lighter: int):
    """The Genred (axis=1) of ``text``, after checking that its float64 kernel stages the
    node of ``op`` with lower.SELECT_CHARS, and not with a select weighing ``lighter``."""
    from tvmred import lower
    from tvmred.tree import postorder

    g = Genred(text, aliases, reduction_op=red, axis=1)
    f = g.reduction.spec("float64").formula
    node = next(n for n in postorder(f) if n.op == op)
    assert id(node) in lower._staged(f, "float64", [2])
    before = lower.SELECT_CHARS
    try:
        lower.SELECT_CHARS = lighter
        assert id(node) not in lower._staged(f, "float64", [2])
    finally:
        lower.SELECT_CHARS = before
    return g


def test_nested_selects_are_staged_not_copied():
    """Round and ClampInt are selects; ArgMax reads each component several times, so inlined,
    the nested selects multiplied -- each a constraint scope of TVM's buffer-region analysis:
    ``ClampInt(ArgMax(Round(ClampInt(x,-1,0),2)),0,2)`` compiled for 9 s (fuzz seed 62582).
    A select now weighs SELECT_CHARS in _staged's estimate: the rounded components get a
    stage (not without the weight); the values as torch's."""
    text = "ClampInt(ArgMax(Round(ClampInt(x,-1,0),2)),0,2)"
    g = staged_only_with_the_weight(text, ["x = Vi(3)", "y = Vj(1)"], "Sum", "Round", 0)
    x = rand(40, 3) * 2 - 1.5
    want = torch.round(x.clamp(-1, 0) * 100).argmax(1, keepdim=True).double() * 7
    torch.testing.assert_close(g(x, rand(7, 1)), want)


def test_a_compared_rounding_read_by_argmin_is_staged():
    """``ArgMin(LessThan(1.5, Round(ClampInt(y,1,2),0)))``: each compared component ArgMin
    reads several times is three nested selects deep -- inlined, 27 s of CompactBufferAllocation
    (formula fuzz seed 95003, float64; 39 s once Round kept the sign of zero); a select's weight
    of 200 then left it under INLINE_CHARS.  Now the comparison gets a stage (not with a
    lighter weight); the indices as torch's."""
    text = "ArgMin(LessThan(1.5,Round(ClampInt(y,1,2),0)))"
    g = staged_only_with_the_weight(text, ["y = Vj(3)"], "ArgMin", "LessThan", 100)
    y = rand(31, 3) * 3
    f_j = (1.5 < torch.floor(y.clamp(1, 2) + 0.5)).double().argmin(1)  # halves away from 0
    assert f_j.min() < f_j.max()  # (the data leave something to choose)
    (j,) = g(y).reshape(-1).tolist()
    assert f_j[j] == f_j.min()


def test_a_large_node_read_through_data_movement_is_staged():
    """``Square(Elem(E, 0))`` reads a component of E twice: E is large (Exp's polynomial) and
    read several times, so it needs a stage -- but the rule marked the Elem, which is data
    movement and never staged, and nothing was: the copies multiplied through the outer Exp
    (1.3 million characters of TIR here; the gradient of formula fuzz seed 62479, nested so,
    compiled for 45 s).  The mark now passes through data movement to what it reads."""
    from tvmred import lower
    from tvmred.tree import postorder

    text = "Exp(Sqrt(Square(Elem(Exp(x*y),0)) + Square(Elem(Exp(x*y),1))))"
    g = Genred(text, ["x = Vi(2)", "y = Vj(2)"], reduction_op="Sum", axis=1)
    spec = g.reduction.spec("float64")
    inner = next(n for n in postorder(spec.formula) if n.op == "Exp" and n.dim == 2)
    assert id(inner) in lower._staged(spec.formula, "float64", [1])
    assert len(str(lower.lower(spec, 8).func)) < 100_000
    x, y = rand(30, 2) - 0.5, (rand(20, 2) - 0.5).requires_grad_()
    xr, yr = x.detach().clone(), y.detach().clone().requires_grad_()
    e = torch.exp(xr[:, None] * yr[None])
    want = torch.exp(e.square().sum(-1).sqrt()).sum(1, keepdim=True)
    got = g(x, y)
    torch.testing.assert_close(got, want)
    w = torch.randn_like(want)
    (gy,), (wy,) = torch.autograd.grad(got, [y], w), torch.autograd.grad(want, [yr], w)
    torch.testing.assert_close(gy, wy)


def test_a_kernel_beyond_the_size_bound_is_a_clear_error(monkeypatch):
    from tvmred import lower
    from tvmred.errors import FormulaError

    monkeypatch.setattr(lower, "MAX_KERNEL_CHARS", 20_000)
    g = Genred("SoftDTW_SqDist(x,y,g)", ["x = Vi(4)", "y = Vj(4)", "g = Pm(1)"], axis=1)
    x, y, gam = torch.rand(3, 4), torch.rand(4, 4), torch.ones(1)
    with pytest.raises(FormulaError, match="compile would take minutes"):
        g(x, y, gam)


def test_the_size_bound_lets_keops_wide_formulas_through():
    """KeOps' own test_LazyTensor_min_chunked (a Min of a Sum of 990 exponentials) compiles
    in about 80 s: the bound must accept it (an earlier bound of 5 million refused it)."""
    from tvmred import lower

    g = Genred("Sum(Exp(-Square(x+y)))", ["x = Vi(990)", "y = Vj(990)"], reduction_op="Min",
               axis=1)  # fmt: skip
    spec = g.reduction.spec("float32")
    lower._staged(spec.formula, "float32", [1])  # raises FormulaError beyond the bound


def test_a_wide_root_is_staged_not_copied_per_column(monkeypatch):
    """The reducer reads column u of the formula from a chain of its components, which the
    schedule unrolls, a copy per column: Exp(x*y) of D = 64 was 19 million characters of
    expressions unrolled (15 s to compile).  A wide root with long components gets stages
    (each copy then holds reads); narrow or short ones stay inlined; the values as torch's."""
    from tvmred import lower, wide

    g = Genred("Exp(x*y)", ["x = Vi(64)", "y = Vj(64)"], reduction_op="Sum", axis=1)
    f = g.reduction.spec("float32").formula
    assert id(f) in lower._staged(f, "float32", [1] * f.dim)
    monkeypatch.setattr(wide, "ROOT_COPY_CHARS", 10**12)  # the rule before: inlined
    assert id(f) not in lower._staged(f, "float32", [1] * f.dim)
    monkeypatch.undo()
    for text in ("Exp(-SqDist(x,y))*b", "x*y"):  # the usual ones: unchanged
        short = Genred(text, ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"], axis=1)
        sf = short.reduction.spec("float32").formula
        assert id(sf) not in lower._staged(sf, "float32", [1] * sf.dim)
    x, y = rand(30, 64) - 0.5, rand(20, 64) - 0.5
    torch.testing.assert_close(g(x, y), torch.exp(x[:, None] * y[None]).sum(1))


def test_a_wide_stage_builds_its_components_once(monkeypatch):
    """A staged node's components are built once and moved to each component's compute (built
    anew for each, a node of 1000 components cost 10^6 expressions: OneHot(s, 1000), 18 s a
    kernel); the values as torch's."""
    from tvmred import build, lower

    calls = []
    node_te = lower.node_te
    monkeypatch.setattr(lower, "node_te", lambda n, *a: calls.append(n.op) or node_te(n, *a))
    g = Genred("OneHot(Sum(x),100)", ["x = Vi(3)", "y = Vj(1)"], reduction_op="Sum", axis=1)
    for part in column_chunks(g.reduction, "float64"):  # two kernels of 50 columns
        calls.clear()
        build.compile_reduction(part.spec("float64"), {"kind": "llvm"})
        assert 1 <= calls.count("OneHot") <= 2, calls.count(
            "OneHot"
        )  # was 100 (once per component)
    monkeypatch.undo()
    x = rand(40, 3) * 33
    want = torch.nn.functional.one_hot(torch.round(x.sum(1)).long(), 100).double() * 7
    torch.testing.assert_close(g(x, rand(7, 1)), want)


def test_round_to_many_decimals():
    """Round(f, d) of a value already whole at 10^-d is the value (x 10^d overflowed:
    Round(1e10, 30) in float32 was inf); a 10^d outside the dtype's range is named."""
    from tvmred.errors import FormulaError

    x = torch.tensor([[1e10], [0.123456], [-2.5e-3], [3e38]], dtype=torch.float32)
    one = torch.ones(1, 1, dtype=torch.float32)
    got = Genred("Round(x,30)", ["x = Vi(1)", "y = Vj(1)"], axis=1)(x, one)
    torch.testing.assert_close(got, x, rtol=0, atol=0)
    with pytest.raises(FormulaError, match=r"10\^39 is outside float32's range"):
        Genred("Round(x,39)", ["x = Vi(1)", "y = Vj(1)"], axis=1)(x, one)


def test_round_keeps_the_sign_of_a_zero():
    """Round(x, d) of a small negative x is -0, as C's round and torch's (fuzz seed 96230:
    LogSumExp of Sum(Inv(Round(y,2))) was +inf where 1/-0 = -inf drops out): whole + 0 was +0."""
    x = torch.tensor([[-0.3], [0.3], [-0.003], [0.003], [-0.7]], dtype=torch.float64)
    y = torch.zeros(1, 1, dtype=torch.float64)
    for d, want in [(0, 1 / torch.round(x)), (2, 1 / (torch.round(x * 100) / 100))]:
        g = Genred(f"Inv(Round(x,{d}))+y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
        torch.testing.assert_close(g(x, y), want)
        assert torch.equal(torch.signbit(g(x, y)), torch.signbit(want)), d


def test_clamp_gradient_with_a_nan_bound_follows_its_value():
    """Clamp(x, a, b) is x where neither x < a nor x > b -- a NaN bound compares false, so the
    value is x and so is the derivative (torch.where's): the gradient's a <= x <= b was 0
    there (formula fuzz seed 96009, b = Rsqrt of a negative number)."""
    x = torch.tensor([[0.5], [-2.0], [3.0]], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[0.0], [float("nan")], [1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[4.0], [-1.0], [0.25]], dtype=torch.float64, requires_grad=True)
    g = Genred("Clamp(x, a, Rsqrt(y))", ["x = Vi(1)", "a = Vj(1)", "y = Vj(1)"], axis=1)
    ref = [t.detach().clone().requires_grad_() for t in (x, a, y)]
    xr, ar, yr = ref[0], ref[1].T, ref[2].rsqrt().T
    want = torch.where(xr < ar, ar, torch.where(xr > yr, yr, xr)).nansum(1, keepdim=True)
    got = g(x, a, y)
    torch.testing.assert_close(got.nan_to_num(), want)  # (rows meeting a NaN: NaN both)
    e = torch.ones_like(want)
    for gt, wt in zip(
        torch.autograd.grad(got.nansum(), (x, a, y)), torch.autograd.grad(want, ref, e)
    ):
        torch.testing.assert_close(gt, wt, equal_nan=True)
