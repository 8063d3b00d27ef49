"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled kernels, tuning records and ``host.json`` live: ``$TVMRED_CACHE_DIR``,
    default ``~/.cache/tvmred``."""
    return Path(os.environ.get("TVMRED_CACHE_DIR") or Path.home() / ".cache" / "tvmred")


def default_threads() -> None:
    """Set ``TVM_NUM_THREADS`` (TVM's thread pool reads it once, at its first use) when the
    user has not: torch's intra-op thread count when torch is imported (the torch binding
    imports it), else the CPUs this process may run on."""
    import sys

    if "TVM_NUM_THREADS" in os.environ:
        return
    if sys.modules.get("torch") is not None:  # None: an import blocked (tvmred._tvm)
        n = sys.modules["torch"].get_num_threads()
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["TVM_NUM_THREADS"] = str(n or 1)


def make_private_dir(d: Path) -> None:
    """Create directory ``d`` (and its parents) if needed; ``d`` itself owner-only (0700)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)


def untrusted(path: Path) -> str | None:
    """Why ``path`` -- the cache directory or a file in it -- must not be trusted, None if it
    can: as ssh judges its keys, it must be owned by this user (or root) and not writable by
    group or others, else another account could have put its code (or its choice of CPU or
    schedule) there.  POSIX only (None elsewhere); raises OSError if ``path`` is missing."""
    if os.name != "posix":
        return None
    st = os.stat(path)
    if st.st_uid not in (os.getuid(), 0):
        return f"owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return "writable by " + ("group and others" if st.st_mode & 0o002 else "its group")
    return None


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
