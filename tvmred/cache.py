"""Compiled-kernel cache: in-process dict + on-disk shared libraries.

Layout: ``$TVMRED_CACHE_DIR`` (default ``~/.cache/tvmred``) holds, per kernel, ``<key>.so``
(the exported module) and ``<key>.json`` (its manifest: the full key text, the SHA-256 of the
``.so``, versions, and the kernel's calling convention, e.g. its row block, so that loading
it needs no compiler).  Writes go to a temporary file named after the writing process and are
renamed into place, the manifest last, under a ``<key>.lock`` file lock (``filelock``: POSIX
and Windows) -- so processes compiling the same formula at once wait for each other instead of
corrupting the entry.  An entry whose ``.so`` does not match its manifest's hash (truncated,
overwritten) or does not load is rebuilt.

The cache runs what it loads, so it loads only the user's own files: the directory is
created owner-only (0700), and a directory or entry owned by another user or writable by
group or others (:func:`tvmred.settings.untrusted`) is never loaded -- one warning, and the
kernel is compiled instead (the call still succeeds).

Nothing here makes a call fail: a cache directory that cannot be created or written is used
read-only (or not at all) with one warning, and kernels are then compiled in memory; a lock
held for longer than ``LOCK_TIMEOUT`` (a compiler that was stopped) is given up with a
warning; temporary files of writers that died are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import _tvm
from .runtime import load_module
from .settings import cache_dir, make_private_dir, untrusted

log = logging.getLogger("tvmred")

#: Counters, for tests and ``tvmred cache`` diagnostics.
stats = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt_corrupt": 0, "remote": 0}
_MEMORY: dict[str, tuple[Any, dict]] = {}
on_clear: list[Callable[[], None]] = []  # other in-process caches to drop with this one

LOCK_TIMEOUT = 600.0  # seconds; the slowest compile we know takes about a minute
STALE_AGE = 24 * 3600.0  # a temporary file this old belongs to no live writer
SUFFIX = ".dll" if sys.platform == "win32" else ".so"
_warned: set[str] = set()
_corrupt: set[str] = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def key_hash(key_text: str) -> str:
    return hashlib.sha256(key_text.encode()).hexdigest()[:32]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None) -> Iterator[bool]:
    """Hold the file lock ``path`` (yields True), or -- when it cannot be taken within
    ``timeout`` seconds (default LOCK_TIMEOUT) or the file cannot be created -- go on
    without it (yields False)."""
    from filelock import FileLock, Timeout

    timeout = LOCK_TIMEOUT if timeout is None else timeout
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        log.warning(
            "tvmred cache: %s held for more than %.0f s; going on without it", path, timeout
        )
        yield False
        return
    except OSError as e:
        _warn_once(f"lock:{path.parent}", "tvmred cache: cannot lock in %s (%s)", path.parent, e)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def temp_path(d: Path, stem: str, suffix: str) -> Path:
    """A new temporary file in ``d`` whose name carries this process's id (see ``_stale``)."""
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{stem}.{os.getpid()}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _stale(path: Path, now: float) -> bool:
    """A temporary file (``.<stem>.<pid>.<random><suffix>``) whose writer is gone: its process
    no longer runs (POSIX), or it is older than STALE_AGE."""
    try:
        if now - path.stat().st_mtime > STALE_AGE:
            return True
        pid = int(path.name.split(".")[2])
    except (OSError, IndexError, ValueError):
        return False
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def clean_temporaries(d: Path) -> int:
    """Remove the temporary files that dead writers left in ``d``; returns how many."""
    n, now = 0, time.time()
    with contextlib.suppress(OSError):
        for p in d.glob(".*"):
            if p.is_file() and _stale(p, now):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


def _load(d: Path, h: str, key_text: str) -> tuple[Any, dict] | None:
    """(module, kernel metadata) stored for ``h``, or None if absent; a corrupt entry is
    removed (when it can be)."""
    so, manifest = d / f"{h}{SUFFIX}", d / f"{h}.json"
    if not manifest.exists():
        return None
    try:
        info = json.loads(manifest.read_text())
        if info.get("key") != key_text:
            raise ValueError("manifest key differs (hash collision or foreign file)")
        if not so.exists() or _sha(so) != info.get("sha256"):
            raise ValueError("shared library missing or its SHA-256 does not match the manifest")
        kernel = info["kernel"]
        why = untrusted(so) or untrusted(manifest)
        if why is not None:  # not ours: never loaded (and replaced by a compile of our own)
            _warn_once(f"trust:{so}", "tvmred cache: %s is %s; not loaded", so, why)
            return None
        return load_module(str(so), kernel["kind"]), kernel
    except Exception as e:  # corrupt manifest, truncated .so, failed dlopen
        if h not in _corrupt:  # (looked at twice: before and under the lock)
            _corrupt.add(h)
            log.warning("tvmred cache: entry %s is corrupt (%s); rebuilding", h, e)
            stats["rebuilt_corrupt"] += 1
        for p in (manifest, so):
            with contextlib.suppress(OSError):
                p.unlink()
        return None


@_tvm.lean()
def _store(d: Path, h: str, key_text: str, executable: Any, kernel: dict, extra: dict) -> None:
    import tvm

    so, manifest = d / f"{h}{SUFFIX}", d / f"{h}.json"
    tmp = temp_path(d, h, SUFFIX)
    tmpm = None
    try:
        executable.export_library(str(tmp))
        info = {
            "key": key_text,
            "sha256": _sha(tmp),
            "tvm": tvm.__version__,
            "kernel": kernel,
            **extra,
        }
        os.replace(tmp, so)
        tmpm = temp_path(d, h, ".json")
        tmpm.write_text(json.dumps(info, indent=1))
        os.replace(tmpm, manifest)
    finally:
        for p in (tmp, tmpm):
            with contextlib.suppress(OSError, TypeError):
                os.unlink(p)


def _usable(d: Path) -> tuple[bool, bool]:
    """(readable, writable) for the cache directory ``d`` (created if needed)."""
    try:
        make_private_dir(d)
        why = untrusted(d)
    except OSError as e:
        _warn_once(f"dir:{d}", "tvmred cache: cannot create %s (%s); compiling in memory", d, e)
        return False, False
    if why is not None:
        _warn_once(
            f"trust:{d}",
            "tvmred cache: %s is %s: its kernels are not loaded and new ones stay in memory "
            "(make it yours and chmod go-w, or set TVMRED_CACHE_DIR)",
            d,
            why,
        )
        return False, False
    readable = d.is_dir() and os.access(d, os.R_OK | os.X_OK)
    writable = readable and os.access(d, os.W_OK)
    if readable and not writable:
        _warn_once(f"ro:{d}", "tvmred cache: %s is read-only; new kernels stay in memory", d)
    if writable and f"clean:{d}" not in _warned:
        _warned.add(f"clean:{d}")
        clean_temporaries(d)
    return readable, writable


def get_or_build(
    key_text: str,
    build: Callable[[], tuple[Any, dict]],
    extra: dict | None = None,
    remote: Callable[[], bool] | None = None,
) -> tuple[Any, dict]:
    """(runtime module, kernel metadata) for ``key_text``: from memory, else disk, else
    ``build()`` -- which returns a ``tvm.runtime.Executable`` and its metadata (JSON-able,
    with ``"kind"``, the target kind) -- stored on disk for the next process.  A kernel
    stored on disk is loaded back from there: the compiler's in-memory module (LLVM's whole
    module, about 1.7 MiB a kernel) is released."""
    h = key_hash(key_text)
    hit = _MEMORY.get(h)
    if hit is not None:
        stats["memory_hits"] += 1
        return hit
    d = cache_dir()
    readable, writable = _usable(d)
    hit = _load(d, h, key_text) if readable else None
    if hit is not None:
        stats["disk_hits"] += 1
    elif not writable:
        hit = _compile(build)
    else:
        with locked(d / f"{h}.lock"):
            hit = _load(d, h, key_text)  # another process may have built it meanwhile
            if hit is not None:
                stats["disk_hits"] += 1
            elif remote is not None and remote() and (hit := _load(d, h, key_text)):
                stats["remote"] += 1
            else:
                hit = _compile(
                    build, lambda ex, meta: _store(d, h, key_text, ex, meta, extra or {})
                )
                stored = _load(d, h, key_text) if hit[1].get("stored") else None
                if stored is not None:
                    hit = stored
    _MEMORY[h] = hit
    return hit


def store_built(key_text: str, executable: Any, kernel: dict, extra: dict) -> None:
    """Store a compiled kernel as get_or_build would, without taking the entry's lock: for
    the compile server, whose client holds it."""
    d = cache_dir()
    _store(d, key_hash(key_text), key_text, executable, kernel, extra)


def _compile(build: Callable, store: Callable | None = None) -> tuple[Any, dict]:
    ex, meta = build()
    stats["compiled"] += 1
    if store is not None:
        try:
            store(ex, meta)
            return ex.mod, {**meta, "stored": True}
        except Exception as e:  # no C++ compiler, disk full...: keep going in memory
            log.warning("tvmred cache: could not store a kernel (%s); it stays in memory", e)
    return _detached(ex, meta), meta


@_tvm.lean()
def _detached(ex: Any, meta: dict) -> Any:
    """The compiled module, exported to a private temporary file and loaded back from it, so
    that the compiler's in-memory module is released (1.5 MiB a kernel instead of 40 KiB);
    ``ex.mod`` itself if that fails."""
    d = Path(tempfile.mkdtemp(prefix="tvmred-"))
    try:
        path = d / f"kernel{SUFFIX}"
        ex.export_library(str(path))
        return load_module(str(path), meta["kind"])
    except Exception:
        return ex.mod
    finally:
        shutil.rmtree(d, ignore_errors=True)


def entries() -> list[dict]:
    """Manifests of the kernels stored on disk."""
    d = cache_dir()
    out = []
    for manifest in sorted(d.glob("*.json")) if d.is_dir() else []:
        if manifest.name in ("tuning.json", "host.json"):
            continue
        with contextlib.suppress(Exception):
            info = json.loads(manifest.read_text())
            so = manifest.with_suffix(SUFFIX)
            info.update(hash=manifest.stem, bytes=so.stat().st_size if so.exists() else 0)
            out.append(info)
    return out


def clear_cache(disk: bool = True) -> None:
    """Forget every compiled kernel: in memory, and on disk unless ``disk=False``."""
    _MEMORY.clear()
    for fn in on_clear:
        fn()
    d = cache_dir()
    if disk and d.is_dir():
        for p in d.iterdir():
            if p.name in ("tuning.json", "tuning.lock") or p.name.startswith("server-"):
                continue  # tuning records outlive compiled kernels (tvmred.tunedb.clear());
                # a running compile server keeps its socket and lock
            if p.suffix in (SUFFIX, ".json", ".lock") or p.name.startswith("."):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
