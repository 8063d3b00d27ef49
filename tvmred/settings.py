"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled kernels, tuning records and ``host.json`` live: ``$TVMRED_CACHE_DIR``,
    default ``~/.cache/tvmred``."""
    return Path(os.environ.get("TVMRED_CACHE_DIR") or Path.home() / ".cache" / "tvmred")


def setup_logging() -> None:
    """``TVMRED_VERBOSE=1``: tvmred's log (logger "tvmred": each compile with its time, cache
    decisions) at INFO level on stderr.  Otherwise configure the "tvmred" logger as any other
    (``logging.getLogger("tvmred").setLevel(logging.INFO)`` with a handler)."""
    import logging

    if os.environ.get("TVMRED_VERBOSE", "0") not in ("", "0"):
        log = logging.getLogger("tvmred")
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[tvmred] %(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.DEBUG if os.environ["TVMRED_VERBOSE"] == "2" else logging.INFO)


def dist_timeout() -> float:
    """Seconds a sharded reduction (:mod:`tvmred.torch.distributed`) waits for the other ranks
    at any exchange before it raises: ``$TVMRED_DIST_TIMEOUT``, default 300."""
    return float(os.environ.get("TVMRED_DIST_TIMEOUT") or 300)
