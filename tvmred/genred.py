"""pykeops' surface, shared by the torch and numpy bindings: the ``Genred`` base class (its
constructor builds the :class:`~tvmred.reductions.Reduction`, :mod:`tvmred.frontend`; each
binding defines the call), pykeops' ``backend``/``device_id`` placement and ``out=``."""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

from .arrays import is_array, xp
from .frontend import reduction_from


def copy_into(res: Any, out: Any) -> Any:
    """pykeops' ``out=``: the result written into a preallocated tensor (or numpy array)."""
    x = xp(res)
    if not is_array(out) or xp(out) is not x:
        raise TypeError(f"out must be a {x.name} array like the result, got {type(out).__name__}")
    rd, od = x.device(res), x.device(out)
    if tuple(out.shape) != tuple(res.shape) or out.dtype != res.dtype or str(od) != str(rd):
        raise ValueError(
            f"out must be a {res.dtype} tensor of shape {tuple(res.shape)} on "
            f"{rd}, got {out.dtype} {tuple(out.shape)} on {od}"
        )
    if x.name == "numpy":
        out[...] = res
        return out
    import torch

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


def placement(args: Sequence[Any], backend: str, device_id: int):
    """(device to compute on, whether results go back to the CPU), as pykeops' ``backend`` and
    ``device_id``: "auto" computes where the tensors are; a GPU backend with CPU tensors
    copies them to ``cuda:device_id`` and the result back (pykeops' ``_host`` mode)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    devs = {xp(a).device(a) for a in args if is_array(a)}
    if len(devs) > 1:  # the same place named twice (a numpy array and a CPU tensor)
        devs = set({str(d): d for d in devs}.values())
    here = next(iter(devs)) if len(devs) == 1 else None  # mixed devices: check_args reports
    if backend == "CPU":
        if here is not None and here.type != "cpu":
            raise ValueError(f"backend='CPU' but the arguments are on {here}")
        return here, False
    if backend.startswith("GPU") and (here is None or here.type == "cpu"):
        import torch

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
        self.formula, self.aliases = formula, list(aliases)
        self.reduction_op, self.axis = reduction_op, axis
        self.reduction = reduction_from(
            formula,
            aliases,
            reduction_op,
            axis,
            opt_arg,
            formula2,
            dtype_acc,
            use_double_acc,
            sum_scheme,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.formula!r}, {self.aliases!r}, "
            f"reduction_op={self.reduction_op!r}, axis={self.axis})"
        )
