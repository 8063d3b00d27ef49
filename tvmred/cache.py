"""Compiled-kernel cache: in-process dict + on-disk shared libraries.

Layout: ``$TVMRED_CACHE_DIR`` (default ``~/.cache/tvmred``) holds, per kernel, ``<key>.so``
(the exported module) and ``<key>.json`` (its manifest: the full key text, the SHA-256 of the
``.so``, versions, and the kernel's calling convention, e.g. its row block, so that loading
it needs no compiler).  Writes go to a temporary file and are renamed into place, the manifest
last, under an exclusive ``<key>.lock`` file lock — so processes compiling the same formula at
once wait for each other instead of corrupting the entry.  An entry whose ``.so`` does not
match its manifest's hash (truncated, overwritten) or does not load is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .runtime import load_module
from .settings import cache_dir

log = logging.getLogger("tvmred")

#: Counters, for tests and ``tvmred cache`` diagnostics.
stats = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt_corrupt": 0}
_MEMORY: dict[str, tuple[Any, dict]] = {}
on_clear: list[Callable[[], None]] = []  # other in-process caches to drop with this one


def key_hash(key_text: str) -> str:
    return hashlib.sha256(key_text.encode()).hexdigest()[:32]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(d: Path, h: str, key_text: str) -> tuple[Any, dict] | None:
    """(module, kernel metadata) stored for ``h``, or None if absent; a corrupt entry is
    removed."""
    so, meta = d / f"{h}.so", d / f"{h}.json"
    if not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != key_text:
            raise ValueError("manifest key differs (hash collision or foreign file)")
        if not so.exists() or _sha(so) != info.get("sha256"):
            raise ValueError("shared library missing or its SHA-256 does not match the manifest")
        meta = info["kernel"]
        return load_module(str(so), meta["kind"]), meta
    except Exception as e:  # corrupt manifest, truncated .so, failed dlopen
        log.warning("tvmred cache: entry %s is corrupt (%s); rebuilding", h, e)
        stats["rebuilt_corrupt"] += 1
        for p in (meta, so):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return None


def _store(d: Path, h: str, key_text: str, executable: Any, kernel: dict, extra: dict) -> None:
    import tvm

    so, meta = d / f"{h}.so", d / f"{h}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{h}.", suffix=".so")
    os.close(fd)
    try:
        executable.export_library(tmp)
        info = {
            "key": key_text,
            "sha256": _sha(Path(tmp)),
            "tvm": tvm.__version__,
            "kernel": kernel,
            **extra,
        }
        os.replace(tmp, so)
        fd, tmpm = tempfile.mkstemp(dir=d, prefix=f".{h}.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=1)
        os.replace(tmpm, meta)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def get_or_build(
    key_text: str, build: Callable[[], tuple[Any, dict]], extra: dict | None = None
) -> tuple[Any, dict]:
    """(runtime module, kernel metadata) for ``key_text``: from memory, else disk, else
    ``build()`` -- which returns a ``tvm.runtime.Executable`` and its metadata (JSON-able,
    with ``"kind"``, the target kind) -- stored on disk for the next process."""
    h = key_hash(key_text)
    hit = _MEMORY.get(h)
    if hit is not None:
        stats["memory_hits"] += 1
        return hit
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        writable = os.access(d, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        log.warning("tvmred cache: %s is not writable; compiling without a disk cache", d)
        stats["compiled"] += 1
        ex, meta = build()
        hit = _MEMORY[h] = (ex.mod, meta)
        return hit
    hit = _load(d, h, key_text)
    if hit is None:
        with _locked(d / f"{h}.lock"):
            hit = _load(d, h, key_text)  # another process may have built it meanwhile
            if hit is None:
                ex, meta = build()
                stats["compiled"] += 1
                try:
                    _store(d, h, key_text, ex, meta, extra or {})
                except Exception as e:  # no C++ compiler, disk full...: keep going in memory
                    log.warning("tvmred cache: could not store %s (%s)", h, e)
                hit = (ex.mod, meta)
            else:
                stats["disk_hits"] += 1
    else:
        stats["disk_hits"] += 1
    _MEMORY[h] = hit
    return hit


def entries() -> list[dict]:
    """Manifests of the kernels stored on disk."""
    d = cache_dir()
    out = []
    for meta in sorted(d.glob("*.json")) if d.exists() else []:
        if meta.name in ("tuning.json", "host.json"):
            continue
        with contextlib.suppress(Exception):
            info = json.loads(meta.read_text())
            so = meta.with_suffix(".so")
            info.update(hash=meta.stem, bytes=so.stat().st_size if so.exists() else 0)
            out.append(info)
    return out


def clear_cache(disk: bool = True) -> None:
    """Forget every compiled kernel: in memory, and on disk unless ``disk=False``."""
    _MEMORY.clear()
    for fn in on_clear:
        fn()
    d = cache_dir()
    if disk and d.exists():
        for p in d.iterdir():
            if p.name in ("tuning.json", "tuning.lock"):
                continue  # tuning records outlive compiled kernels (tvmred.tune.clear())
            if p.suffix in (".so", ".json", ".lock") or p.name.startswith("."):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
