"""The launch: a :class:`~tvmred.reductions.Reduction` and arrays (torch tensors or numpy
arrays: :mod:`tvmred.arrays`) -> its outputs.
Checks the tensors, picks the kernel (one, several over slices of a wide state, or the
split-j kernel when the row blocks would leave cores idle), pads and aligns the inputs,
allocates the state buffers, calls the kernel and finalizes the states."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from . import build, cabi, hoist, locality, normguard, schedules
from .arrays import ALIGN, Numpy, compute_dtype, is_array, xp
from .build import DTYPES, get_kernel
from .errors import KernelNotExported
from .ops import nonpositive_exps
from .reductions import Reduction
from .tree import variables

_ARRAY_CLASSES: set = set()  # classes is_array accepted


def check_args(r: Reduction, args: Sequence[Any], batch: bool = False) -> tuple[str, int, int]:
    """Validate the call's tensors; return (dtype, n_out, n_red).  Raises before compiling.
    With ``batch``, arguments may have leading batch dimensions (checked by the caller).
    The answer depends only on each argument's class, dtype, shape and device: it is
    memoised on ``r`` by them (up to CHECKS signatures), saving ~4 us a call."""
    checked = r.memo.get("checked")
    if checked is None:
        checked = r.memo["checked"] = {}
    try:
        key = (batch, *[(a.__class__, a.dtype, a.shape, xp(a).device(a)) for a in args])
        hit = checked.get(key)
    except (AttributeError, TypeError):  # not arrays, or unhashable: the check names it
        return _check_args(r, args, batch)
    if hit is None:
        hit = _check_args(r, args, batch)
        if len(checked) >= CHECKS:  # (dict operations: safe from several threads)
            checked.clear()
        checked[key] = hit
    return hit


CHECKS = 16  # call signatures whose check a reduction remembers (then it starts again)


def _check_args(r: Reduction, args: Sequence[Any], batch: bool) -> tuple[str, int, int]:
    if len(args) != r.nargs:
        raise ValueError(
            f"this Genred takes {r.nargs} arguments ({', '.join(r.names)}), got {len(args)}"
        )
    for k, a in enumerate(args):
        if a.__class__ not in _ARRAY_CLASSES:
            if not is_array(a):
                raise TypeError(
                    f"argument {r.describe(k)} must be a tensor, got {type(a).__name__}"
                )
            _ARRAY_CLASSES.add(a.__class__)
    names = _dtype_names(args)
    for k, a in enumerate(args):
        if names[k] not in DTYPES:
            raise TypeError(
                f"argument {r.describe(k)} has dtype {a.dtype}; tvmred supports {', '.join(DTYPES)}"
            )
    if len(set(names)) > 1:
        detail = ", ".join(f"{r.names[k]}: {a.dtype}" for k, a in enumerate(args))
        raise TypeError(f"all arguments must have the same dtype, got {detail}")
    devs = [xp(a).device(a) for a in args]
    if len(set(devs)) > 1 and len(set(map(str, devs))) > 1:
        detail = ", ".join(f"{r.names[k]}: {d}" for k, d in enumerate(devs))
        raise ValueError(f"all arguments must be on the same device, got {detail}")
    sizes: dict[int, tuple[int, int]] = {}  # cat -> (size, arg index)
    lead = "..., " if batch else ""
    for k, (a, v) in enumerate(zip(args, r.args)):
        pos, dim, cat = v.params
        core = 1 if cat == 2 else 2
        if cat == 2:
            ok = (len(a.shape) >= 1 and a.shape[-1] == dim) or (len(a.shape) == 0 and dim == 1)
        else:
            ok = len(a.shape) >= 2 and a.shape[-1] == dim
        if not ok or (not batch and len(a.shape) > core):
            want = f"({lead}dim,)" if cat == 2 else f"({lead}rows, dim)"
            raise ValueError(
                f"argument {r.describe(k)} has shape {tuple(a.shape)}; expected "
                f"{want} with dim = {dim}"
            )
        if cat != 2:
            if cat in sizes and sizes[cat][0] != a.shape[-2]:
                other = sizes[cat][1]
                label = "M" if cat == 0 else "N"
                raise ValueError(
                    f"inconsistent {label}: argument {r.describe(other)} has {sizes[cat][0]} "
                    f"rows but {r.describe(k)} has {a.shape[-2]}"
                )
            sizes[cat] = (a.shape[-2], k)
    n_out = sizes.get(r.out_cat, (1, -1))[0]
    n_red = sizes.get(1 - r.out_cat, (1, -1))[0]
    if args:
        return names[0], n_out, n_red
    import torch  # no arguments at all: torch's default dtype, as pykeops

    return str(torch.get_default_dtype()).rpartition(".")[2], n_out, n_red


def _dtype_names(args: Sequence[Any]) -> list[str]:
    """The arguments' dtype names (one lookup when they share a dtype object, the usual case)."""
    if args and len({a.dtype for a in args}) == 1:
        return [xp(args[0]).dtype_name(args[0])] * len(args)
    return [xp(a).dtype_name(a) for a in args]


def device_of(args: Sequence[Any]) -> Any:
    """Where the call computes: its arrays' device (torch's default device without any)."""
    if args:
        return xp(args[0]).device(args[0])
    import torch

    return torch.get_default_device()


def run(r: Reduction, args: Sequence[Any]):
    """Evaluate the reduction (no autograd): pykeops' output(s) for these arguments."""
    return run_states(r, args)[0]


def run_states(r: Reduction, args: Sequence[Any]):
    """(pykeops' output(s), the kernel's raw state buffers)."""
    dtype, n_out, n_red = check_args(r, args)
    dev = device_of(args)
    h = hoist.plan(r, dtype)
    if hoist.pays(h, n_out, n_red, dev.type):  # one-index sub-formulas once per row, then pairs
        try:
            return run_states(h.main, [*args, *(run(s, [args[k] for k in ks]) for s, ks in h.subs)])
        except KernelNotExported:  # an exported library without them: the pair kernel alone
            r.memo["hoist", dtype] = None
    if r.red == "Sum" and r.formula.is_zero:
        like = _like(args, dev)
        zero = xp(like).zeros((n_out, r.formula.dim), dtype, like)
        return zero, [zero]
    perm = curve_order(r, args, dev, n_out, n_red)
    if perm is not None:  # rows near each other in the same blocks; the outputs put back
        x = xp(args[0])
        args = [
            x.take_rows(a, perm) if v.params[2] == r.out_cat else a for a, v in zip(args, r.args)
        ]
    chunks = column_chunks(r, dtype, dev.type)
    parts = [call_kernel(part, args, dtype, dev, n_out, n_red) for part in chunks]
    state = parts[0] if len(parts) == 1 else r.rdef.join_states(parts)
    if perm is not None:
        state = locality.unpermuted(state, locality.inverse(perm), x)
    variant = r.resolve(dtype)[1]
    return r.rdef.finalize(state, variant, dtype), state


def curve_order(r: Reduction, args: Sequence[Any], dev: Any, n_out: int, n_red: int):
    """The order of the output rows along a space-filling curve where the device's template
    asks for one (:mod:`tvmred.locality`), else None."""
    hit = r.memo.get("curve")
    if hit is None:  # the output-indexed arguments, their values per row
        pos = [k for k, v in enumerate(r.args) if v.params[2] == r.out_cat]
        hit = r.memo["curve"] = (pos, sum(r.args[k].params[1] for k in pos))
    pos, dims = hit
    if not pos or not schedules.for_device(dev.type).local_rows(r.red, dims, n_out, n_red):
        return None
    return locality.curve_order([xp(args[k]).host(args[k]) for k in pos])


def _like(args: Sequence[Any], dev: Any) -> Any:
    """An array on ``dev`` of the call's library (for allocations)."""
    if args:
        return args[0]
    import torch

    return torch.empty(0, device=dev)


def call_kernel(r: Reduction, args, dtype: str, dev: Any, n_out: int, n_red: int) -> list:
    """The state buffers of ``r`` on these arguments: one kernel call, or -- when the row
    blocks would leave the device's cores idle (the target's ``chunks`` rule) -- the split-j
    kernel's partial states of S chunks of the reduced index, merged by the reduction's
    ``combine``.  A tiled kernel takes the chunks itself (its signature is split-j's)."""
    nonneg = nonneg_params(r, args, dev)
    guard = normguard.candidate(r, dtype, dev, n_red, lambda s: build.row_block_of(s, dev), n_out)
    k, variant = kernel_of(r, dtype, dev, nonneg=nonneg, guard=guard)
    norms = normguard.guard_norms(r, args, dtype, dev, k.row_block, n_red, guard) if guard else None
    if guard and (norms is None or len(norms) == 2 and guard == "int16"):  # no guard, or float's
        k, variant = kernel_of(r, dtype, dev, nonneg=nonneg, guard=norms is not None)
    mb = -(-n_out // k.row_block)
    chunks = schedules.for_device(dev.type).chunks(mb, n_red, dev) if mb else 1
    if chunks > 1 and not k.tile:
        try:  # rows for half a block or less: narrower blocks waste less
            narrow = n_out * 2 <= k.row_block
            k, variant = kernel_of(r, dtype, dev, split=True, narrow=narrow, nonneg=nonneg)
            norms = None  # split-j kernels have no guard
        except LookupError:  # an exported library without the split kernel
            chunks = 1
    if norms is not None and any(v.params[0] == r.nargs for v in k.inputs):
        args = [*args, *norms]  # the guarded kernel: norms and points after the arguments
    state = launch(r, k, args, n_out, n_red, chunks, dev)
    if chunks > 1:
        return r.rdef.combine([s[:, :n_out] for s in state], variant)
    if k.tile:
        return [s[0, :n_out] for s in state]
    return [s[:n_out] for s in state]


def nonneg_params(r: Reduction, args: Sequence[Any], dev: Any) -> tuple:
    """The positions of the parameters whose values are all +0 or more in this call, where
    knowing it lets an Exp be computed as e^-y (``Exp(-g*SqDist(x,y))``: ops.signs), else
    (). CPU arrays only: on a GPU, reading the values would wait for the device."""
    hit = r.memo.get("nonneg")
    if hit is None:  # the parameters, if assuming them all >= +0 changes an Exp at all
        pms = frozenset(v.params[0] for v in variables(r.formula) if v.params[2] == 2)
        base = nonpositive_exps(r.formula)
        cands = tuple(sorted(pms)) if pms and nonpositive_exps(r.formula, pms) != base else ()
        hit = r.memo["nonneg"] = (cands, base)
    cands, base = hit
    if not cands or dev.type != "cpu":
        return ()
    found = tuple(p for p in cands if _nonneg(args[p]))
    key = ("nonneg", found)
    if key not in r.memo:  # only those that change an Exp (e.g. both of -g*h*SqDist(x,y))
        r.memo[key] = found if nonpositive_exps(r.formula, frozenset(found)) != base else ()
    return r.memo[key]


def _nonneg(a: Any) -> bool:
    """Every value of CPU array ``a`` is +0 or more (no NaN, no -0)."""
    np, h = Numpy.lib(), xp(a).host(a)
    return bool(np.all(h >= 0)) and not np.signbit(h).any()


def launch(
    r: Reduction, k: Any, args, n_out: int, n_red: int, chunks: int = 1, dev: Any = None
) -> list:
    """Run kernel ``k`` (``chunks`` > 1: a split-j or tiled kernel) on fresh state buffers:
    ``(rows, cols)`` each, or ``(chunks, rows, cols)`` for a split-j kernel with chunks > 1
    and for every tiled kernel; rows padded to whole row blocks."""
    call_args, state, sizes = kernel_args(r, k, args, n_out, n_red, chunks, dev)
    if sizes[0]:  # no output rows: no launch (a CUDA grid of 0 blocks is an error)
        invoke(k.fn, state[0], *call_args, *state, *sizes)
    return state


def invoke(fn: Any, like: Any, *args: Any) -> None:
    """``fn(*args)``; for arrays on a CUDA device (``like``), launched on the array
    library's current stream there (torch's ``current_stream``: ordered with the caller's
    work, no synchronisation, capturable in a CUDA graph), TVM's stream restored after."""
    where = xp(like).stream(like)
    if where is None:
        fn(*args)
        return
    dev, stream = where
    prev = cabi.set_stream(CUDA, dev, stream)
    try:
        fn(*args)
    finally:
        cabi.set_stream(CUDA, dev, prev)


CUDA = 2  # DLPack's device type


#: State values per output row one kernel computes (columns x state buffers): a wider
#: reduction (a Sum of a 512-vector, a K-min of a vector formula) runs as several kernels
#: over slices of its state columns, as KeOps' chunked modes do -- compile time grows faster
#: than linearly with the width.
MAX_STATE = 64


def column_chunks(
    r: Reduction, dtype: str, device: str = "cpu", ranged: bool = False
) -> list[Reduction]:
    """``r`` itself, or the reductions of consecutive slices of its state columns (the fewest
    kernels of at most MAX_STATE state values per row -- or the reduction's own ``chunking``
    bound for the ``device`` type's template -- with balanced widths) whose states, side by
    side, are ``r``'s."""
    key = ("chunks", dtype, device, ranged)
    if key not in r.memo:
        acc, variant = r.resolve(dtype)
        rd, dim = r.rdef, r.formula.dim
        if rd.chunking is not None:  # (formula columns, the most one kernel takes)
            blocked = schedules.for_device(device).two_pass(compute_dtype(dtype), 0) > 0
            cols, width = rd.chunking(r.formula, variant, dtype, acc, blocked)
        else:  # every buffer has one column per formula column
            state = rd.state(dim, variant, dtype, acc)
            cols, width = state[0][0], max(1, MAX_STATE // len(state))
            if rd.name == "Sum" and not variant.sequential and not ranged:
                # in blocks of j, a Sum's columns are summed in register tiles, not held in
                # registers: one kernel (Gaussian x-gradient D = 256, 3000 x 3000, Zen 5: 347
                # -> 131 ms, first call 24 -> 6.8 s; 512 weight columns 158 -> 86 ms); the
                # block-sparse kernels are one-pass
                blocked = schedules.for_device(device).two_pass_sums
                width = cols if blocked and rd.blocked(r.formula, dtype) else width
        parts = [r]
        if cols > width:
            n = -(-cols // width)
            cuts = [(cols * k // n, cols * (k + 1) // n - cols * k // n) for k in range(n)]
            parts = [
                dataclasses.replace(r, formula=rd.columns(r.formula, c, w), memo={})
                for c, w in cuts
            ]
        r.memo[key] = parts
    return r.memo[key]


def kernel_of(
    r: Reduction,
    dtype: str,
    dev: Any,
    split: bool = False,
    ranged: bool = False,
    narrow: bool = False,
    nonneg: tuple = (),
    guard: bool | str = False,
) -> tuple[Any, Any]:
    """(compiled kernel, its variant) of ``r`` for this dtype and device (``split``: the
    split-j kernel, ``narrow``: with narrower row blocks; ``ranged``: the block-sparse one;
    ``nonneg``: for parameters at these positions >= +0; ``guard``: the K-min with the
    dot-product guard, taking the norms after the arguments), memoised on ``r`` so a call
    costs no key computation (the caches behind get_kernel are keyed by text)."""
    how = "ranged" if ranged else "narrow" if narrow else split
    key = ("kernel", dtype, dev, how, nonneg, *(("guard", guard) if guard else ()))
    hit = r.memo.get(key)
    if hit is not None and hit[0] == build.generation:
        return hit[1], hit[2]
    spec = r.spec(dtype, split, ranged, narrow, nonneg, guard)
    try:
        kernel = get_kernel(spec, dev)
    except LookupError as e:  # KernelNotExported: say which variables the Var(...) are
        if nonneg or guard:  # an exported library without this variant: its general kernel
            r.memo[key] = (build.generation, *kernel_of(r, dtype, dev, split, ranged, narrow))
            return r.memo[key][1], r.memo[key][2]
        legend = ", ".join(f"{v} = {n}" for v, n in zip(r.args, r.names))
        raise type(e)(f"{e} [{legend}]") from None
    r.memo[key] = (build.generation, kernel, spec.variant)
    return kernel, spec.variant


def kernel_args(r: Reduction, k: Any, args: Sequence[Any], n_out: int, n_red: int,
                chunks: int = 1, dev: Any = None) -> tuple[list, list, tuple]:  # fmt: skip
    """(input tensors, fresh state buffers, size arguments) for ``k.fn``: output-indexed
    inputs padded to whole row blocks, parameters flattened, everything contiguous.  A
    split-j call (``chunks`` > 1) or a tiled kernel has state buffers with a leading
    dimension of ``chunks`` and sizes ``(Mb, N, S, C)``; a tiled kernel's reduced-index inputs
    are zero-padded to whole tiles of every chunk (``C`` is then in tiles)."""
    like = args[0] if args else _like(args, dev or device_of(args))
    x = xp(like)
    mb = -(-n_out // k.row_block)
    rows = mb * k.row_block
    split = chunks > 1 or k.tile
    per_chunk = -(-n_red // chunks)
    if k.tile:
        per_chunk = -(-per_chunk // k.tile)  # tiles per chunk
    if split and n_red:  # no chunk wholly past N (n = 5 in 4 chunks: 3 of 2 rows): TVM's
        # loop partition re-read a tiled chunk's tiles there, left a float32 block sum's
        # state unwritten (test_split)
        chunks = -(-n_red // (per_chunk * (k.tile or 1)))
    if k.tile:
        reduced_rows = chunks * per_chunk * k.tile
    call_args = []
    for v in k.inputs:
        a = args[v.params[0]]
        cat = v.params[2]
        if cat == 2:
            a = a.reshape(-1)
        elif cat == r.out_cat and rows != n_out:
            a = _padded(a, rows, x)
        elif cat != r.out_cat and k.tile and reduced_rows != n_red:
            a = _padded(a, reduced_rows, x, repeat=True)
        call_args.append(x.kernel_view(aligned(a, x)))
    lead = (chunks,) if split else ()
    state = [x.empty((*lead, rows, cols), dt, like) for cols, dt in k.state]
    sizes = (mb, n_red, chunks, per_chunk) if split else (mb, n_red)
    return call_args, state, sizes


def _padded(a: Any, rows: int, x: Any, repeat: bool = False) -> Any:
    """``a`` with ``rows`` rows: zeros after its own, or (``repeat``) copies of its last row
    (a tiled kernel's masked j then reads a duplicate of j = N - 1: ``Space.duplicates``)."""
    padded = x.pad_rows(a, rows)
    if repeat and a.shape[0]:
        padded[a.shape[0] :] = a[-1:]
    return padded


def aligned(a: Any, x: Any = None) -> Any:
    """``a`` compact and 64-byte aligned, copying only when needed: a view into the middle of
    a tensor or a numpy array may be misaligned (the kernel would fault), and an empty tensor
    may keep the strides of what it was cut from (``.contiguous()`` leaves it as it is)."""
    x = x or xp(a)
    if 0 in a.shape:
        return x.empty(tuple(a.shape), x.dtype_name(a), a)
    a = x.contiguous(a)
    if x.data_ptr(a) % ALIGN:
        a = x.copy(a)  # fresh allocations are aligned
    return a
