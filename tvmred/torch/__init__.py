"""PyTorch binding: ``from tvmred.torch import Genred`` (drop-in for ``pykeops.torch.Genred``).

Autograd: the backward of a reduction is built symbolically from its formula (see
``_RULES``) and evaluated by further ``_GenredFn`` calls, so gradients of any order work.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional, Sequence

import torch

from .. import dispatch
from ..diff import grad as sym_grad
from ..genred import Reduction, copy_into, make_reduction, placement, run_states
from ..ops import add, f, make, mul, sub
from ..tree import Node, postorder


class _GenredFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: Reduction, *args: torch.Tensor):  # type: ignore[override]
        out, state = run_states(r, args)
        outs = out if isinstance(out, tuple) else (out,)
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        ctx.r = r
        idx = [s for s in state if s.dtype == torch.int32] if r.rdef.grad == "select" else []
        ctx.save_for_backward(*args, *outs, *idx)
        return out

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):  # type: ignore[override]
        r: Reduction = ctx.r
        saved = ctx.saved_tensors
        args, rest = saved[: r.nargs], saved[r.nargs :]
        g = grads[0]
        if r.rdef.grad == "unsupported":
            raise NotImplementedError(
                f"{r.red} has no gradient (as in pykeops); use LogSumExp or SumSoftMaxWeight"
            )
        out: list[Optional[torch.Tensor]] = [None]
        for k, a in enumerate(args):
            if not ctx.needs_input_grad[k + 1] or g is None or r.rdef.grad == "none":
                out.append(None)
                continue
            res = _RULES[r.rdef.grad](r, k, args, rest, g.contiguous())
            out.append(_finish(r, k, res, a))
        return tuple(out)


def _finish(r: Reduction, k: int, res: Optional[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    if res is None:
        return torch.zeros_like(a)
    if r.args[k].params[2] == 2 and res.dim() == 2:  # parameter: summed over output rows
        res = res.sum(0)
    return res.reshape(a.shape)


# ------------------------------------------------------------------------ gradient rules


def _sum_rule(r, k, args, rest, g):
    gr = r.grad(k)
    return None if gr is None else _GenredFn.apply(gr, *args, g)


@functools.cache
def _lse_spec(r: Reduction, k: int) -> Optional[Reduction]:
    """KeOps' rule: d log sum_j e^F G = sum_j e^(F - L) (G dF + dG) / ..., with L the output."""
    dg = r.formula.dim - 1
    gv, lv = r.extra(dg), r.extra(dg, 1)
    w = mul(gv, f("Exp", sub(r.main, lv)))
    v = r.args[k]
    if r.weight is None:
        fg = sym_grad(r.main, v, w)
    else:
        fg = add(sym_grad(r.main, v, f("Sum", mul(w, r.weight))), sym_grad(r.weight, v, w))
    if fg.is_zero:
        return None
    return r.with_formula(fg, [(gv, "gradient"), (lv, "output")], r.grad_axis(k))


def _lse_rule(r, k, args, rest, g):
    spec = _lse_spec(r, k)
    return None if spec is None else _GenredFn.apply(spec, *args, g, rest[0])


@functools.cache
def _softmax_specs(r: Reduction, k: int) -> tuple[Reduction, Optional[Reduction]]:
    """out = sum_j p_j w_j, p = softmax_j(F): d out = sum_j p_j (dw_j + (w_j - out) dF_j)."""
    w = r.weight.args[1]  # the user's weight (the formula is Concat(F, Concat(1, w)))
    lse = Reduction(
        make("Concat", r.main, f("IntCst", params=(1,))),
        "LogSumExp",
        r.out_cat,
        r.args,
        r.names,
        r.dtype_acc,
        None,
        r.main,
        None,
    )
    gv, sv, lv = r.extra(w.dim), r.extra(w.dim, 1), r.extra(1, 2)
    p = f("Exp", sub(r.main, lv))
    v = r.args[k]
    dF = mul(p, sub(f("Scalprod", gv, w), f("Scalprod", gv, sv)))
    fg = add(sym_grad(w, v, mul(p, gv)), sym_grad(r.main, v, dF))
    if fg.is_zero:
        return lse, None
    extra = [(gv, "gradient"), (sv, "output"), (lv, "logsumexp")]
    return lse, r.with_formula(fg, extra, r.grad_axis(k))


def _softmax_rule(r, k, args, rest, g):
    lse_spec, spec = _softmax_specs(r, k)
    if spec is None:
        return None
    lse = _GenredFn.apply(lse_spec, *args)
    return _GenredFn.apply(spec, *args, g, rest[0], lse)


@functools.cache
def _gathered_spec(r: Reduction, k: int, u: int) -> Optional[Reduction]:
    """Gradient of component u of F w.r.t. argument k, with every reduced-index variable
    replaced by an output-indexed one (the caller gathers its selected rows)."""
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    recast = _recast(r.formula, red_cat, out_cat)
    args = tuple(_recast(a, red_cat, out_cat) for a in r.args)
    comp = recast if recast.dim == 1 else f("Elem", recast, params=(u,))
    gv = r.extra(1)
    fg = sym_grad(comp, args[k], gv)
    if fg.is_zero:
        return None
    return Reduction(fg, "Sum", out_cat, (*args, gv), (*r.names, "gradient"), r.dtype_acc)


def _recast(node: Node, frm: int, to: int) -> Node:
    new: dict[int, Node] = {}
    for n in postorder(node):
        if n.is_var:
            pos, dim, cat = n.params
            new[id(n)] = Node("Var", (), (pos, dim, to if cat == frm else cat), dim)
        else:
            new[id(n)] = Node(n.op, tuple(new[id(a)] for a in n.args), n.params, n.dim)
    return new[id(node)]


def _select_rule(r, k, args, rest, g):
    """Min/Max/KMin: the gradient flows through the selected (i, j) pairs, as torch.min does."""
    red_cat = 1 - r.out_cat
    idx = torch.stack(list(rest[-(r.opt or 1) :]), dim=1).long()  # (n_out, K, D)
    n_out, K, D = idx.shape
    g = g.reshape(n_out, K, D)
    a = args[k]
    total = None
    for kk in range(K):
        for u in range(D):
            spec = _gathered_spec(r, k, u)
            if spec is None:
                continue
            J = idx[:, kk, u]
            valid = J >= 0
            Jc = J.clamp(min=0)
            gathered = [b[Jc] if v.params[2] == red_cat else b for b, v in zip(args, r.args)]
            gu = (g[:, kk, u] * valid).unsqueeze(1).contiguous()
            res = _GenredFn.apply(spec, *gathered, gu)
            if r.args[k].params[2] == red_cat:
                res = torch.zeros(
                    a.shape[0], res.shape[1], dtype=res.dtype, device=res.device
                ).index_add(0, Jc, res)
            total = res if total is None else total + res
    return total


def grad_specs(r: Reduction, k: int) -> list[Reduction]:
    """The reductions the backward of ``r`` w.r.t. argument k evaluates (for export)."""
    specs = {
        "sum": lambda: [r.grad(k)],
        "lse": lambda: [_lse_spec(r, k)],
        "softmax": lambda: list(_softmax_specs(r, k)),
        "select": lambda: [_gathered_spec(r, k, u) for u in range(r.formula.dim)],
    }.get(r.rdef.grad, lambda: [])()
    return [s for s in specs if s is not None]


_RULES: dict[str, Callable] = {
    "sum": _sum_rule,
    "lse": _lse_rule,
    "softmax": _softmax_rule,
    "select": _select_rule,
}


class Genred:
    r"""Generic reduction ``c = Red_{j or i} F(x_i, y_j, p)`` compiled through TVM.

    Parameters
    ----------
    formula : str
        KeOps formula, e.g. ``"Square(p-a)*Exp(x+y)"``.
    aliases : list of str
        Variable declarations, e.g. ``["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"]``.
    reduction_op : str
        ``Sum``, ``Max``, ``Min``, ``ArgMax``, ``ArgMin``, ``Max_ArgMax``, ``Min_ArgMin``,
        ``KMin``, ``ArgKMin``, ``KMin_ArgKMin`` (``opt_arg=K``), ``LogSumExp``,
        ``LogSumExpWeight``, ``SumSoftMaxWeight`` (``formula2`` = the weight),
        ``Max_SumShiftExp``, ``Max_SumShiftExpWeight``.
    axis : int
        1: reduce over j (output indexed by i); 0: reduce over i (output indexed by j).
    opt_arg : int
        K for the K-min reductions.
    formula2 : str
        The weight G of the LogSumExp / SoftMax reductions.
    dtype_acc : str
        ``"auto"`` (the data dtype) or ``"float64"`` / ``"float32"``: accumulator dtype.
    use_double_acc : bool
        Same as ``dtype_acc="float64"``.

    sum_scheme : str
        ``"auto"`` (block summation for float32 accumulators), ``"direct_sum"``,
        ``"block_sum"`` (partial sums of 1024 terms) or ``"kahan_scheme"`` (compensated).

    ``dtype``/``cuda_type`` are deprecated and ignored (as in pykeops); ``enable_chunks``,
    ``rec_multVar_highdim`` and ``use_fast_math`` are accepted for compatibility.

    Calling ``routine(*args, backend="auto", device_id=-1, ranges=None, out=None)`` returns
    pykeops' output(s); values are differentiable to any order w.r.t. every input — including
    Min, Max, KMin and their (value, index) forms, which pykeops cannot differentiate.  Index
    outputs are exact int64 tensors.
    """

    def __init__(
        self,
        formula: str,
        aliases: Sequence[str],
        reduction_op: str = "Sum",
        axis: int = 0,
        dtype: Optional[str] = None,
        opt_arg: Optional[int] = None,
        formula2: Optional[str] = None,
        cuda_type: Optional[str] = None,
        dtype_acc: str = "auto",
        use_double_acc: bool = False,
        sum_scheme: str = "auto",
        enable_chunks: bool = True,
        rec_multVar_highdim: bool = False,
        use_fast_math: bool = True,
    ) -> None:
        if dtype is not None or cuda_type is not None:
            warnings.warn(
                "Genred: 'dtype' and 'cuda_type' are deprecated and ignored; the "
                "dtype is taken from the arguments",
                DeprecationWarning,
                stacklevel=2,
            )
        if use_double_acc:
            dtype_acc = "float64"
        self.formula, self.aliases = formula, list(aliases)
        self.reduction_op, self.axis = reduction_op, axis
        self.reduction = make_reduction(
            formula, aliases, reduction_op, axis, dtype_acc, opt_arg, formula2, sum_scheme
        )

    def __call__(
        self,
        *args: torch.Tensor,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[torch.Tensor] = None,
    ):
        r = self.reduction
        dev, host = placement(args, backend, device_id)
        if host:  # pykeops' "_host" backends: compute on the GPU, return on the CPU
            args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)
        if out is not None:
            with torch.no_grad():
                res = dispatch.call(r, args, lambda *a: run_states(r, a)[0], ranges)
            if isinstance(res, tuple):
                raise ValueError(f"out= is not supported for {self.reduction_op} (two outputs)")
            return copy_into(res.cpu() if host else res, out)
        res = dispatch.call(r, args, lambda *a: _GenredFn.apply(r, *a), ranges)
        if host:
            res = tuple(t.cpu() for t in res) if isinstance(res, tuple) else res.cpu()
        return res

    def __repr__(self) -> str:
        return (
            f"Genred({self.formula!r}, {self.aliases!r}, reduction_op={self.reduction_op!r}, "
            f"axis={self.axis})"
        )


__all__ = ["Genred"]
