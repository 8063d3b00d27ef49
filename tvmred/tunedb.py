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
from .settings import cache_dir, make_private_dir, untrusted


def db_path() -> Path:
    return cache_dir() / "tuning.json"


def _read() -> dict:
    """The database; empty when it is absent, unreadable (a warning) or not a JSON object."""
    try:
        why = untrusted(db_path()) or untrusted(db_path().parent)
        if why is not None:  # another account's choice of schedules: not followed
            raise OSError(why)
        db = json.loads(db_path().read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        cache._warn_once(
            f"tuning:{db_path()}", "tvmred: ignoring the tuning database %s (%s)", db_path(), e
        )
        return {}
    return db if isinstance(db, dict) else {}


def lookup(key: str) -> Optional[dict]:
    """The tuned knobs for this kernel key, or None."""
    rec = _read().get(key)
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
        return None
    return dict(rec["config"])


def write(key: str, record: dict) -> None:
    """Store ``record`` for ``key``; raises OSError naming the file when it cannot."""
    path = db_path()
    try:
        make_private_dir(path.parent)
        with cache.locked(path.with_suffix(".lock")):
            db = _read()
            db[key] = record
            tmp = cache.temp_path(path.parent, "tuning", ".json")
            tmp.write_text(json.dumps(db, indent=1, sort_keys=True))
            os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"cannot store the tuning record in {path}: {e}") from e


def clear() -> None:
    with contextlib.suppress(FileNotFoundError):
        db_path().unlink()
