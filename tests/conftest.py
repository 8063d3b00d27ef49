import os
import tempfile

# Each test session gets its own kernel cache, so tests never depend on an earlier run.
os.environ.setdefault("TVMRED_CACHE_DIR", tempfile.mkdtemp(prefix="tvmred-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
