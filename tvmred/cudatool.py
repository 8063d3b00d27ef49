"""Which CUDA compiler builds tvmred's CUDA kernels, and a toolkit-free route to one.

TVM 0.27 compiles CUDA C with NVRTC through ``cuda-bindings`` by default
(``TVM_CUDA_COMPILE_MODE=nvcc`` for nvcc); NVRTC needs CUDA's headers, which TVM looks for
under ``CUDA_PATH`` (else beside ``nvcc``).  ``pip install tvmred[cuda]`` brings NVRTC and
the headers as NVIDIA's wheels (``nvidia/cu13`` in site-packages): with no ``CUDA_PATH``
and no toolkit, :func:`setup` points TVM there -- no system CUDA toolkit needed.  A CUDA
major version different from torch's is named by :func:`check` (pykeops users' most common
failure: a compiler for another CUDA than the driver and torch)."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

# float32 exp is exp2f(x log2 e) (tvmred.mathfns, "native"); CUDA's exp2f wraps the hardware
# MUFU.EX2 in 3 more instructions (a compare and two multiplies) to get subnormal results
# right.  tvmred's exp flushes results below the smallest normal number to 0 on every target
# (the CPU's too), so its kernels call the bare instruction: 3 of ~18 instructions a pair in
# a Gaussian kernel.  Same accuracy otherwise (2 ulp, CUDA's documented bound for both).
EX2 = (
    "__device__ __forceinline__ float tvmred_ex2f(float x) {\n"
    '  float r; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r;\n'
    "}\n"
)
_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("tvmred_cuda", default=False)
_PREVIOUS: list = []


def postprocess(code: str) -> str:
    """tvmred's generated CUDA source as it is compiled: ``exp2f`` as ``ex2.approx.ftz.f32``."""
    if "exp2f(" not in code:
        return code
    head = code.find('extern "C" __global__')
    head = 0 if head < 0 else head
    return code[:head] + EX2 + code[head:].replace("exp2f(", "tvmred_ex2f(")


@contextlib.contextmanager
def building() -> Iterator[None]:
    """While tvmred compiles a CUDA kernel: TVM's ``tvm_callback_cuda_postproc`` hook applies
    :func:`postprocess` (registered once; outside tvmred's compiles it leaves the source
    alone, or calls the hook that was registered before)."""
    if not _PREVIOUS:
        import tvm_ffi

        _PREVIOUS.append(tvm_ffi.get_global_func("tvm_callback_cuda_postproc", allow_missing=True))
        tvm_ffi.register_global_func("tvm_callback_cuda_postproc", _hook, override=True)
    token = _BUILDING.set(True)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def _hook(code: str, target: Any) -> str:
    if _BUILDING.get():
        return postprocess(code)
    return _PREVIOUS[0](code, target) if _PREVIOUS[0] is not None else code


def pip_cuda() -> Optional[Path]:
    """The newest ``nvidia/cu<major>`` directory of NVIDIA's wheels holding CUDA's headers
    and NVRTC (None: not installed)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = []
    for base in spec.submodule_search_locations:
        for d in Path(base).glob("cu[0-9]*"):
            if (d / "include" / "cuda_runtime.h").is_file() and list(d.glob("lib/libnvrtc.so*")):
                found.append((int(d.name[2:]), d))
    return max(found)[1] if found else None


def setup() -> str:
    """Point TVM's NVRTC compile at the pip CUDA headers when nothing else is configured;
    returns what compiles CUDA kernels, in words."""
    mode = os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower()
    if mode == "nvcc":
        return f"nvcc ({shutil.which('nvcc') or 'not found'})"
    if "CUDA_PATH" in os.environ:
        return f"NVRTC, CUDA headers from CUDA_PATH={os.environ['CUDA_PATH']}"
    nvcc = shutil.which("nvcc")
    if nvcc and (Path(nvcc).resolve().parents[1] / "include" / "cuda_runtime.h").is_file():
        return f"NVRTC, CUDA headers of the toolkit of {nvcc}"
    pip = pip_cuda()
    if pip is None:
        return "NVRTC, no CUDA headers found (pip install tvmred[cuda], or set CUDA_PATH)"
    os.environ["CUDA_PATH"] = str(pip)
    cccl = pip / "include" / "cccl"  # <cuda/std/...>, which TVM's NVRTC preamble includes
    if cccl.is_dir():
        extra = os.environ.get("TVM_CUDA_NVRTC_EXTRA_OPTS", "")
        os.environ["TVM_CUDA_NVRTC_EXTRA_OPTS"] = f"{extra} -I{cccl}".strip()
    return f"NVRTC, CUDA headers from pip ({pip})"


def nvrtc_version() -> Optional[tuple[int, int]]:
    """NVRTC's (major, minor) through cuda-bindings (None: not installed)."""
    if (
        importlib.util.find_spec("cuda") is None
        or importlib.util.find_spec("cuda.bindings") is None
    ):
        return None
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    return (major, minor) if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else None


def check(torch_cuda: Optional[str], nvrtc: Optional[tuple[int, int]]) -> Optional[str]:
    """A message naming a CUDA version mismatch between torch and NVRTC (None: none)."""
    if torch_cuda is None or nvrtc is None:
        return None
    if int(torch_cuda.split(".")[0]) != nvrtc[0]:
        return (
            f"torch is built for CUDA {torch_cuda} but NVRTC is CUDA {nvrtc[0]}.{nvrtc[1]}: "
            f"kernels compiled for one may not load with the other's driver; install NVRTC "
            f"for CUDA {torch_cuda.split('.')[0]} (pip install tvmred[cuda{torch_cuda.split('.')[0]}]) "
            "or torch for the other"
        )
    return None
