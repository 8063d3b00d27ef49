"""JAX binding: ``Genred``, ``KernelSolve`` and ``LazyTensor`` on jax arrays (CPU), under ``jax.jit``, ``jax.grad`` (to any order)
and ``jax.vmap`` -- see :mod:`tvmred.jax.binding`.  jax is optional: importing this module
without it raises an ImportError that says so."""

from __future__ import annotations

try:
    import jax  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("tvmred.jax needs jax (pip install 'jax[cpu]')") from e

from .. import settings as _settings
from .binding import Genred, apply, function, jax_call
from .lazytensor import LazyTensor, Pm, Vi, Vj
from .solve import KernelSolve

# before TVM's thread pool first reads it (else TVM runs half the cores on x86: 1 of 2)
_settings.default_threads()

__all__ = ["Genred", "KernelSolve", "LazyTensor", "Vi", "Vj", "Pm", "apply", "function", "jax_call"]
