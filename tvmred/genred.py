"""pykeops-compatible ``Genred``: what the torch and numpy bindings share -- the constructor
(formula and aliases -> :class:`~tvmred.reductions.Reduction`), argument checking, padding and
the kernel call.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any, Optional, Sequence

import torch

from . import build, schedules
from .build import DTYPES, get_kernel
from .errors import DimError
from .parse import Alias, parse, parse_aliases
from .reductions import MAX_K, REDUCTIONS, Reduction
from .tree import Node, variables

TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_TORCH_DTYPES = TORCH_DTYPES


def make_reduction(
    formula: str,
    aliases: Sequence[str],
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int] = None,
    formula2: Optional[str] = None,
    sum_scheme: str = "auto",
) -> Reduction:
    decls = parse_aliases(list(aliases))
    by_pos = {a.var.params[0]: a for a in decls}
    main = parse(formula, decls)
    weight = parse(formula2, decls) if formula2 is not None else None
    for v in variables(main) + (variables(weight) if weight is not None else []):
        pos = v.params[0]  # a variable written inline, as Var(pos, dim, cat) or Vi(pos, dim)
        if pos not in by_pos:
            by_pos[pos] = Alias(None, v)
        elif by_pos[pos].var is not v:
            raise ValueError(f"formula uses {v}, but position {pos} is {by_pos[pos].var}")
    nargs = max(by_pos) + 1 if by_pos else 0
    missing = [p for p in range(nargs) if p not in by_pos]
    if missing:
        raise ValueError(f"variables are given for positions up to {nargs - 1} but not {missing}")
    names = tuple(by_pos[p].name or str(by_pos[p].var) for p in range(nargs))
    args = tuple(by_pos[p].var for p in range(nargs))
    return build_reduction(
        main, weight, args, names, reduction_op, axis, dtype_acc, opt_arg, sum_scheme
    )


def check_options(
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int],
    has_weight: bool,
    sum_scheme: str,
) -> None:
    """The reduction options are valid (ValueError / NotImplementedError naming the problem)."""
    if reduction_op not in REDUCTIONS:
        raise NotImplementedError(
            f"reduction_op={reduction_op!r} is not supported (available: {sorted(REDUCTIONS)})"
        )
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in (0, 1):
        raise ValueError(f"axis must be 0 (reduce over i) or 1 (reduce over j), got {axis!r}")
    if dtype_acc not in ("auto", *DTYPES):
        raise ValueError(f"dtype_acc must be 'auto', 'float32' or 'float64', got {dtype_acc!r}")
    rd = REDUCTIONS[reduction_op]
    if rd.needs_k:
        if not isinstance(opt_arg, numbers.Integral) or isinstance(opt_arg, bool) or opt_arg < 1:
            raise ValueError(f"reduction_op={reduction_op!r} needs opt_arg=K, an integer >= 1")
        if opt_arg > MAX_K:
            raise ValueError(
                f"reduction_op={reduction_op!r}: opt_arg={opt_arg} is above the limit K <= "
                f"{MAX_K} (the K-selection keeps K values per row, and its compile time grows "
                "faster than K); for more neighbours, use torch.topk on blocks of a dense matrix"
            )
    elif opt_arg is not None:
        raise ValueError(f"reduction_op={reduction_op!r} takes no opt_arg")
    if rd.weight is None and has_weight:
        raise ValueError(f"reduction_op={reduction_op!r} takes no formula2")
    if rd.weight == "required" and not has_weight:
        raise ValueError(f"reduction_op={reduction_op!r} requires formula2 (the weight)")
    if sum_scheme not in ("auto", "direct_sum", "block_sum", "kahan_scheme"):
        raise ValueError(f"unknown sum_scheme {sum_scheme!r}")


def build_reduction(
    main: Node,
    weight: Optional[Node],
    args: tuple[Node, ...],
    names: tuple[str, ...],
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int] = None,
    sum_scheme: str = "auto",
) -> Reduction:
    """The :class:`Reduction` of formula ``main`` (and weight) over declared ``args``."""
    check_options(reduction_op, axis, dtype_acc, opt_arg, weight is not None, sum_scheme)
    rd = REDUCTIONS[reduction_op]
    for v in variables(main) + (variables(weight) if weight is not None else []):
        pos = v.params[0]
        if pos >= len(args) or args[pos] is not v:
            raise ValueError(f"formula uses {v}, which is not among the declared variables")
    if rd.scalar and main.dim != 1:
        raise DimError(f"reduction_op={reduction_op!r} needs a scalar formula, got dim {main.dim}")
    return Reduction(
        rd.tree(main, weight),
        rd.name,
        1 - int(axis),
        args,
        names,
        dtype_acc,
        None if opt_arg is None else int(opt_arg),
        main,
        weight,
        sum_scheme,
    )


def check_args(
    r: Reduction, args: Sequence[torch.Tensor], batch: bool = False
) -> tuple[str, int, int]:
    """Validate the call's tensors; return (dtype, n_out, n_red).  Raises before compiling.
    With ``batch``, arguments may have leading batch dimensions (checked by the caller)."""
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
            raise TypeError(
                f"argument {r.describe(k)} has dtype {a.dtype}; tvmred supports float32 and float64"
            )
    if len(dtypes) > 1:
        detail = ", ".join(f"{r.names[k]}: {a.dtype}" for k, a in enumerate(args))
        raise TypeError(f"all arguments must have the same dtype, got {detail}")
    devices = {a.device for a in args}
    if len(devices) > 1:
        detail = ", ".join(f"{r.names[k]}: {a.device}" for k, a in enumerate(args))
        raise ValueError(f"all arguments must be on the same device, got {detail}")
    sizes: dict[int, tuple[int, int]] = {}  # cat -> (size, arg index)
    lead = "..., " if batch else ""
    for k, (a, v) in enumerate(zip(args, r.args)):
        pos, dim, cat = v.params
        core = 1 if cat == 2 else 2
        if cat == 2:
            ok = (a.dim() >= 1 and a.shape[-1] == dim) or (a.dim() == 0 and dim == 1)
        else:
            ok = a.dim() >= 2 and a.shape[-1] == dim
        if not ok or (not batch and a.dim() > core):
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
    dtype = args[0].dtype if args else torch.get_default_dtype()
    return _TORCH_DTYPES[dtype], n_out, n_red


def run(r: Reduction, args: Sequence[torch.Tensor]):
    """Evaluate the reduction (no autograd): pykeops' output(s) for these arguments."""
    return run_states(r, args)[0]


def run_states(r: Reduction, args: Sequence[torch.Tensor]):
    """(pykeops' output(s), the kernel's raw state buffers)."""
    dtype, n_out, n_red = check_args(r, args)
    dev = args[0].device if args else torch.get_default_device()
    if r.red == "Sum" and r.formula.is_zero:
        zero = torch.zeros(n_out, r.formula.dim, dtype=getattr(torch, dtype), device=dev)
        return zero, [zero]
    parts = [call_kernel(part, args, dtype, dev, n_out, n_red) for part in column_chunks(r, dtype)]
    state = parts[0] if len(parts) == 1 else [torch.cat(b, dim=1) for b in zip(*parts)]
    variant = r.resolve(dtype)[1]
    return r.rdef.finalize(state, variant, getattr(torch, dtype)), state


def call_kernel(r: Reduction, args, dtype: str, dev: torch.device, n_out: int, n_red: int) -> list:
    """The state buffers of ``r`` on these arguments: one kernel call, or -- when the row
    blocks would leave the device's cores idle (the target's ``chunks`` rule) -- the split-j
    kernel's partial states of S chunks of the reduced index, merged by the reduction's
    ``combine``.  A tiled kernel takes the chunks itself (its signature is split-j's)."""
    k, variant = kernel_of(r, dtype, dev)
    mb = -(-n_out // k.row_block)
    chunks = schedules.for_device(dev.type).chunks(mb, n_red, dev) if mb else 1
    if chunks > 1 and not k.tile:
        try:
            k, variant = kernel_of(r, dtype, dev, split=True)
        except LookupError:  # an exported library without the split kernel
            chunks = 1
    state = launch(r, k, args, n_out, n_red, chunks)
    if chunks > 1:
        return r.rdef.combine([s[:, :n_out] for s in state], variant)
    if k.tile:
        return [s[0, :n_out] for s in state]
    return [s[:n_out] for s in state]


def launch(r: Reduction, k: Any, args, n_out: int, n_red: int, chunks: int = 1) -> list:
    """Run kernel ``k`` (``chunks`` > 1: a split-j or tiled kernel) on fresh state buffers:
    ``(rows, cols)`` each, or ``(chunks, rows, cols)`` for a split-j kernel with chunks > 1
    and for every tiled kernel; rows padded to whole row blocks."""
    call_args, state, sizes = kernel_args(r, k, args, n_out, n_red, chunks)
    if sizes[0]:  # no output rows: no launch (a CUDA grid of 0 blocks is an error)
        k.fn(*call_args, *state, *sizes)
    return state


#: State values per output row one kernel computes (columns x state buffers): a wider
#: reduction (a Sum of a 512-vector, a K-min of a vector formula) runs as several kernels
#: over slices of its state columns, as KeOps' chunked modes do -- compile time grows faster
#: than linearly with the width.
MAX_STATE = 64


def column_chunks(r: Reduction, dtype: str) -> list[Reduction]:
    """``r`` itself, or the reductions of consecutive slices of its state columns (each of at
    most MAX_STATE state values per row) whose states, side by side, are ``r``'s."""
    key = ("chunks", dtype)
    if key not in r.memo:
        acc, variant = r.resolve(dtype)
        rd, dim = r.rdef, r.formula.dim
        state = rd.state(dim, variant, dtype, acc)  # every buffer has one column per column
        cols = state[0][0]
        width = max(1, MAX_STATE // len(state))
        parts = [r]
        if cols > width:
            cuts = [(c, min(width, cols - c)) for c in range(0, cols, width)]
            parts = [
                dataclasses.replace(r, formula=rd.columns(r.formula, c, n), memo={})
                for c, n in cuts
            ]
        r.memo[key] = parts
    return r.memo[key]


def kernel_of(r: Reduction, dtype: str, dev: torch.device, split: bool = False) -> tuple[Any, Any]:
    """(compiled kernel, its variant) of ``r`` for this dtype and device (``split``: the
    split-j kernel), memoised on ``r`` so a call costs no key computation (the caches behind
    get_kernel are keyed by text)."""
    key = ("kernel", dtype, dev, split)
    hit = r.memo.get(key)
    if hit is not None and hit[0] == build.generation:
        return hit[1], hit[2]
    spec = r.spec(dtype, split)
    try:
        kernel = get_kernel(spec, dev)
    except LookupError as e:  # KernelNotExported: say which variables the Var(...) are
        legend = ", ".join(f"{v} = {n}" for v, n in zip(r.args, r.names))
        raise type(e)(f"{e} [{legend}]") from None
    r.memo[key] = (build.generation, kernel, spec.variant)
    return kernel, spec.variant


def kernel_args(
    r: Reduction, k: Any, args: Sequence[torch.Tensor], n_out: int, n_red: int, chunks: int = 1
) -> tuple[list, list, tuple]:
    """(input tensors, fresh state buffers, size arguments) for ``k.fn``: output-indexed
    inputs padded to whole row blocks, parameters flattened, everything contiguous.  A
    split-j call (``chunks`` > 1) or a tiled kernel has state buffers with a leading
    dimension of ``chunks`` and sizes ``(Mb, N, S, C)``; a tiled kernel's reduced-index inputs
    are zero-padded to whole tiles of every chunk (``C`` is then in tiles)."""
    dev = args[0].device if args else torch.get_default_device()
    mb = -(-n_out // k.row_block)
    rows = mb * k.row_block
    split = chunks > 1 or k.tile
    per_chunk = -(-n_red // chunks)
    if k.tile:
        per_chunk = -(-per_chunk // k.tile)  # tiles per chunk
        reduced_rows = chunks * per_chunk * k.tile
    call_args = []
    for v in k.inputs:
        a = args[v.params[0]]
        cat = v.params[2]
        if cat == 2:
            a = a.reshape(-1)
        elif cat == r.out_cat and rows != n_out:
            a = _padded(a, rows, dev)
        elif cat != r.out_cat and k.tile and reduced_rows != n_red:
            a = _padded(a, reduced_rows, dev)
        call_args.append(aligned(a))
    lead = (chunks,) if split else ()
    state = [
        torch.empty(*lead, rows, cols, dtype=getattr(torch, dt), device=dev) for cols, dt in k.state
    ]
    sizes = (mb, n_red, chunks, per_chunk) if split else (mb, n_red)
    return call_args, state, sizes


def _padded(a: torch.Tensor, rows: int, dev: torch.device) -> torch.Tensor:
    padded = torch.zeros(rows, a.shape[1], dtype=a.dtype, device=dev)
    padded[: a.shape[0]] = a
    return padded


ALIGN = 64  # TVM declares kernel buffers 64-byte aligned and emits aligned SIMD loads


def aligned(a: torch.Tensor) -> torch.Tensor:
    """``a`` compact and 64-byte aligned, copying only when needed: a view into the middle of
    a tensor or a numpy array may be misaligned (the kernel would fault), and an empty tensor
    may keep the strides of what it was cut from (``.contiguous()`` leaves it as it is)."""
    if a.numel() == 0:
        return a.new_empty(a.shape)
    a = a.contiguous()
    if a.data_ptr() % ALIGN:
        a = a.clone()  # fresh allocations are aligned
    return a


def copy_into(res: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """pykeops' ``out=``: the result written into a preallocated tensor."""
    if out.shape != res.shape or out.dtype != res.dtype or out.device != res.device:
        raise ValueError(
            f"out must be a {res.dtype} tensor of shape {tuple(res.shape)} on "
            f"{res.device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    with torch.no_grad():
        out.copy_(res)
    return out


BACKENDS = (
    "auto",
    "CPU",
    "GPU",
    "GPU_1D",
    "GPU_2D",
    "GPU_1D_device",
    "GPU_2D_device",
    "GPU_1D_host",
    "GPU_2D_host",
)


def placement(args: Sequence[torch.Tensor], backend: str, device_id: int):
    """(device to compute on, whether results go back to the CPU), as pykeops' ``backend`` and
    ``device_id``: "auto" computes where the tensors are; a GPU backend with CPU tensors
    copies them to ``cuda:device_id`` and the result back (pykeops' ``_host`` mode)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    devs = {a.device for a in args if isinstance(a, torch.Tensor)}
    here = next(iter(devs)) if len(devs) == 1 else None  # mixed devices: check_args reports
    if backend == "CPU":
        if here is not None and here.type != "cpu":
            raise ValueError(f"backend='CPU' but the arguments are on {here}")
        return here, False
    if backend.startswith("GPU") and (here is None or here.type == "cpu"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"backend={backend!r} needs a CUDA device, but torch sees none")
        return torch.device(
            "cuda", device_id if device_id >= 0 else torch.cuda.current_device()
        ), True
    if here is not None and here.type == "cuda" and device_id >= 0 and here.index != device_id:
        raise ValueError(f"device_id={device_id} but the arguments are on {here}")
    return here, False


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
    pykeops' output(s); with torch, values are differentiable to any order w.r.t. every input
    -- including Min, Max, KMin and their (value, index) forms, which pykeops cannot
    differentiate.  Index outputs are exact int64.
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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.formula!r}, {self.aliases!r}, "
            f"reduction_op={self.reduction_op!r}, axis={self.axis})"
        )
