"""PyTorch binding: ``from tvmred.torch import Genred`` (drop-in for ``pykeops.torch.Genred``)."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from ..genred import Reduction, check_call_options, make_reduction, run


class _GenredFn(torch.autograd.Function):
    """Forward: the compiled reduction.  Backward: for each input that needs a gradient, the
    symbolic gradient reduction (itself a ``_GenredFn``, so higher orders work)."""

    @staticmethod
    def forward(ctx, r: Reduction, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.r = r
        ctx.save_for_backward(*args)
        return run(r, args)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        r: Reduction = ctx.r
        args = ctx.saved_tensors
        grads: list[Optional[torch.Tensor]] = [None]
        for k, a in enumerate(args):
            if not ctx.needs_input_grad[k + 1]:
                grads.append(None)
                continue
            gr = r.grad(k)
            if gr is None:
                grads.append(torch.zeros_like(a))
                continue
            res = _GenredFn.apply(gr, *args, g.contiguous())
            if r.args[k].params[2] == 2:  # parameter: also summed over the output index
                res = res.sum(0).reshape(a.shape)
            grads.append(res)
        return tuple(grads)


class Genred:
    r"""Generic reduction ``c = Red_{j or i} F(x_i, y_j, p)`` compiled through TVM.

    Parameters
    ----------
    formula : str
        KeOps formula, e.g. ``"Square(p-a)*Exp(x+y)"``.
    aliases : list of str
        Variable declarations, e.g. ``["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"]``.
    reduction_op : str
        ``"Sum"``.
    axis : int
        1: reduce over j (output indexed by i); 0: reduce over i (output indexed by j).
    dtype_acc : str
        ``"auto"`` (the data dtype) or ``"float64"`` / ``"float32"``: accumulator dtype.
    use_double_acc : bool
        Same as ``dtype_acc="float64"``.

    ``dtype``/``cuda_type`` are deprecated and ignored (as in pykeops); ``opt_arg``,
    ``formula2``, ``sum_scheme``, ``enable_chunks``, ``rec_multVar_highdim`` and
    ``use_fast_math`` are accepted for compatibility.

    Calling ``routine(*args, backend="auto", device_id=-1, ranges=None, out=None)`` returns
    a ``(M or N, dim F)`` tensor, differentiable (to any order) w.r.t. every input.
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
            warnings.warn("Genred: 'dtype' and 'cuda_type' are deprecated and ignored; the "
                          "dtype is taken from the arguments", DeprecationWarning, stacklevel=2)  # fmt: skip
        if use_double_acc:
            dtype_acc = "float64"
        if formula2 is not None or opt_arg is not None:
            raise NotImplementedError(
                f"reduction_op={reduction_op!r} with formula2/opt_arg is not supported yet"
            )
        if sum_scheme not in ("auto", "direct_sum", "block_sum", "kahan_scheme"):
            raise ValueError(f"unknown sum_scheme {sum_scheme!r}")
        self.formula, self.aliases = formula, list(aliases)
        self.reduction_op, self.axis = reduction_op, axis
        self.reduction = make_reduction(formula, aliases, reduction_op, axis, dtype_acc)

    def __call__(
        self,
        *args: torch.Tensor,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        check_call_options(backend, device_id, ranges)
        if out is not None:
            with torch.no_grad():
                return run(self.reduction, args, out=out)
        return _GenredFn.apply(self.reduction, *args)

    def __repr__(self) -> str:
        return (f"Genred({self.formula!r}, {self.aliases!r}, reduction_op={self.reduction_op!r}, "
                f"axis={self.axis})")  # fmt: skip


__all__ = ["Genred"]
