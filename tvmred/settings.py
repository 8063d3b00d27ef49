"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled kernels, tuning records and ``host.json`` live: ``$TVMRED_CACHE_DIR``,
    default ``~/.cache/tvmred``."""
    return Path(os.environ.get("TVMRED_CACHE_DIR") or Path.home() / ".cache" / "tvmred")


def dist_timeout() -> float:
    """Seconds a sharded reduction (:mod:`tvmred.torch.distributed`) waits for the other ranks
    at any exchange before it raises: ``$TVMRED_DIST_TIMEOUT``, default 300."""
    return float(os.environ.get("TVMRED_DIST_TIMEOUT") or 300)
