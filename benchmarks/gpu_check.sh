#!/usr/bin/env bash
# The GPU check, in one device call (see DEVELOPERS.md): the whole test suite with CUDA tensors,
# then the GPU benchmark. Results go to $OUT (the device tool's output folder) or
# benchmarks/results/gpu/.
#
#   prepare here:  ../shared/tools/device-bundle.sh            # TVM for the GPU machine
#                  pip install --target .gpu-pylib pytest      # pytest for its Python 3.12
#   device call:   carry [".devbundle", ".gpu-pylib"],
#                  command "source .devbundle/setup.sh && bash benchmarks/gpu_check.sh"
set -u
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
[ -d .gpu-pylib ] && export PYTHONPATH="$PYTHONPATH:$(pwd)/.gpu-pylib"
export TVMRED_CACHE_DIR=${TVMRED_CACHE_DIR:-/tmp/tvmred-gpu-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/device.txt" 2>&1
python3 -c "import torch, tvm; print(torch.cuda.get_device_name(), torch.__version__, tvm.__version__)" >> "$out/device.txt" 2>&1
TVMRED_TEST_DEVICE=cuda timeout 420 python3 -m pytest -q -x -p no:cacheprovider tests \
    > "$out/tests_cuda.txt" 2>&1
echo "tests rc=$?" >> "$out/tests_cuda.txt"
timeout 240 python3 benchmarks/bench_gpu.py --out "$out/bench_gpu.json" > "$out/bench_gpu.txt" 2>&1
echo "bench rc=$?" >> "$out/bench_gpu.txt"
tail -3 "$out/tests_cuda.txt" "$out/bench_gpu.txt"
