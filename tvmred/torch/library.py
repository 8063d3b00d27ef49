"""The kernel call as a ``torch.library`` custom op, ``tvmred::reduce(key, args)``, so that
``torch.compile`` traces through a reduction without a graph break and ``torch.func``
transforms see an operator they know.

* ``key`` names a :class:`~tvmred.reductions.Reduction` in a process-level registry; it is
  the reduction's serialisation, so a process that loads a compiled graph from torch's
  caches rebuilds the reductions it has not traced itself;
* the outputs are pykeops' output(s) of one plain ``(M, N)`` reduction, followed, for the
  Min/Max/KMin family, by the selected positions ``(n, K, D)`` (int64) that their gradient
  needs; batch dimensions and ``ranges`` are handled around the op (:mod:`tvmred.dispatch`);
* the fake (meta) implementation allocates the kernel's state buffers as fake tensors and
  runs the reduction's own ``finalize`` on them, so output shapes and dtypes come from the
  same rule as the real outputs;
* vmap: one call per batch index; autograd (used under ``torch.compile``): the reduction's
  gradient plans, through the op again.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import NamedTuple

import torch

from ..launch import run_states
from ..ops import REGISTRY as REGISTRY_OPS
from ..reductions import REDUCTIONS, Reduction
from ..tree import Node, postorder
from . import plans

TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}  # fmt: skip
REGISTRY: dict[str, Reduction] = {}


def key_of(r: Reduction) -> str:
    """The registry key of ``r`` (registering it on first use; memoised on ``r``): its
    serialisation, so that any process can rebuild the reduction from a key found in a
    cached compiled graph."""
    key = r.memo.get("key")
    if key is None:
        key = base64.b64encode(zlib.compress(json.dumps(_flat(r)).encode(), 9)).decode()
        REGISTRY.setdefault(key, r)
        r.memo["key"] = key
    return key


# torch.compile runs key_of, never traces it: the mark torch.compiler.assume_constant_result
# sets, set here without that function's import of torch._dynamo (two seconds at start-up)
key_of._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _flat(r: Reduction) -> tuple:
    """``r`` with its formula nodes as one postorder table (op, argument rows, params, dim):
    no recursion, whatever the formula's depth."""
    rows: dict[int, int] = {}
    table: list[tuple] = []
    roots = [r.formula, *r.args, r.main, r.weight]
    for root in roots:
        for n in postorder(root) if root is not None else ():
            if id(n) not in rows:
                rows[id(n)] = len(table)
                table.append((n.op, tuple(rows[id(a)] for a in n.args), n.params, n.dim))
    refs = [-1 if n is None else rows[id(n)] for n in roots]
    return table, refs, (r.red, r.out_cat, r.names, r.dtype_acc, r.k, r.sum_scheme)


def _unflat(flat: list) -> Reduction:
    """The reduction of a decoded key (JSON: plain data, nothing executed)."""
    table, refs, (red, out_cat, names, dtype_acc, k, sum_scheme) = flat
    nodes: list[Node] = []
    for op, args, params, dim in table:
        if op not in REGISTRY_OPS:
            raise ValueError(f"unknown operation {op!r}")
        nodes.append(Node(op, tuple(nodes[i] for i in args), tuple(params), dim))
    formula, *args, main, weight = (None if i < 0 else nodes[i] for i in refs)
    if red not in REDUCTIONS:
        raise ValueError(f"unknown reduction {red!r}")
    return Reduction(
        formula, red, out_cat, tuple(args), tuple(names), dtype_acc, k, main, weight, sum_scheme
    )


class Signature(NamedTuple):
    """What the call path needs of a reduction under ``torch.compile`` when the
    :class:`Reduction` object is out of the traced code's reach: plain constants."""

    key: str
    nargs: int
    cats: tuple
    out_cat: int
    names: tuple
    nsel: int  # 1 when the op's last output is the selected positions


def signature(r: Reduction) -> Signature:
    nsel = int(r.rdef.index_states is not None)
    return Signature(key_of(r), r.nargs, r.cats, r.out_cat, r.names, nsel)


def lookup(key: str) -> Reduction:
    r = REGISTRY.get(key)
    if r is None:  # a key from a compiled graph that this process has not traced
        try:
            r = _unflat(json.loads(zlib.decompress(base64.b64decode(key))))
        except Exception as e:
            raise KeyError(f"tvmred::reduce: {key[:40]!r}... is not a reduction key") from e
        r.memo["key"] = key
        REGISTRY[key] = r
    return r


def outputs(r: Reduction, args) -> list[torch.Tensor]:
    """Run the kernel: pykeops' output(s), then the selected positions if any."""
    out, state = run_states(r, args)
    outs = list(out) if isinstance(out, tuple) else [out]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return outs


@torch.library.custom_op("tvmred::reduce", mutates_args=())
def reduce_op(key: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
    return outputs(lookup(key), args)


@reduce_op.register_fake
def _(key: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
    r = lookup(key)
    dtype = TORCH_DTYPES[args[0].dtype]
    n_out = next((a.shape[0] for a, v in zip(args, r.args) if v.params[2] == r.out_cat), 1)
    acc, variant = r.resolve(dtype)
    state = [
        args[0].new_empty((n_out, cols), dtype=getattr(torch, dt))
        for cols, dt in r.rdef.state(r.formula.dim, variant, dtype, acc)
    ]
    out = r.rdef.finalize(state, variant, dtype)
    outs = [o.contiguous() for o in (out if isinstance(out, tuple) else (out,))]
    if r.rdef.index_states is not None:
        outs.append(r.rdef.selected(state, r.k))
    return outs


def _vmap(info, in_dims, key: str, args: list[torch.Tensor]):
    """One reduction per batch index, stacked along a new leading dimension."""
    dims = in_dims[1]
    per_batch = []
    for b in range(info.batch_size):
        sub = [a if d is None else a.select(d, b) for a, d in zip(args, dims)]
        per_batch.append(reduce_op(key, sub))
    outs = [torch.stack(o) for o in zip(*per_batch)]
    return outs, [0] * len(outs)


torch.library.register_vmap("tvmred::reduce", _vmap)


def apply_op(red: Reduction, *args: torch.Tensor) -> torch.Tensor:
    return reduce_op(key_of(red), list(args))[0]


def _setup(ctx, inputs, output) -> None:
    key, args = inputs
    ctx.key, ctx.nargs = key, len(args)
    ctx.save_for_backward(*args, *output)


def _backward(ctx, grads):
    r = lookup(ctx.key)
    args, outs, sel = plans.saved(r, ctx.saved_tensors, ctx.nargs)
    needed = [r.rdef.vjp is not None] * len(args)
    return None, plans.gradients(r, args, outs, sel, grads[0], needed, apply_op)


torch.library.register_autograd("tvmred::reduce", _backward, setup_context=_setup)
