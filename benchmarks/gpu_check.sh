#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine (at most ~555 s): a smoke test (reference
# example on CUDA against dense float64 torch), the GPU benchmark with the default kernels,
# with 128-row shared-memory j-tiles (TVMRED_CUDA_TILE=128) and with tiles and 2 rows a
# thread (TVMRED_CUDA_ROWS=2), and the LogSumExp cases with tiles in the flash-attention
# layout (TVMRED_CUDA_TWO_PASS=16) -- each case beside the time its SASS count predicts
# (benchmarks/results/sass_sm90.json) -- the whole test suite with CUDA tensors
# (pytest-xdist over the machine's cores) and the reduction tests again with tiles (two-pass),
# then `tvmred tune --device cuda` (which tries the tile knobs, checking their answers).
# Results go to $OUT (the device tool's output folder) or benchmarks/results/gpu/.
#
#   prepare here:  ../shared/tools/device-bundle.sh            # TVM for the GPU machine
#   device call:   carry [".devbundle"],
#                  command "source .devbundle/setup.sh && bash benchmarks/gpu_check.sh"
# (the GPU machine's Python already has pytest and pytest-xdist)
set -u
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
export TVMRED_CACHE_DIR=${TVMRED_CACHE_DIR:-/tmp/tvmred-gpu-cache}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  command -v nvcc && nvcc --version | tail -2
  python3 -c "import torch, tvm; print(torch.cuda.get_device_name(), torch.__version__, tvm.__version__)"
} > "$out/device.txt" 2>&1
timeout 30 python3 - > "$out/smoke.txt" 2>&1 <<'PY'
import time, traceback, torch
from tvmred.torch import Genred
dev = torch.device("cuda")
try:
    g = Genred("Square(p-a)*Exp(x+y)", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"], axis=1)
    x, y, a, p = (torch.rand(*s, device=dev, dtype=torch.float64) for s in ((3000, 3), (5000, 3), (5000, 1), (1,)))
    y.requires_grad_()
    t = time.perf_counter(); c = g(x.float(), y.float(), a.float(), p.float()); torch.cuda.synchronize()
    print("first call (compile + run) s", time.perf_counter() - t)
    ref = (((p - a.T) ** 2)[..., None] * torch.exp(x[:, None] + y[None])).sum(1)
    print("forward float32 max rel err", ((c.double() - ref).abs() / ref.abs()).max().item())
    c64 = g(x, y, a, p); e = torch.rand_like(c64)
    (gy,) = torch.autograd.grad(c64, y, e); (gr,) = torch.autograd.grad(ref, y, e)
    print("float64 fwd err", ((c64 - ref).abs().max() / ref.abs().max()).item(), "grad err", ((gy - gr).abs().max() / gr.abs().max()).item())
except Exception:
    traceback.print_exc()
PY
# the thread-per-row kernels (the default), then the shared-memory j-tiles (not yet the
# default: they have not run on a GPU before this script)
timeout 80 python3 benchmarks/bench_gpu.py --out "$out/bench_gpu.json" > "$out/bench_gpu.txt" 2>&1
echo "bench rc=$?" >> "$out/bench_gpu.txt"
TVMRED_CUDA_TILE=128 timeout 80 python3 benchmarks/bench_gpu.py --out "$out/bench_gpu_tiles.json" \
    > "$out/bench_gpu_tiles.txt" 2>&1
echo "bench (tiles) rc=$?" >> "$out/bench_gpu_tiles.txt"
# tiles with 2 rows a thread (each shared j-row read once for both rows; sass_count.py)
TVMRED_CUDA_TILE=128 TVMRED_CUDA_ROWS=2 timeout 50 python3 benchmarks/bench_gpu.py --only "gauss D=3" \
    "gauss D=64" --out "$out/bench_gpu_tiles_rows2.json" > "$out/bench_gpu_tiles_rows2.txt" 2>&1
echo "bench (tiles, 2 rows) rc=$?" >> "$out/bench_gpu_tiles_rows2.txt"
# the LogSumExp family with tiles in blocks of 16 j (one rescale a block, not a pair)
TVMRED_CUDA_TILE=128 TVMRED_CUDA_TWO_PASS=16 timeout 40 python3 benchmarks/bench_gpu.py --only \
    "attention" "LogSumExp D=3" --out "$out/bench_gpu_two_pass.json" > "$out/bench_gpu_two_pass.txt" 2>&1
echo "bench (tiles, two-pass) rc=$?" >> "$out/bench_gpu_two_pass.txt"
CUDA_LAUNCH_BLOCKING=1 TVMRED_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -n 14 -p no:cacheprovider tests \
    > "$out/tests_cuda.txt" 2>&1
echo "tests rc=$?" >> "$out/tests_cuda.txt"
CUDA_LAUNCH_BLOCKING=1 TVMRED_TEST_DEVICE=cuda TVMRED_CUDA_TILE=128 TVMRED_CUDA_TWO_PASS=16 timeout 90 python3 -m pytest -q -n 14 \
    -p no:cacheprovider tests/test_reductions.py tests/test_genred.py tests/test_batch_ranges.py \
    tests/test_lazy_reductions.py > "$out/tests_cuda_tiles.txt" 2>&1
echo "tests (tiles) rc=$?" >> "$out/tests_cuda_tiles.txt"
timeout 35 python3 -m tvmred tune "Exp(-SqDist(x,y))*b" "x = Vi(3)" "y = Vj(3)" "b = Vj(3)" \
    --device cuda --M 100000 --N 100000 > "$out/tune_cuda.txt" 2>&1
echo "tune M=N=1e5 rc=$?" >> "$out/tune_cuda.txt"
cat "$out/device.txt" "$out/smoke.txt"; tail -4 "$out/bench_gpu.txt" "$out/bench_gpu_tiles.txt"
tail -3 "$out/bench_gpu_tiles_rows2.txt" "$out/bench_gpu_two_pass.txt"; cat "$out/tune_cuda.txt"; tail -6 "$out/tests_cuda.txt" "$out/tests_cuda_tiles.txt"
