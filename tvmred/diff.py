"""Symbolic differentiation of formulas, generic over the operation registry.

``grad(f, v, g)`` is the vector-Jacobian product  (df/dv)^T g  (KeOps' ``Grad``), computed in
reverse mode over the hash-consed DAG: each node's cotangent is accumulated once, then pushed
to its arguments with that operation's ``vjp`` rule.  ``diff(f, v, e)`` is the Jacobian-vector
product (df/dv) e (KeOps' ``Diff``), obtained as the gradient of the linear form u -> <grad(f, v, u), e>.
No operation-specific code lives here.
"""

from __future__ import annotations

from .errors import DimError
from .ops import REGISTRY, add, f, op, zero
from .tree import Node, postorder, var, variables


def grad(fx: Node, v: Node, g: Node) -> Node:
    """(d fx / d v)^T g, a node of dimension ``v.dim``."""
    if not v.is_var:
        raise DimError(f"Grad: the second argument must be a variable, got {v}")
    if g.dim != fx.dim:
        raise DimError(f"Grad({fx}, {v}, g): g has dim {g.dim}, expected dim {fx.dim}")
    order = postorder(fx)
    depends: set[int] = set()
    for n in order:
        if n is v or any(id(a) in depends for a in n.args):
            depends.add(id(n))
    if id(fx) not in depends:
        return zero(v.dim)
    cot: dict[int, Node] = {id(fx): g}
    result = zero(v.dim)
    for node in reversed(order):
        ct = cot.pop(id(node), None)
        if ct is None or ct.is_zero:
            continue
        if node is v:
            result = add(result, ct)
            continue
        if not node.args:
            continue
        contribs = REGISTRY[node.op].vjp(ct, node, *node.args, *node.params)
        for a, ca in zip(node.args, contribs):
            if ca is None or id(a) not in depends:
                continue
            if ca.dim != a.dim:  # a registry bug, not a user error
                raise AssertionError(
                    f"vjp of {node.op} gave dim {ca.dim} for an arg of dim {a.dim}"
                )
            prev = cot.get(id(a))
            cot[id(a)] = ca if prev is None else add(prev, ca)
    return result


def diff(fx: Node, v: Node, e: Node) -> Node:
    """(d fx / d v) e, a node of dimension ``fx.dim``."""
    if not v.is_var:
        raise DimError(f"Diff: the second argument must be a variable, got {v}")
    if e.dim != v.dim:
        raise DimError(f"Diff({fx}, {v}, e): e has dim {e.dim}, expected dim {v.dim}")
    u = var(-1 - len(postorder(fx)), fx.dim, 0)  # a dummy variable no formula uses
    lin = f("Scalprod", grad(fx, v, u), e)
    out = grad(lin, u, f("IntCst", params=(1,)))
    if u in variables(out):  # cannot happen for a linear form; guard against registry bugs
        raise AssertionError("Diff: the dummy variable survived differentiation")
    return out


# KeOps' Grad and Diff are registry entries like any operation (their rule is the one above),
# so the parser and LazyTensors build them through ops.make without a special case
op("Grad", 3, expand=grad, test=None, doc="Grad(f, v, e): (df/dv)^T e for a variable v (VJP)")


def grad_matrix(fx: Node, v: Node) -> Node:
    """keopscore's GradMatrix: ``Grad(f, v, e_k)`` for k < dim f, concatenated -- the Jacobian
    of f w.r.t. v, row k the gradient of f_k (dim f x dim v)."""
    one = f("IntCst", params=(1,))
    rows = [grad(fx, v, one if fx.dim == 1 else f("ElemT", one, params=(fx.dim, k)))
            for k in range(fx.dim)]  # fmt: skip
    out = rows[0]
    for r in rows[1:]:
        out = f("Concat", out, r)
    return out


op("GradMatrix", 2, expand=grad_matrix, test=None,
   doc="GradMatrix(f, v): the Jacobian of f w.r.t. the variable v, row-major")  # fmt: skip
op("Diff", 3, expand=diff, test=None, doc="Diff(f, v, e): (df/dv) e for a variable v (JVP)")


# keopscore's linear operators of the derivative, as macros over Grad
def _unit(d: int, k: int) -> Node:
    return (
        f("IntCst", params=(1,)) if d == 1 else f("ElemT", f("IntCst", params=(1,)), params=(d, k))
    )


def trace(fx: Node, v: Node) -> Node:
    """The trace of the Jacobian of fx w.r.t. v at v: sum_k d fx_k / d v_k when dim fx = dim v,
    sum_k d fx / d v_k when fx is scalar -- keopscore's TraceOperator of a linear fx (the
    Jacobian is then the linear map's matrix, whatever v is) and its Divergence."""
    if not v.is_var:
        raise DimError(f"TraceOperator: the second argument must be a variable, got {v}")
    d = v.dim
    if fx.dim == 1:
        g = grad(fx, v, f("IntCst", params=(1,)))
        return g if d == 1 else f("Sum", g)
    if fx.dim != d:
        raise DimError(f"TraceOperator({fx}, {v}): f has dim {fx.dim}, expected 1 or {d}")
    terms = [grad(fx, v, _unit(d, k)) for k in range(d)]
    out = terms[0] if d == 1 else f("Elem", terms[0], params=(0,))
    for k in range(1, d):
        out = add(out, f("Elem", terms[k], params=(k,)))
    return out


def _divergence(fx: Node, v: Node) -> Node:
    if fx.dim != v.dim:
        raise DimError(f"Divergence({fx}, {v}): f has dim {fx.dim}, v has dim {v.dim}")
    return trace(fx, v)


def _laplacian(fx: Node, v: Node) -> Node:
    if fx.dim != 1:
        raise DimError(f"Laplacian({fx}, {v}): f must be scalar, got dim {fx.dim}")
    if not v.is_var:
        raise DimError(f"Laplacian: the second argument must be a variable, got {v}")
    return trace(grad(fx, v, f("IntCst", params=(1,))), v)


op("TraceOperator", 2, expand=trace, test=None,
   doc="TraceOperator(f, v): the trace of f's Jacobian w.r.t. v (f linear in v; dim f = 1 or dim v)")  # fmt: skip
op("Divergence", 2, expand=_divergence, test=None,
   doc="Divergence(f, v): sum_k df_k/dv_k (dim f = dim v)")  # fmt: skip
op("Laplacian", 2, expand=_laplacian, test=None,
   doc="Laplacian(f, v): sum_k d^2 f/dv_k^2 (f scalar)")  # fmt: skip
