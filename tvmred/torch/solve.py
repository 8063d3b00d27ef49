"""``tvmred.torch.KernelSolve``: conjugate gradient on a Sum reduction, differentiable.

With ``a = (alpha Id + K(theta))^-1 b`` and ``K`` symmetric, the backward of an incoming
gradient ``g`` is one more solve, ``k = (alpha Id + K)^-1 g``: the gradient w.r.t. ``b`` is
``k`` and w.r.t. any other argument ``theta`` it is ``-(d/dtheta <k, K(theta) a>)`` -- the
reduction's own gradient plan at ``a`` with incoming gradient ``-k`` (pykeops' rule).  Both
go through differentiable calls, so higher derivatives follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import dispatch, solve
from ..reductions import Chain, Reduction
from .autograd import apply_fn, torch_call


@dataclass(frozen=True)
class _System:
    r: Reduction
    pos: int  # the unknown's position; b is given there
    alpha: float
    eps: float
    kwargs: dict  # backend, device_id, ranges

    def solve(self, args) -> torch.Tensor:
        def linop(v):
            res = torch_call(self.r, [*args[: self.pos], v, *args[self.pos + 1 :]], **self.kwargs)
            return res + self.alpha * v if self.alpha else res

        return solve.conjugate_gradient(linop, args[self.pos], self.eps)

    def vjp(self, k: int, args, g: torch.Tensor) -> torch.Tensor:
        """d/d(argument k) of <g, K(args) a> (``args`` holding a at ``pos``)."""
        plan = self.r.vjp(k)
        if plan is None:
            return torch.zeros_like(args[k])
        assert isinstance(plan, Chain) and len(plan.steps) == 1  # a Sum's plan
        red = plan.steps[0].red
        res = dispatch.each_problem(
            red, [*args, g], lambda *t: apply_fn(red, *t), self.kwargs.get("ranges")
        )
        if self.r.cats[k] == 2:  # a parameter: summed over the output rows
            res = res.sum(-2)
        return res.sum_to_size(args[k].shape)


class _SolveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, system: _System, *args: torch.Tensor):  # type: ignore[override]
        a = system.solve(args)
        ctx.system = system
        ctx.save_for_backward(*args, a)
        return a

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        system: _System = ctx.system
        *args, a = ctx.saved_tensors
        pos = system.pos
        need = ctx.needs_input_grad[1:]
        if not any(need):
            return (None,) * (len(args) + 1)
        k_inv = _SolveFn.apply(system, *args[:pos], g.contiguous(), *args[pos + 1 :])
        with_a = [*args[:pos], a, *args[pos + 1 :]]
        grads: list[Optional[torch.Tensor]] = [None]
        for k, n in enumerate(need):
            if not n:
                grads.append(None)
            elif k == pos:
                grads.append(k_inv)
            else:
                grads.append(system.vjp(k, with_a, -k_inv))
        return tuple(grads)


def kernel_solve(
    r: Reduction,
    pos: int,
    args,
    backend: str = "auto",
    device_id: int = -1,
    alpha: float = 1e-10,
    eps: float = 1e-6,
    ranges: Any = None,
) -> torch.Tensor:
    """``a`` solving ``(alpha Id + K) a = b``, b given in position ``pos`` of ``args``."""
    solve.check_unknown(r, pos)
    kw = {"backend": backend, "device_id": device_id, "ranges": ranges}
    return _SolveFn.apply(_System(r, pos, float(alpha), float(eps), kw), *args)


class KernelSolve(solve.KernelSolve):
    __doc__ = solve.KernelSolve.__doc__
    solve = staticmethod(kernel_solve)
