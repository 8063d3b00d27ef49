"""pykeops-compatible ``Genred``: argument checking, sizes, padding and the kernel call.

This module holds what the torch and numpy bindings share.  A :class:`Reduction` is the
immutable description of one reduction (formula tree, reduction, output category, argument
names); its gradient reductions are derived from it symbolically (:meth:`Reduction.grad`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .build import DTYPES, get_kernel
from .diff import grad as sym_grad
from .parse import parse, parse_aliases
from .reductions import REDUCTIONS
from .tree import Node, var

CAT_LABEL = {0: "Vi", 1: "Vj", 2: "Pm"}
_TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


@dataclass(frozen=True, eq=False)
class Reduction:
    formula: Node
    red: str
    out_cat: int  # 0: output indexed by i (axis=1), 1: by j (axis=0)
    args: tuple[Node, ...]  # declared variable per position
    names: tuple[str, ...]  # for error messages
    dtype_acc: str = "auto"

    @property
    def nargs(self) -> int:
        return len(self.args)

    def describe(self, k: int) -> str:
        pos, dim, cat = self.args[k].params
        return f"'{self.names[k]}' (argument {k}, declared {CAT_LABEL[cat]}({dim}))"

    @functools.cache
    def grad(self, k: int) -> Optional["Reduction"]:
        """The reduction giving d(self)/d(arg k) contracted with an incoming gradient, which
        becomes argument ``nargs``; None when the gradient is identically zero."""
        v = self.args[k]
        g = var(self.nargs, self.formula.dim, self.out_cat)
        fg = sym_grad(self.formula, v, g)
        if fg.is_zero:
            return None
        cat = v.params[2]
        out_cat = cat if cat in (0, 1) else self.out_cat
        return Reduction(fg, "Sum", out_cat, (*self.args, g), (*self.names, "gradient"),
                         self.dtype_acc)  # fmt: skip


def make_reduction(
    formula: str, aliases: Sequence[str], reduction_op: str, axis: int, dtype_acc: str
) -> Reduction:
    decls = parse_aliases(list(aliases))
    by_pos = {a.var.params[0]: a for a in decls}
    nargs = max(by_pos) + 1 if by_pos else 0
    missing = [p for p in range(nargs) if p not in by_pos]
    if missing:
        raise ValueError(f"aliases declare positions up to {nargs - 1} but not {missing}")
    tree = parse(formula, decls)
    for v in _vars(tree):
        pos = v.params[0]
        if pos >= nargs or by_pos[pos].var is not v:
            raise ValueError(f"formula uses {v}, which is not among the declared aliases")
    if reduction_op not in REDUCTIONS:
        raise NotImplementedError(
            f"reduction_op={reduction_op!r} is not supported (available: {sorted(REDUCTIONS)})"
        )
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (reduce over i) or 1 (reduce over j), got {axis}")
    if dtype_acc not in ("auto", *DTYPES):
        raise ValueError(f"dtype_acc must be 'auto', 'float32' or 'float64', got {dtype_acc!r}")
    names = tuple(by_pos[p].name or f"arg{p}" for p in range(nargs))
    args = tuple(by_pos[p].var for p in range(nargs))
    return Reduction(tree, reduction_op, 1 - axis, args, names, dtype_acc)


def _vars(tree: Node) -> list[Node]:
    from .tree import variables

    return variables(tree)


def check_args(r: Reduction, args: Sequence[torch.Tensor]) -> tuple[str, int, int]:
    """Validate the call's tensors; return (dtype, n_out, n_red).  Raises before compiling."""
    if len(args) != r.nargs:
        raise ValueError(
            f"this Genred takes {r.nargs} arguments ({', '.join(r.names)}), got {len(args)}"
        )
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"argument {r.describe(k)} must be a tensor, got {type(a).__name__}")
    dtypes = {a.dtype for a in args}
    for k, a in enumerate(args):
        if a.dtype not in _TORCH_DTYPES:
            raise TypeError(f"argument {r.describe(k)} has dtype {a.dtype}; "
                            "tvmred supports float32 and float64")  # fmt: skip
    if len(dtypes) > 1:
        detail = ", ".join(f"{r.names[k]}: {a.dtype}" for k, a in enumerate(args))
        raise TypeError(f"all arguments must have the same dtype, got {detail}")
    devices = {a.device for a in args}
    if len(devices) > 1:
        detail = ", ".join(f"{r.names[k]}: {a.device}" for k, a in enumerate(args))
        raise ValueError(f"all arguments must be on the same device, got {detail}")
    sizes: dict[int, tuple[int, int]] = {}  # cat -> (size, arg index)
    for k, (a, v) in enumerate(zip(args, r.args)):
        pos, dim, cat = v.params
        want = "(dim,)" if cat == 2 else "(rows, dim)"
        if cat == 2:
            ok = (a.dim() == 1 and a.shape[0] == dim) or (a.dim() == 0 and dim == 1)
        else:
            if a.dim() > 2:
                raise NotImplementedError(
                    f"argument {r.describe(k)} has shape {tuple(a.shape)}: batch dimensions "
                    "are not supported yet"
                )
            ok = a.dim() == 2 and a.shape[1] == dim
        if not ok:
            raise ValueError(f"argument {r.describe(k)} has shape {tuple(a.shape)}; expected "
                             f"{want} with dim = {dim}")  # fmt: skip
        if cat != 2:
            if cat in sizes and sizes[cat][0] != a.shape[0]:
                other = sizes[cat][1]
                label = "M" if cat == 0 else "N"
                raise ValueError(
                    f"inconsistent {label}: argument {r.describe(other)} has {sizes[cat][0]} "
                    f"rows but {r.describe(k)} has {a.shape[0]}"
                )
            sizes[cat] = (a.shape[0], k)
    n_out = sizes.get(r.out_cat, (1, -1))[0]
    n_red = sizes.get(1 - r.out_cat, (1, -1))[0]
    return _TORCH_DTYPES[args[0].dtype], n_out, n_red


def run(r: Reduction, args: Sequence[torch.Tensor], out: Optional[torch.Tensor] = None):
    """Evaluate the reduction (no autograd): a ``(n_out, dim)`` tensor."""
    dtype, n_out, n_red = check_args(r, args)
    dev = args[0].device if args else torch.device("cpu")
    tdtype = args[0].dtype if args else torch.float32
    if r.formula.is_zero:
        res = torch.zeros(n_out, r.formula.dim, dtype=tdtype, device=dev)
        return _into(res, out)
    acc = dtype if r.dtype_acc == "auto" else r.dtype_acc
    k = get_kernel(r.formula, r.red, r.out_cat, dtype, acc, dev.type)
    rb = k.row_block
    mb = -(-n_out // rb)
    rows = mb * rb
    call_args = []
    for v in k.inputs:
        a = args[v.params[0]]
        cat = v.params[2]
        if cat == 2:
            a = a.reshape(-1)
        elif cat == r.out_cat and rows != n_out:
            padded = torch.zeros(rows, a.shape[1], dtype=a.dtype, device=dev)
            padded[:n_out] = a
            a = padded
        call_args.append(a.contiguous())
    res = torch.empty(rows, r.formula.dim, dtype=getattr(torch, acc), device=dev)
    k.fn(*call_args, res, mb, n_red)
    res = res[:n_out]
    if acc != dtype:
        res = res.to(tdtype)
    return _into(res, out)


def _into(res: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return res
    if out.shape != res.shape or out.dtype != res.dtype or out.device != res.device:
        raise ValueError(f"out must be a {res.dtype} tensor of shape {tuple(res.shape)} on "
                         f"{res.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")  # fmt: skip
    with torch.no_grad():
        out.copy_(res)
    return out


def check_call_options(backend: str, device_id: int, ranges: object) -> None:
    if backend not in ("auto", "CPU", "GPU", "GPU_1D", "GPU_2D", "GPU_1D_device",
                       "GPU_2D_device", "GPU_1D_host", "GPU_2D_host"):  # fmt: skip
        raise ValueError(f"unknown backend {backend!r}")
    if backend.startswith("GPU"):
        raise NotImplementedError(f"backend={backend!r}: this version of tvmred runs on CPU only")
    if ranges is not None:
        raise NotImplementedError("block-sparse ranges are not supported yet")
