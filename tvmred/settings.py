"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled kernels, tuning records and ``host.json`` live: ``$TVMRED_CACHE_DIR``,
    default ``~/.cache/tvmred``."""
    return Path(os.environ.get("TVMRED_CACHE_DIR") or Path.home() / ".cache" / "tvmred")
