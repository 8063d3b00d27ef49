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

CUDA (designed, not run here -- no GPU was available when it was written): the same handler
registered for the "CUDA" platform would read the stream from ``XLA_FFI_Stream_Get`` on the
call frame's context, wrap the device buffers as torch tensors (``__cuda_array_interface__``)
and launch on that stream through tvmred's torch path.  Until then the target is registered
for the CPU only: on another platform XLA reports that it has no handler for it.
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
_DTYPES = {
    k: np.dtype(v)
    for k, v in {10: "float16", 11: "float32", 12: "float64", 4: "int32", 5: "int64"}.items()
}


class _ErrorArgs(C.Structure):  # XLA_FFI_Error_Create_Args
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p),
                ("message", C.c_char_p), ("errc", C.c_int)]  # fmt: skip


_ErrorCreate = C.CFUNCTYPE(C.c_void_p, C.POINTER(_ErrorArgs))
_Handler = C.CFUNCTYPE(C.c_void_p, C.c_void_p)  # XLA_FFI_Error* (*)(XLA_FFI_CallFrame*)
# Byte layouts (c_api.h, 64-bit): XLA_FFI_CallFrame up to its attrs, XLA_FFI_Buffer,
# XLA_FFI_ByteSpan, XLA_FFI_Scalar; XLA_FFI_Metadata_Extension's metadata pointer is at 24,
# XLA_FFI_Metadata's api_version.major/minor and traits at 24/28/32, XLA_FFI_Api's
# XLA_FFI_Error_Create at 48.
_FRAME = struct.Struct("<QQQQi4x" + "QQqQQ" * 2 + "QQqQQQ")
_BUFFER = struct.Struct("<QQi4xQqQ")
_SPAN = struct.Struct("<QQ")
_SCALAR = struct.Struct("<i4xQ")
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

    handler = _Handler(_handle)
    ptr = C.cast(handler, C.c_void_p).value
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(ptr), platform="cpu")
    return handler  # kept alive by the cache: XLA holds its address


def _handle(frame: int) -> Any:
    """XLA_FFI_Handler: the call frame's fields read with ``struct`` from its bytes."""
    try:
        fr = _FRAME.unpack(C.string_at(frame, _FRAME.size))
        ext = fr[1]
        if ext and C.c_int.from_address(ext + 8).value == _EXTENSION_METADATA:
            meta = C.c_void_p.from_address(ext + 24).value  # XLA asks for the API version
            C.c_int.from_address(meta + 24).value, C.c_int.from_address(meta + 28).value = 0, 1
            C.c_uint32.from_address(meta + 32).value = 0
            return None
        if fr[4] != _STAGE_EXECUTE:
            return None
        r = _REDUCTIONS.get(_reduction_id(fr[17], fr[18], fr[19], fr[20]))
        if r is None:
            raise RuntimeError("the reduction of this compiled jax function no longer exists")
        results = outputs(r, [_array(p) for p in _pointers(fr[9], fr[7])])
        for p, out in zip(_pointers(fr[14], fr[12]), results):
            np.copyto(_array(p), out, casting="no")
        return None
    except BaseException as e:  # never through the C frames: XLA's error instead
        msg = f"tvmred: {type(e).__name__}: {e}".encode()
        api = C.c_void_p.from_address(frame + 16).value
        create = _ErrorCreate(C.c_void_p.from_address(api + 48).value)
        return create(C.byref(_ErrorArgs(C.sizeof(_ErrorArgs), None, msg, _ERROR_UNKNOWN)))


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
    _, _, code, data, rank, dims = _BUFFER.unpack(C.string_at(ptr, _BUFFER.size))
    shape = struct.unpack(f"<{rank}q", C.string_at(dims, 8 * rank)) if rank else ()
    dtype = _DTYPES[code]
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer((C.c_char * size).from_address(data), dtype).reshape(shape)
