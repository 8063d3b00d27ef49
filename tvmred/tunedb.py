"""The tuning database: ``$TVMRED_CACHE_DIR/tuning.json``, one record per kernel key (the
cache key without schedule knobs: formula, reduction, dtypes, target, versions), written by
``tvmred tune`` (:mod:`tvmred.tune`) and looked up by every compile (:mod:`tvmred.build`)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional

from . import cache
from .settings import cache_dir


def db_path() -> Path:
    return cache_dir() / "tuning.json"


def _read() -> dict:
    try:
        return json.loads(db_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def lookup(key: str) -> Optional[dict]:
    """The tuned knobs for this kernel key, or None."""
    rec = _read().get(key)
    return None if rec is None else dict(rec["config"])


def write(key: str, record: dict) -> None:
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with cache._locked(path.with_suffix(".lock")):
        db = _read()
        db[key] = record
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(db, indent=1, sort_keys=True))
        os.replace(tmp, path)


def clear() -> None:
    with contextlib.suppress(FileNotFoundError):
        db_path().unlink()
