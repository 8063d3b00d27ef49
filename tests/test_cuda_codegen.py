"""CUDA code generation, checked on machines without a GPU: every reduction kind lowers,
schedules and compiles for sm_80 and sm_90; nvcc accepts the generated source; the kernels
are exported (a CUDA .so can be built without a GPU)."""

import shutil
import subprocess

import pytest

from tvmred.build import compile_reduction
from tvmred.parse import parse, parse_aliases
from tvmred.reductions import Variant
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


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("red,formula,variant", CASES)
def test_cuda_kernels_generate(red, formula, variant, dtype, arch, tmp_path):
    ex, _ = compile_reduction(parse(formula, AL), red, 0, dtype, dtype, cuda_target(arch), variant)
    (dev,) = ex.mod.imports
    src = dev.inspect_source()
    assert "__global__ void __launch_bounds__(128) main_kernel(" in src
    assert "[2147483" not in src  # no INT_MAX-sized buffer from a symbolic extent
    ex.export_library(str(tmp_path / "k.so"))
    assert (tmp_path / "k.so").stat().st_size > 1000
    if arch == "sm_90" and dtype == "float32" and shutil.which("nvcc"):
        cu = tmp_path / "k.cu"
        cu.write_text(src)
        r = subprocess.run(
            ["nvcc", "-cubin", f"-arch={arch}", "-o", str(tmp_path / "k.cubin"), str(cu)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "k.cubin").stat().st_size > 1000


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


@pytest.mark.parametrize("red,formula,variant", [CASES[0], CASES[3], CASES[5]])
def test_cuda_rows_per_thread_knob(red, formula, variant, tmp_path):
    """Row blocks of 256 / 512 are 2 / 4 rows per thread of 128: registers stay compact (no
    local array spanning the block) and nvcc accepts the code."""
    for rb, per in ((256, 2), (512, 4)):
        ex, _ = compile_reduction(
            parse(formula, AL),
            red,
            0,
            "float32",
            "float32",
            cuda_target("sm_90"),
            variant,
            {"row_block": rb},
        )
        src = ex.mod.imports[0].inspect_source()
        assert "__launch_bounds__(128)" in src and f"(((int)threadIdx.x) * {per * 3})" in src
        assert "[129]" not in src and "[257]" not in src
        if shutil.which("nvcc"):
            cu = tmp_path / "k.cu"
            cu.write_text(src)
            r = subprocess.run(
                ["nvcc", "-cubin", "-arch=sm_90", "-o", str(tmp_path / "k.cubin"), str(cu)],
                capture_output=True,
                text=True,
            )
            assert r.returncode == 0, r.stderr
