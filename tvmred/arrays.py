"""The few array operations the launch and the reductions' ``finalize``/``combine`` need, for
torch tensors and numpy arrays alike, so that numpy users never import torch: ``xp(a)`` is
the namespace of ``a``'s library (:class:`Torch` or :class:`Numpy`), chosen by the array's
class without importing either library.  Dtypes are named ("float32", "int64", ...)."""

from __future__ import annotations

from typing import Any, Sequence

ALIGN = 64  # bytes: TVM declares kernel buffers 64-byte aligned
HALF = ("float16", "bfloat16")  # data dtypes computed in float32 (converted as loaded)


def compute_dtype(dtype: str) -> str:
    """The dtype formulas are evaluated in for data of ``dtype`` (float32 for half types)."""
    return "float32" if dtype in HALF else dtype


class CPU:
    """The device of numpy arrays, in the form torch's devices have (``.type``, ``.index``)."""

    type = "cpu"
    index = None

    def __repr__(self) -> str:
        return "cpu"


HOST = CPU()


class Torch:
    """torch tensors (any device)."""

    name = "torch"

    _dtypes: dict[Any, Any] = {}  # name -> torch dtype, and torch dtype -> name

    @staticmethod
    def lib() -> Any:
        import torch

        return torch

    @staticmethod
    def dtype(name: Any) -> Any:
        """torch's dtype of that name (a torch dtype is returned as it is)."""
        if not isinstance(name, str):
            return name
        d = Torch._dtypes.get(name)
        if d is None:
            d = Torch._dtypes[name] = getattr(Torch.lib(), name)
        return d

    @staticmethod
    def dtype_name(a: Any) -> str:
        n = Torch._dtypes.get(a.dtype)
        if n is None:
            n = Torch._dtypes[a.dtype] = str(a.dtype).rpartition(".")[2]
        return n

    @staticmethod
    def empty(shape: tuple, dtype: str, like: Any) -> Any:
        return Torch.lib().empty(shape, dtype=Torch.dtype(dtype), device=like.device)

    @staticmethod
    def zeros(shape: tuple, dtype: str, like: Any) -> Any:
        return Torch.lib().zeros(shape, dtype=Torch.dtype(dtype), device=like.device)

    @staticmethod
    def pad_rows(a: Any, rows: int) -> Any:
        """``a`` (rows, cols) with zero rows after its own up to ``rows`` (one op: ~2 us
        against ~4 for zeros and a copy)."""
        return Torch.lib().constant_pad_nd(a, (0, 0, 0, rows - a.shape[0]))

    @staticmethod
    def astype(a: Any, dtype: str) -> Any:
        want = Torch.dtype(dtype)
        return a if a.dtype is want else a.to(want)

    @staticmethod
    def cat(xs: Sequence, axis: int) -> Any:
        return Torch.lib().cat(list(xs), dim=axis)

    @staticmethod
    def stack(xs: Sequence, axis: int) -> Any:
        return Torch.lib().stack(list(xs), dim=axis)

    @staticmethod
    def where(c: Any, x: Any, y: Any) -> Any:
        return Torch.lib().where(c, x, y)

    @staticmethod
    def amax(a: Any, axis: int) -> Any:
        return a.amax(axis)

    @staticmethod
    def stable_argsort(a: Any, axis: int) -> Any:
        return Torch.lib().sort(a, dim=axis, stable=True).indices

    @staticmethod
    def take_along(a: Any, idx: Any, axis: int) -> Any:
        return a.gather(axis, idx)

    @staticmethod
    def contiguous(a: Any) -> Any:
        return a.contiguous()

    @staticmethod
    def stream(a: Any) -> Any:
        """(device index, torch's current CUDA stream there) for a CUDA tensor, else None."""
        if not a.is_cuda:
            return None
        return a.get_device(), Torch.lib().cuda.current_stream(a.device).cuda_stream

    @staticmethod
    def kernel_view(a: Any) -> Any:
        """``a`` as a kernel takes it: a bfloat16 tensor as its bits (int16)."""
        return a.view(Torch.lib().int16) if a.dtype is Torch.dtype("bfloat16") else a

    @staticmethod
    def copy(a: Any) -> Any:
        return a.clone()

    @staticmethod
    def host(a: Any) -> Any:
        """A numpy view of CPU tensor ``a``'s values (half types: a float32 copy)."""
        a = a.detach()
        return (a.float() if Torch.dtype_name(a) in HALF else a).numpy()

    @staticmethod
    def take_rows(a: Any, idx: Any) -> Any:
        """``a[idx]`` for a numpy int64 vector ``idx`` (a new contiguous tensor).  On the CPU
        by numpy, in this thread: right after a kernel, TVM's pool threads still spin a while
        and torch's own threads would wait for the cores."""
        torch = Torch.lib()
        if a.is_cuda or Torch.dtype_name(a) == "bfloat16":  # numpy has no bfloat16
            return a.index_select(0, torch.from_numpy(idx).to(a.device))
        out = torch.empty((len(idx), *a.shape[1:]), dtype=a.dtype)  # 64-byte aligned
        Numpy.lib().take(a.detach().numpy(), idx, axis=0, out=out.numpy())
        return out

    @staticmethod
    def data_ptr(a: Any) -> int:
        return a.data_ptr()

    @staticmethod
    def device(a: Any) -> Any:
        return a.device

    @staticmethod
    def fn(name: str, *args: Any) -> Any:
        """The library's own elementwise ``name`` ("exp", "log", "isnan", "isinf")."""
        return getattr(Torch.lib(), name)(*args)


class Numpy:
    """numpy arrays (on the CPU)."""

    name = "numpy"

    @staticmethod
    def lib() -> Any:
        import numpy

        return numpy

    @staticmethod
    def dtype(name: str) -> Any:
        return Numpy.lib().dtype(name)

    @staticmethod
    def dtype_name(a: Any) -> str:
        return a.dtype.name

    @staticmethod
    def empty(shape: tuple, dtype: str, like: Any) -> Any:
        """A new array whose data is 64-byte aligned (as torch's CPU allocations are; numpy's
        own are only 16-byte aligned, and the kernels load with aligned SIMD loads)."""
        np = Numpy.lib()
        dt = np.dtype(dtype)
        n = dt.itemsize
        for d in shape:
            n *= int(d)
        buf = np.empty(n + ALIGN, dtype=np.uint8)
        off = (-buf.ctypes.data) % ALIGN
        return buf[off : off + n].view(dt).reshape(shape)

    @staticmethod
    def zeros(shape: tuple, dtype: str, like: Any) -> Any:
        out = Numpy.empty(shape, dtype, like)
        out.fill(0)
        return out

    @staticmethod
    def pad_rows(a: Any, rows: int) -> Any:
        out = Numpy.zeros((rows, a.shape[1]), a.dtype.name, a)
        out[: a.shape[0]] = a
        return out

    @staticmethod
    def astype(a: Any, dtype: str) -> Any:
        return a.astype(dtype, copy=False)

    @staticmethod
    def cat(xs: Sequence, axis: int) -> Any:
        return Numpy.lib().concatenate(list(xs), axis=axis)

    @staticmethod
    def stack(xs: Sequence, axis: int) -> Any:
        return Numpy.lib().stack(list(xs), axis=axis)

    @staticmethod
    def where(c: Any, x: Any, y: Any) -> Any:
        return Numpy.lib().where(c, x, y)

    @staticmethod
    def amax(a: Any, axis: int) -> Any:
        return a.max(axis)

    @staticmethod
    def stable_argsort(a: Any, axis: int) -> Any:
        return Numpy.lib().argsort(a, axis=axis, kind="stable")

    @staticmethod
    def take_along(a: Any, idx: Any, axis: int) -> Any:
        return Numpy.lib().take_along_axis(a, idx, axis=axis)

    @staticmethod
    def contiguous(a: Any) -> Any:
        return Numpy.lib().ascontiguousarray(a)

    @staticmethod
    def kernel_view(a: Any) -> Any:
        return a

    @staticmethod
    def stream(a: Any) -> Any:
        return None  # host memory

    @staticmethod
    def copy(a: Any) -> Any:
        out = Numpy.empty(a.shape, a.dtype.name, a)
        out[...] = a
        return out

    @staticmethod
    def host(a: Any) -> Any:
        return a

    @staticmethod
    def take_rows(a: Any, idx: Any) -> Any:
        """``a[idx]`` for an int64 vector ``idx``, in a new aligned array."""
        out = Numpy.empty((len(idx), *a.shape[1:]), a.dtype.name, a)
        Numpy.lib().take(a, idx, axis=0, out=out)
        return out

    @staticmethod
    def data_ptr(a: Any) -> int:
        return a.ctypes.data

    @staticmethod
    def device(a: Any) -> Any:
        return HOST

    @staticmethod
    def fn(name: str, *args: Any) -> Any:
        """The library's own elementwise ``name`` ("exp", "log", "isnan", "isinf")."""
        return getattr(Numpy.lib(), name)(*args)


def xp(a: Any) -> type:
    """The namespace of array ``a`` (a numpy array, or a torch tensor: anything else)."""
    return Numpy if type(a).__module__ == "numpy" else Torch


def is_array(a: Any) -> bool:
    """A torch tensor (or a subclass of it) or a numpy array."""
    mod = type(a).__module__
    return mod == "numpy" or (mod.startswith("torch") and hasattr(a, "data_ptr"))
