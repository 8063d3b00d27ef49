"""Shared by the benchmark scripts: best-of-N wall-clock timing."""

from __future__ import annotations

import time
from typing import Any, Callable


def min_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """The shortest of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (seconds)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
