"""The XLA FFI custom call that runs tvmred's kernels inside jax computations -- without a C
compiler.

XLA calls a custom call's handler through a C ABI (``xla/ffi/api/c_api.h``, shipped with
jaxlib): ``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``.  The handler here is a ctypes
function of that type, registered once per process as the target ``tvmred_reduce``: it reads
the call frame (the reduction's id in a scalar attribute, the input and output buffers), runs
the reduction on numpy views of XLA's input buffers (no copy) and writes the outputs into
XLA's result buffers.  A Python exception becomes an XLA error with its message.

Call overhead (``benchmarks/bench_jax.py``, M = N = 100, one thread, Intel Xeon EMR): a
jitted call through this path 108 us, through ``jax.pure_callback`` 194 us, a direct
``tvmred.numpy`` call 57 us -- hence the default; ``TVMRED_JAX_BRIDGE=callback`` selects
``pure_callback`` instead.

CUDA (written, never run: no GPU has been lent since it was written): the same target is
registered for XLA's "CUDA" platform with a second handler (:func:`_handle_device`).  It reads
XLA's stream (``XLA_FFI_Stream_Get``) and device ordinal (``XLA_FFI_DeviceOrdinal_Get``) from
the call frame's execution context, wraps XLA's device buffers as torch CUDA tensors (zero
copy, ``__cuda_array_interface__``) and runs the reduction through tvmred's launch with XLA's
stream as torch's current stream (``torch.cuda.ExternalStream``): the kernels, the padding
copies and the writes into XLA's result buffers are all queued on XLA's stream, in order with
the rest of the jax program, and nothing synchronises the host.  torch (with CUDA) is the
device array library of that path -- tvmred's launch pads inputs and finishes states with an
array library, and XLA's buffers cannot be handed to jax from inside a custom call.  Without
torch, or without a GPU, the handler returns an XLA error that says so.  Tested without a GPU
on a call frame built in memory (``tests/test_jax.py``); the kernels themselves are tvmred's
CUDA kernels, compiled to cubins in CI.
"""

from __future__ import annotations

import ctypes as C
import itertools
import os
import struct
import weakref
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .host import outputs

TARGET = "tvmred_reduce"
_EXTENSION_METADATA, _STAGE_EXECUTE, _ATTR_SCALAR = 1, 3, 3
_ERROR_UNKNOWN = 2
#: XLA_FFI_DataType codes -> dtype names (bfloat16: the device path only -- numpy has none)
_DTYPE_NAMES = {10: "float16", 11: "float32", 12: "float64", 16: "bfloat16", 4: "int32",
                5: "int64"}  # fmt: skip


class _ErrorArgs(C.Structure):  # XLA_FFI_Error_Create_Args
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p),
                ("message", C.c_char_p), ("errc", C.c_int)]  # fmt: skip


class _ContextArgs(C.Structure):  # XLA_FFI_Stream_Get_Args / XLA_FFI_DeviceOrdinal_Get_Args
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p),
                ("ctx", C.c_void_p), ("out", C.c_void_p)]  # fmt: skip


_ErrorCreate = C.CFUNCTYPE(C.c_void_p, C.POINTER(_ErrorArgs))
_ContextGet = C.CFUNCTYPE(C.c_void_p, C.POINTER(_ContextArgs))  # XLA_FFI_Error* (*)(args*)
_Handler = C.CFUNCTYPE(C.c_void_p, C.c_void_p)  # XLA_FFI_Error* (*)(XLA_FFI_CallFrame*)
# Byte layouts (c_api.h, 64-bit): XLA_FFI_CallFrame up to its attrs, XLA_FFI_Buffer,
# XLA_FFI_ByteSpan, XLA_FFI_Scalar; XLA_FFI_Metadata_Extension's metadata pointer is at 24,
# XLA_FFI_Metadata's api_version.major/minor and traits at 24/28/32, XLA_FFI_Api's
# XLA_FFI_Error_Create at 48, XLA_FFI_Stream_Get at 80, XLA_FFI_DeviceOrdinal_Get at 184.
_FRAME = struct.Struct("<QQQQi4x" + "QQqQQ" * 2 + "QQqQQQ")
_BUFFER = struct.Struct("<QQi4xQqQ")
_SPAN = struct.Struct("<QQ")
_SCALAR = struct.Struct("<i4xQ")
_ERROR_CREATE, _STREAM_GET, _ORDINAL_GET = 48, 80, 184
_REDUCTIONS: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_IDS = itertools.count(1)


def enabled() -> bool:
    """Whether kernels run through the FFI custom call (else ``jax.pure_callback``)."""
    bridge = os.environ.get("TVMRED_JAX_BRIDGE", "ffi")
    if bridge not in ("ffi", "callback"):
        raise ValueError(f"TVMRED_JAX_BRIDGE={bridge!r}: use 'ffi' (default) or 'callback'")
    return bridge == "ffi"


def call(r: Any, inputs: Sequence, shapes: Sequence) -> list:
    """The outputs of ``r`` on ``inputs`` (jax arrays or tracers), of ``shapes``
    (``jax.ShapeDtypeStruct``), through the custom call."""
    import jax

    _register()
    rid = r.memo.get("jax-ffi-id")
    if rid is None:
        rid = r.memo["jax-ffi-id"] = next(_IDS)
        _REDUCTIONS[rid] = r
    fn = jax.ffi.ffi_call(TARGET, tuple(shapes), vmap_method="broadcast_all")
    return list(fn(*inputs, reduction=np.int64(rid)))


@lru_cache(maxsize=None)
def _register() -> Any:
    import jax

    handlers = []
    for platform, fn in (("cpu", _handle_host), ("CUDA", _handle_device)):
        handler = _Handler(fn)
        ptr = C.cast(handler, C.c_void_p).value
        # a platform jaxlib lacks (CUDA on a CPU-only install) keeps the registration for later
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(ptr), platform=platform)
        handlers.append(handler)
    return handlers  # kept alive by the cache: XLA holds their addresses


def _handle_host(frame: int) -> Any:
    """XLA_FFI_Handler of the CPU: the reduction on numpy views of XLA's buffers."""

    def run(r: Any, ins: list, outs: list, api: int, ctx: int) -> None:
        results = outputs(r, [_array(b) for b in ins])
        for b, out in zip(outs, results):
            np.copyto(_array(b), out, casting="no")

    return _handle(frame, run)


def _handle_device(frame: int) -> Any:
    """XLA_FFI_Handler of CUDA: the reduction on XLA's stream (see the module's docstring)."""

    def run(r: Any, ins: list, outs: list, api: int, ctx: int) -> None:
        ordinal = C.c_int32(_context_get(api, _ORDINAL_GET, ctx, "XLA_FFI_DeviceOrdinal_Get"))
        stream = _context_get(api, _STREAM_GET, ctx, "XLA_FFI_Stream_Get")
        run_on_device(r, [_buffer(b) for b in ins], [_buffer(b) for b in outs], ordinal.value,
                      stream)  # fmt: skip

    return _handle(frame, run)


def _handle(frame: int, run: Any) -> Any:
    """An XLA_FFI_Handler: the call frame's fields read with ``struct`` from its bytes; ``run``
    gets the reduction, the input and result buffers' addresses, the API and the context."""
    try:
        fr = _FRAME.unpack(C.string_at(frame, _FRAME.size))
        ext = fr[1]
        if ext and C.c_int.from_address(ext + 8).value == _EXTENSION_METADATA:
            meta = C.c_void_p.from_address(ext + 24).value  # XLA asks for the API version
            C.c_int.from_address(meta + 24).value, C.c_int.from_address(meta + 28).value = 0, 1
            C.c_uint32.from_address(meta + 32).value = 0  # traits: no command buffers
            return None
        if fr[4] != _STAGE_EXECUTE:
            return None
        r = _REDUCTIONS.get(_reduction_id(fr[17], fr[18], fr[19], fr[20]))
        if r is None:
            raise RuntimeError("the reduction of this compiled jax function no longer exists")
        run(r, list(_pointers(fr[9], fr[7])), list(_pointers(fr[14], fr[12])), fr[2], fr[3])
        return None
    except BaseException as e:  # never through the C frames: XLA's error instead
        msg = f"tvmred: {type(e).__name__}: {e}".encode()
        api = C.c_void_p.from_address(frame + 16).value
        create = _ErrorCreate(C.c_void_p.from_address(api + _ERROR_CREATE).value)
        return create(C.byref(_ErrorArgs(C.sizeof(_ErrorArgs), None, msg, _ERROR_UNKNOWN)))


def _context_get(api: int, offset: int, ctx: int, name: str) -> int:
    """The value an XLA_FFI_*_Get(ctx) function of the API at ``offset`` writes out."""
    args = _ContextArgs(C.sizeof(_ContextArgs), None, ctx, None)
    err = _ContextGet(C.c_void_p.from_address(api + offset).value)(C.byref(args))
    if err:
        raise RuntimeError(f"{name} failed (XLA error at {err:#x})")
    return args.out or 0


def _buffer(ptr: int) -> tuple:
    """(data address, dtype name, shape) of an XLA_FFI_Buffer."""
    _, _, code, data, rank, dims = _BUFFER.unpack(C.string_at(ptr, _BUFFER.size))
    shape = struct.unpack(f"<{rank}q", C.string_at(dims, 8 * rank)) if rank else ()
    if code not in _DTYPE_NAMES:
        raise TypeError(
            f"XLA buffer of data type {code}: tvmred takes {sorted(_DTYPE_NAMES.values())}"
        )
    return data, _DTYPE_NAMES[code], shape


class _DeviceBuffer:
    """A CUDA buffer of XLA's, as ``__cuda_array_interface__`` describes it to torch."""

    def __init__(self, data: int, dtype: str, shape: tuple) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str,
                                         "data": (data, False), "version": 3, "strides": None,
                                         "stream": None}  # fmt: skip


def run_on_device(r: Any, ins: list, outs: list, ordinal: int, stream: int) -> None:
    """The device path: ``r`` on XLA's CUDA buffers ``ins`` (each ``(address, dtype name,
    shape)``), its outputs written into ``outs``, every operation queued on ``stream`` of
    device ``ordinal`` (torch's current stream while it runs)."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("tvmred.jax on CUDA runs its kernels through torch's CUDA "
                           "arrays: pip install torch (a CUDA build)") from None  # fmt: skip
    if not torch.cuda.is_available():
        raise RuntimeError("tvmred.jax on CUDA: this torch has no CUDA (torch.cuda.is_available()"
                           " is False); install a CUDA build of torch")  # fmt: skip
    device = torch.device("cuda", ordinal)
    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.ExternalStream(stream, device)):
        args = [_device_tensor(torch, b, device) for b in ins]
        results = outputs(r, args)
        for b, res in zip(outs, results):
            _device_tensor(torch, b, device).copy_(res)


def _device_tensor(torch: Any, buf: tuple, device: Any) -> Any:
    data, dtype, shape = buf
    tdt = getattr(torch, dtype)
    if not data or 0 in shape:
        return torch.empty(shape, dtype=tdt, device=device)
    view_dtype = "float16" if dtype == "bfloat16" else dtype  # the interface has no bfloat16
    t = torch.as_tensor(_DeviceBuffer(data, view_dtype, shape), device=device)
    return t.view(tdt) if dtype == "bfloat16" else t


def _pointers(address: int, n: int) -> tuple:
    return struct.unpack(f"<{n}Q", C.string_at(address, 8 * n)) if n else ()


def _reduction_id(n: int, types: int, names: int, values: int) -> int:
    kinds = struct.unpack(f"<{n}i", C.string_at(types, 4 * n)) if n else ()
    for kind, name, value in zip(kinds, _pointers(names, n), _pointers(values, n)):
        ptr, length = _SPAN.unpack(C.string_at(name, _SPAN.size))
        if kind == _ATTR_SCALAR and C.string_at(ptr, length) == b"reduction":
            return C.c_int64.from_address(_SCALAR.unpack(C.string_at(value, _SCALAR.size))[1]).value
    raise RuntimeError("the custom call has no 'reduction' attribute")


def _array(ptr: int) -> np.ndarray:
    """A numpy view of an XLA buffer (row-major, as XLA's default layout on the CPU)."""
    data, name, shape = _buffer(ptr)
    dtype = np.dtype(name)
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer((C.c_char * size).from_address(data), dtype).reshape(shape)
