import os
import tempfile

# Each test session gets its own, empty kernel cache, so tests never depend on an earlier run
# (nor on a TVMRED_CACHE_DIR the environment may set).
os.environ["TVMRED_CACHE_DIR"] = tempfile.mkdtemp(prefix="tvmred-test-cache-")
# Tests compile in their own processes; tests/test_compile_server.py turns the server on for
# the processes it starts.
os.environ["TVMRED_COMPILE_SERVER"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

# TVMRED_TEST_DEVICE=cuda runs the whole suite with CUDA tensors (torch's default device), so
# every test exercises the CUDA kernels on a GPU machine (see benchmarks/gpu_check.sh).
DEVICE = os.environ.get("TVMRED_TEST_DEVICE", "cpu")
if DEVICE != "cpu":
    torch.set_default_device(DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
