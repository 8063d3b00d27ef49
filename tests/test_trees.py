"""The fast tier: parse, simplification, macro expansion and symbolic differentiation checked
for every op of the registry by evaluating formula trees with each op's own torch ``ref``
(a tree interpreter, no kernel), and the lowering to TIR built for each (no LLVM step).
``python -m pytest tests/test_trees.py`` runs in seconds."""

import pytest
import torch
from test_ops import CASES

from tvmred import lower
from tvmred.diff import grad
from tvmred.frontend import make_reduction
from tvmred.ops import REGISTRY
from tvmred.tree import Node, postorder, var

P = 64  # independent (i, j) pairs, one per row


def evaluate(root: Node, inputs: dict) -> torch.Tensor:
    """The value of ``root`` at each pair: ``inputs[pos]`` is a (P, dim) tensor; every node
    is evaluated with its op's torch ``ref``."""
    vals: dict[int, torch.Tensor] = {}
    for n in postorder(root):
        if n.is_var:
            v = inputs[n.params[0]]
        elif n.op in ("IntCst", "Cst"):
            v = torch.full((1, 1), float(n.params[0]), dtype=torch.float64)
        elif n.op == "Zero":
            v = torch.zeros(1, n.dim, dtype=torch.float64)
        else:
            v = REGISTRY[n.op].ref(*(vals[id(a)] for a in n.args), *n.params)
        vals[id(n)] = v
    return vals[id(root)].expand(P, root.dim)


def case(name):
    d = REGISTRY[name]
    spec = d.test
    dims = spec.argdims or (3,) * d.nargs
    ranges = spec.ranges or ((-1.0, 1.0),) * d.nargs
    args, aliases = [], []
    for k, dim in enumerate(dims):
        lo, hi = ranges[k] if k < len(ranges) else ranges[-1]
        a = lo + (hi - lo) * torch.rand(P, dim, dtype=torch.float64)
        args.append(torch.floor(a) if spec.integer else a)
        aliases.append(f"a{k} = {'Vi' if k % 2 == 0 else 'Vj'}({dim})")
    names = [f"a{k}" for k in range(len(dims))] + [str(p) for p in spec.params]
    r = make_reduction(f"{name}({','.join(names)})", aliases, "Sum", 1, "auto")
    return d, r, args


@pytest.mark.parametrize("name", CASES)
def test_the_tree_computes_the_op(name):
    """The parsed (simplified, expanded) tree, evaluated node by node, is the op's ref."""
    d, r, args = case(name)
    got = evaluate(r.formula, dict(enumerate(args)))
    want = d.ref(*args, *d.test.params).expand(P, r.formula.dim)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", [n for n in CASES if REGISTRY[n].test.grad])
def test_the_symbolic_gradient_is_torchs(name):
    """diff.grad's tree (the vjp rules of every op it meets), evaluated with the refs, against
    torch.autograd through the op's ref."""
    d, r, args = case(name)
    args = [a.requires_grad_() for a in args]
    out = d.ref(*args, *d.test.params).expand(P, r.formula.dim)
    g = torch.randn(P, r.formula.dim, dtype=torch.float64)
    want = (
        torch.autograd.grad(out, args, g, allow_unused=True)
        if out.requires_grad
        else (None,) * len(args)  # a piecewise-constant op (ArgMax, Sign, ...)
    )
    gv = var(len(args), r.formula.dim, 0)
    inputs = {**dict(enumerate(a.detach() for a in args)), len(args): g}
    for k, a in enumerate(args):
        tree = grad(r.formula, r.args[k], gv)
        ref = torch.zeros_like(a) if want[k] is None else want[k]
        got = torch.zeros_like(a) if tree.is_zero else evaluate(tree, inputs)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("name", CASES)
def test_the_tree_lowers(name):
    """The TE compute of the op's Sum reduction becomes a TIR function that reads every
    variable (TVM's lowering, no code generation)."""
    _, r, _ = case(name)
    text = lower.lower(r.spec("float64"), 4).func.script()
    for k in range(r.nargs):
        assert f"arg{k}" in text, (name, k)
