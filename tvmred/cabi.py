"""Compiled kernels loaded and called through the C ABI of TVM's FFI (``libtvm_ffi``) and its
runtime library (``libtvm_runtime``), with ctypes: no ``tvm`` nor ``tvm_ffi`` Python package
(the latter imports ``ml_dtypes``, half a second), for CPU and CUDA kernels alike.

A module is loaded by TVM's own loader (the global function ``ffi.ModuleLoadFromFile``: it sets
the library's context, its thread-pool and workspace hooks, and loads the CUDA code a CUDA
kernel's library embeds) and kept alive for the process; its ``main`` is called with
``TVMFFIFunctionCall`` on arguments built here: a tensor becomes a ``DLTensor`` (compact, so
no strides), an int an ``Int``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import struct
from pathlib import Path
from typing import Any

_INT, _BOOL, _DLTENSOR, _RAWSTR = 1, 2, 7, 8


class _Any(ctypes.Structure):
    _fields_ = [("type_index", ctypes.c_int32), ("pad", ctypes.c_uint32), ("v", ctypes.c_int64)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("code", ctypes.c_uint8),
        ("bits", ctypes.c_uint8),
        ("lanes", ctypes.c_uint16),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.c_void_p),
        ("byte_offset", ctypes.c_uint64),
    ]


class _ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_char_p), ("size", ctypes.c_size_t)]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=None)
def _ffi() -> ctypes.CDLL:
    """libtvm_ffi, then libtvm_runtime (which needs it), both RTLD_GLOBAL as TVM loads them."""
    ffi_dir, tvm_dir = _package_dir("tvm_ffi"), _package_dir("tvm")
    if ffi_dir is None or tvm_dir is None:
        raise OSError("TVM's runtime libraries are not installed")
    lib = ctypes.CDLL(str(ffi_dir / "lib" / "libtvm_ffi.so"), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(tvm_dir / "lib" / "libtvm_runtime.so"), mode=ctypes.RTLD_GLOBAL)
    lib.TVMFFIFunctionCall.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_Any)
    ]  # fmt: skip
    lib.TVMFFIFunctionCall.restype = ctypes.c_int
    lib.TVMFFIFunctionGetGlobal.argtypes = [
        ctypes.POINTER(_ByteArray),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIErrorMoveFromRaised.restype = None
    lib.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
    lib.TVMFFIEnvSetStream.argtypes = [
        ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    ]  # fmt: skip
    lib.TVMFFIEnvGetStream.argtypes = [ctypes.c_int32, ctypes.c_int32]
    lib.TVMFFIEnvGetStream.restype = ctypes.c_void_p
    return lib


def set_stream(device_type: int, device_id: int, stream: int | None) -> int | None:
    """Make ``stream`` the stream TVM's kernels of that device launch on (TVM's thread-local
    environment stream, which its CUDA module reads at each launch); the previous one."""
    prev = ctypes.c_void_p()
    if _ffi().TVMFFIEnvSetStream(device_type, device_id, stream, ctypes.byref(prev)):
        _raise(_ffi())
    return prev.value


def get_stream(device_type: int, device_id: int) -> int | None:
    return _ffi().TVMFFIEnvGetStream(device_type, device_id)


@functools.lru_cache(maxsize=None)
def cuda_runtime() -> None:
    """The CUDA sidecar of the runtime (it registers the loader of CUDA code)."""
    _ffi()
    tvm_dir = _package_dir("tvm")
    ctypes.CDLL(str(tvm_dir / "lib" / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)


@functools.lru_cache(maxsize=None)
def _global(name: str) -> int:
    handle = ctypes.c_void_p()
    raw = name.encode()
    if (
        _ffi().TVMFFIFunctionGetGlobal(ctypes.byref(_ByteArray(raw, len(raw))), handle)
        or not handle
    ):
        raise OSError(f"TVM's FFI has no global function {name}")
    return handle.value


def _raise(lib: ctypes.CDLL) -> None:
    err = ctypes.c_void_p()
    lib.TVMFFIErrorMoveFromRaised(ctypes.byref(err))
    if not err:
        raise RuntimeError("a TVM kernel failed without an error")
    kind, msg = (_ByteArray.from_address(err.value + 24 + 16 * k) for k in range(2))
    kind, msg = kind.data[: kind.size].decode(), msg.data[: msg.size].decode()
    lib.TVMFFIObjectDecRef(err)
    exc = {"ValueError": ValueError, "TypeError": TypeError, "IndexError": IndexError}
    raise exc.get(kind, RuntimeError)(msg)


def _invoke(lib: ctypes.CDLL, func: int, arr: Any, n: int) -> _Any:
    """``func(*arr[:n])`` through TVMFFIFunctionCall; a raised TVM error becomes Python's."""
    res = _Any()
    if lib.TVMFFIFunctionCall(func, arr, n, ctypes.byref(res)):
        _raise(lib)
    return res


def _call_handle(func: int, args: list[tuple[int, int]]) -> _Any:
    arr = (_Any * len(args))()
    for k, (t, v) in enumerate(args):
        arr[k].type_index, arr[k].v = t, v
    return _invoke(_ffi(), func, arr, len(args))


_DTYPES = {"float32": (2, 32), "float64": (2, 64), "int32": (0, 32), "int64": (0, 64),
           "int16": (0, 16), "float16": (2, 16), "bfloat16": (4, 16)}  # fmt: skip
_DEVICES = {"cpu": 1, "cuda": 2}


_DTYPE_OF: dict[Any, tuple[int, int]] = {}  # torch dtype -> (DLPack type code, bits)


_ANY = "iIq"  # an Any: type index, padding, value
_DLT = "QiiiBBHQQQ"  # a DLTensor: data, device type and id, ndim, dtype, shape, strides, offset
_DLT_SIZE = struct.calcsize("<" + _DLT)  # 48


@functools.lru_cache(maxsize=256)
def _layout(sig: tuple) -> tuple:
    """The packing of one call's arguments in a single buffer: ``n`` Anys, then a DLTensor
    and its shape for each array.  ``sig`` holds -1 for an int, an array's ndim else.
    Returns (struct, buffer size, per argument: (DLTensor offset, shape offset) or None)."""
    n = len(sig)
    fmt, off, where = "<" + _ANY * n, 16 * n, []
    for nd in sig:
        if nd < 0:
            where.append(None)
            continue
        where.append((off, off + _DLT_SIZE))
        fmt += _DLT + "q" * nd
        off += _DLT_SIZE + 8 * nd
    return struct.Struct(fmt), off, tuple(where)


class Function:
    """A function of a loaded module: ``f(*args)`` with compact arrays (torch tensors or
    numpy arrays) and ints.  All arguments are packed by one ``struct.pack_into`` into one
    buffer: building ctypes structures field by field cost ~15 us a call, this ~5 us."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.lib = _ffi()

    def __call__(self, *args: Any) -> None:
        st, size, where = _layout(tuple([-1 if a.__class__ is int else a.ndim for a in args]))
        buf = (ctypes.c_char * size)()
        base = ctypes.addressof(buf)
        heads: list = []
        tails: list = []
        for a, w in zip(args, where):
            if w is None:
                heads += (_INT, 0, a)
                continue
            if a.__class__.__module__ == "numpy":
                ptr, dev_type, dev_id = a.__array_interface__["data"][0], 1, 0
            else:
                ptr, dev_id = a.data_ptr(), a.get_device()  # -1 on the CPU (``.device`` is slower)
                dev_type, dev_id = (1, 0) if dev_id < 0 else (2, dev_id)
            code, bits = _DTYPE_OF.get(a.dtype) or _dtype_of(a)
            shape = a.shape
            heads += (_DLTENSOR, 0, base + w[0])
            tails += (ptr, dev_type, dev_id, len(shape), code, bits, 1, base + w[1], 0, 0, *shape)
        st.pack_into(buf, 0, *heads, *tails)
        _invoke(self.lib, self.handle, buf, len(args))  # ``buf`` lives until it returns


def _dtype_of(a: Any) -> tuple[int, int]:
    name = str(a.dtype).rpartition(".")[2]
    if name not in _DTYPES:
        raise TypeError(f"a TVM kernel cannot take an array of dtype {a.dtype}")
    dt = _DTYPE_OF[a.dtype] = _DTYPES[name]
    return dt


class Module:
    """A compiled library loaded by TVM's loader through the C ABI, kept alive for the
    process: ``mod["main"]`` is its function."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        raw = ctypes.create_string_buffer(self.path.encode())
        mod = _call_handle(_global("ffi.ModuleLoadFromFile"), [(_RAWSTR, ctypes.addressof(raw))])
        if mod.type_index < 64:
            raise OSError(f"{path}: TVM returned no module")
        _call_handle(_global("ffi.ModuleGlobalsAdd"), [(mod.type_index, mod.v)])
        self.handle = (mod.type_index, mod.v)

    def __getitem__(self, name: str) -> Function:
        raw = ctypes.create_string_buffer(name.encode())
        f = _call_handle(
            _global("ffi.ModuleGetFunction"),
            [self.handle, (_RAWSTR, ctypes.addressof(raw)), (_BOOL, 0)],
        )
        if f.type_index < 64:
            raise KeyError(f"{self.path} has no function {name!r}")
        return Function(f.v)
