"""Autograd for one plain reduction, and the call path every torch entry point shares.

``backward`` evaluates the reduction's gradient plans and ``jvp`` its forward-mode plans
(:mod:`tvmred.torch.plans`), both through these Functions again, so derivatives of any order
work in eager mode and under ``torch.func`` (``grad``, ``vjp``, ``jacrev``, ``jvp``,
``jacfwd``, ``hessian``, ``vmap``).  Two ``torch.autograd.Function`` classes share them:
``_GenredFn`` runs the kernel directly (eager, no transform active); ``_GenredFuncFn``, in the
functorch-compatible form (``setup_context``, ``generate_vmap_rule``), calls the
``tvmred::reduce`` custom op, which carries the vmap rule.  Under ``torch.compile`` the custom
op is called directly (its registered autograd gives the backward).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.autograd.forward_ad as fwAD

from .. import dispatch, ranged
from ..genred import copy_into, placement
from ..reductions import Reduction
from . import plans
from .library import Signature, key_of, outputs, reduce_op


def _setup(ctx, r: Reduction, args, output) -> None:
    ctx.mark_non_differentiable(*[o for o in output if not o.is_floating_point()])
    ctx.r, ctx.nargs = r, len(args)
    ctx.save_for_backward(*args, *output)
    ctx.save_for_forward(*args, *output)


def _backward(ctx, *grads: Optional[torch.Tensor]):
    args, outs, sel = _saved(ctx)
    needed = ctx.needs_input_grad[1:]
    return (None, *plans.gradients(ctx.r, args, outs, sel, grads[0], needed, apply_fn))


def _jvp(ctx, *tangents: Optional[torch.Tensor]):
    args, outs, sel = _saved(ctx)
    res = plans.jvp(ctx.r, tangents[1:], args, outs, sel, apply_fn)
    return tuple(res) + (None,) * len(sel)


class _GenredFn(torch.autograd.Function):
    """Eager mode (no functorch transform active): the old-style Function, whose ``apply``
    does not bind the arguments to a signature (tens of microseconds per call)."""

    @staticmethod
    def forward(ctx, r: Reduction, *args: torch.Tensor):  # type: ignore[override]
        out = tuple(outputs(r, args))
        _setup(ctx, r, args, out)
        return out

    backward = staticmethod(_backward)  # type: ignore[assignment]
    jvp = staticmethod(_jvp)  # type: ignore[assignment]


class _GenredFuncFn(torch.autograd.Function):
    """Under torch.func transforms: ``setup_context``, and the custom op (its vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r: Reduction, *args: torch.Tensor):  # type: ignore[override]
        return tuple(reduce_op(key_of(r), list(args)))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _setup(ctx, inputs[0], inputs[1:], output)

    backward = staticmethod(_backward)  # type: ignore[assignment]
    jvp = staticmethod(_jvp)  # type: ignore[assignment]


class _RangedFn(torch.autograd.Function):
    """A reduction with pykeops' ``ranges`` in one launch (:mod:`tvmred.ranged`); its
    derivatives are ranged reductions again (the gradient w.r.t. a reduced-index argument
    takes the transposed ranges of the 6-tuple, as in pykeops), so any order works."""

    @staticmethod
    def forward(ctx, r: Reduction, ranges: Any, *args: torch.Tensor):  # type: ignore[override]
        out = tuple(ranged.run(r, args, ranges))
        ctx.mark_non_differentiable(*[o for o in out if not o.is_floating_point()])
        ctx.r, ctx.nargs, ctx.ranges = r, len(args), ranges
        ctx.save_for_backward(*args, *out)
        ctx.save_for_forward(*args, *out)
        return out

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):  # type: ignore[override]
        args, outs, sel = _saved(ctx)
        needed = ctx.needs_input_grad[2:]
        step = _ranged_step(ctx.ranges)
        return (
            None,
            None,
            *plans.gradients(ctx.r, args, outs, sel, grads[0], needed, step, apply_fn),
        )

    @staticmethod
    def jvp(ctx, *tangents: Optional[torch.Tensor]):  # type: ignore[override]
        args, outs, sel = _saved(ctx)
        res = plans.jvp(ctx.r, tangents[2:], args, outs, sel, _ranged_step(ctx.ranges), apply_fn)
        return tuple(res) + (None,) * len(sel)


def _ranged_step(ranges: Any):
    return lambda r, *args: _RangedFn.apply(r, ranges, *args)[0]


def _ranged_apply(r: Reduction, args, ranges) -> Any:
    outs = _RangedFn.apply(r, ranges, *args)
    n = len(outs) - int(r.rdef.index_states is not None)
    return outs[0] if n == 1 else tuple(outs[:n])


def _function(r: Reduction, *args: torch.Tensor) -> tuple:
    if torch._C._are_functorch_transforms_active():
        return _GenredFuncFn.apply(r, *args)
    if not _recorded(args):  # nothing for autograd to record: the kernel alone (~10 us less)
        return tuple(outputs(r, args))
    return _GenredFn.apply(r, *args)


def _recorded(args) -> bool:
    """Whether autograd would record a Function on ``args``: an argument that requires grad
    with grad mode on, or forward-mode AD active (its dual tensors do not require grad)."""
    if fwAD._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(getattr(a, "requires_grad", False) for a in args)


def _saved(ctx) -> tuple:
    return plans.saved(ctx.r, ctx.saved_tensors, ctx.nargs)


def apply(r: Union[Reduction, Signature], *args: torch.Tensor) -> Any:
    """pykeops' output(s) of one plain reduction, differentiable."""
    if isinstance(r, Signature):  # torch.compile, from a LazyTensor
        outs, nsel = reduce_op(r.key, list(args)), r.nsel
    else:
        nsel = int(r.rdef.index_states is not None)
        outs = (
            reduce_op(key_of(r), list(args))
            if torch.compiler.is_compiling()
            else _function(r, *args)
        )
    n = len(outs) - nsel
    return outs[0] if n == 1 else tuple(outs[:n])


def apply_fn(r: Reduction, *args: torch.Tensor) -> torch.Tensor:
    """The first output (what a gradient step computes)."""
    return _function(r, *args)[0]


def torch_call(
    r: Union[Reduction, Signature],
    args,
    backend: str = "auto",
    device_id: int = -1,
    ranges: Any = None,
    out: Optional[torch.Tensor] = None,
) -> Any:
    """A reduction call as ``Genred.__call__`` makes it: device placement (pykeops'
    backends), batch dimensions and ranges, ``out=``."""
    # "auto" with no device_id computes where the tensors are (check_args names mixed devices)
    host = backend != "auto" or device_id >= 0
    if host:
        dev, host = placement(args, backend, device_id)
    if host:  # pykeops' "_host" backends: compute on the GPU, return on the CPU
        args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)
    # ranges in one launch: eager mode with a Reduction (torch.func / torch.compile: cluster
    # by cluster, through the custom op)
    one = None
    if isinstance(r, Reduction) and not torch._C._are_functorch_transforms_active():
        if not torch.compiler.is_compiling():
            one = lambda a, rg: _ranged_apply(r, a, rg)  # noqa: E731
    if out is not None:
        with torch.no_grad():
            res = dispatch.each_problem(r, args, lambda *a: apply(r, *a), ranges, one)
        if isinstance(res, tuple):
            raise ValueError("out= is not supported for a reduction with two outputs")
        return copy_into(res.cpu() if host else res, out)
    res = dispatch.each_problem(r, args, lambda *a: apply(r, *a), ranges, one)
    if host:
        res = tuple(t.cpu() for t in res) if isinstance(res, tuple) else res.cpu()
    return res
