"""CUDA code generation, checked on machines without a GPU: every reduction kind lowers,
schedules and compiles for sm_80 and sm_90; nvcc accepts the generated source; the kernels
are exported (a CUDA .so can be built without a GPU)."""

import shutil
import subprocess

import pytest

from tvmred.build import compile_reduction
from tvmred.parse import parse, parse_aliases
from tvmred.reductions import KernelSpec, Variant
from tvmred.targets import cuda_target

AL = parse_aliases(["x = Vi(3)", "y = Vj(3)", "b = Vj(3)", "p = Pm(1)"])
CASES = [
    ("Sum", "Exp(-SqDist(x,y)*p)*b", Variant(scheme="direct")),
    ("Sum", "Square(p-Elem(b,0))*Exp(x+y)", Variant(scheme="block")),
    ("Sum", "Exp(-SqDist(x,y))*b", Variant(scheme="kahan")),
    ("Min_ArgMin", "SqDist(x,y)", Variant()),
    ("Max", "Concat(Sin(x), Atan2(y, b))", Variant()),
    ("KMin_ArgKMin", "SqDist(x,y)", Variant(k=10)),
    ("LogSumExp", "Concat(-SqDist(x,y)*p, b)", Variant()),
]


NVCC = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def cuda_source(red, formula, variant, dtype, arch, config=None):
    spec = KernelSpec(parse(formula, AL), red, 0, dtype, dtype, variant)
    ex, _ = compile_reduction(spec, cuda_target(arch), config)
    (dev,) = ex.mod.imports
    return ex, dev.inspect_source()


def nvcc(src, arch, tmp_path):
    """Compile ``src`` to a cubin with nvcc; its bytes."""
    cu, cubin = tmp_path / "k.cu", tmp_path / "k.cubin"
    cu.write_text(src)
    r = subprocess.run(
        ["nvcc", "-cubin", f"-arch={arch}", "-o", str(cubin), str(cu)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return cubin.read_bytes()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("red,formula,variant", CASES)
def test_cuda_kernels_generate(red, formula, variant, dtype, arch, tmp_path):
    ex, src = cuda_source(red, formula, variant, dtype, arch)
    assert "__global__ void __launch_bounds__(128) main_kernel(" in src
    assert "[2147483" not in src  # no INT_MAX-sized buffer from a symbolic extent
    ex.export_library(str(tmp_path / "k.so"))
    assert b"main_kernel" in (tmp_path / "k.so").read_bytes()  # the device code is embedded


@NVCC
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("red,formula,variant", CASES)
def test_nvcc_compiles_the_kernels(red, formula, variant, arch, tmp_path):
    for dtype in ("float32", "float64"):
        _, src = cuda_source(red, formula, variant, dtype, arch)
        assert b"main_kernel" in nvcc(src, arch, tmp_path)


def test_gpu_backend_without_gpu_is_a_clear_error():
    import torch

    from tvmred.torch import Genred

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        g(torch.rand(3, 1), torch.rand(4, 1), backend="GPU")
    with pytest.raises(ValueError, match="unknown backend"):
        g(torch.rand(3, 1), torch.rand(4, 1), backend="TPU")


ROWS = [CASES[0], CASES[3], CASES[5]]


@pytest.mark.parametrize("red,formula,variant", ROWS)
def test_cuda_rows_per_thread_knob(red, formula, variant):
    """Row blocks of 256 / 512 are 2 / 4 rows per thread of 128: registers stay compact (no
    local array spanning the block)."""
    for rb, per in ((256, 2), (512, 4)):
        _, src = cuda_source(red, formula, variant, "float32", "sm_90", {"row_block": rb})
        assert "__launch_bounds__(128)" in src and f"(((int)threadIdx.x) * {per * 3})" in src
        assert "[129]" not in src and "[257]" not in src


@NVCC
@pytest.mark.parametrize("red,formula,variant", ROWS)
def test_nvcc_compiles_rows_per_thread(red, formula, variant, tmp_path):
    for rb in (256, 512):
        _, src = cuda_source(red, formula, variant, "float32", "sm_90", {"row_block": rb})
        assert b"main_kernel" in nvcc(src, "sm_90", tmp_path)


def split(variant):
    import dataclasses

    return dataclasses.replace(variant, split=True)


@pytest.mark.parametrize("red,formula,variant", CASES)
def test_split_j_kernels_generate(red, formula, variant):
    """The split-j kernel of every reduction kind: one block per (chunk, row block), the
    chunk bounds from the scalar arguments S and C, no buffer sized by a symbolic extent."""
    _, src = cuda_source(red, formula, split(variant), "float32", "sm_90")
    assert "__global__ void __launch_bounds__(128) main_kernel(" in src
    assert "int C" in src and "int S" in src and "[2147483" not in src


@NVCC
@pytest.mark.parametrize("red,formula,variant", CASES)
def test_nvcc_compiles_split_j(red, formula, variant, tmp_path):
    _, src = cuda_source(red, formula, split(variant), "float32", "sm_90")
    assert b"main_kernel" in nvcc(src, "sm_90", tmp_path)
