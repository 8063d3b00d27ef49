"""``pykeops.numpy.utils`` under the alias: the dense numpy references that pykeops' tests and
tutorials compare with (squared distances, the classic radial kernels, their log and
derivative, a stable log-sum-exp) and ``numpytools``, pykeops' table of array functions."""

from __future__ import annotations

import numpy as np

#: the radial kernels k(r^2) of pykeops' tests: (value, log, d/d(r^2)), s the scale
_KERNELS = {
    "gaussian": (
        lambda q, s: np.exp(-q / s**2),
        lambda q, s: -q / s**2,
        lambda q, s: -np.exp(-q / s**2) / s**2,
    ),
    "laplacian": (
        lambda q, s: np.exp(-np.sqrt(q) / s),
        lambda q, s: -np.sqrt(q) / s,
        lambda q, s: -np.exp(-np.sqrt(q) / s) / (2 * s * np.sqrt(q)),
    ),
    "cauchy": (
        lambda q, s: 1 / (1 + q / s**2),
        lambda q, s: -np.log(1 + q / s**2),
        lambda q, s: -1 / (s * (1 + q / s**2)) ** 2,
    ),
    "inverse_multiquadric": (
        lambda q, s: 1 / np.sqrt(1 + q / s**2),
        lambda q, s: -0.5 * np.log(1 + q / s**2),
        lambda q, s: -0.5 / (s**2 * (1 + q / s**2) ** 1.5),
    ),
}


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, N) matrix of |x_i - y_j|^2."""
    return (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T


def differences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(D, M, N) array of x_i - y_j, component first."""
    return x.T[:, :, None] - y.T[:, None, :]


def _kernel(kernel: str, which: int):
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (have {sorted(_KERNELS)})")
    return _KERNELS[kernel][which]


def np_kernel(x, y, s, kernel: str) -> np.ndarray:
    """The (M, N) kernel matrix k(|x_i - y_j|^2) of a radial kernel of scale ``s``."""
    return _kernel(kernel, 0)(squared_distances(x, y), s)


def log_np_kernel(x, y, s, kernel: str) -> np.ndarray:
    """log of :func:`np_kernel`."""
    return _kernel(kernel, 1)(squared_distances(x, y), s)


def grad_np_kernel(x, y, s, kernel: str) -> np.ndarray:
    """The derivative of the kernel with respect to r^2 = |x_i - y_j|^2."""
    return _kernel(kernel, 2)(squared_distances(x, y), s)


def np_kernel_sphere(nalpha, nbeta, s, kernel: str) -> np.ndarray:
    """Kernels on unit vectors (normals) of their scalar products <a_i, b_j>."""
    p = nalpha @ nbeta.T
    rules = {
        "binet": lambda: p**2,
        "linear": lambda: p,
        "gaussian_unoriented": lambda: np.exp((2 * p * p - 2) / s**2),
        "gaussian_oriented": lambda: np.exp((2 * p - 2) / s**2),
    }
    if kernel not in rules:
        raise ValueError(f"unknown kernel {kernel!r} (have {sorted(rules)})")
    return rules[kernel]()


def chain_rules(q, ax, by, Aa, p) -> np.ndarray:
    """sum_j q_i . (2 (x_i - y_j)_d A_ij) p_j for every component d: the gradient w.r.t. x of
    sum_ij q_i A_ij p_j for a kernel whose derivative in r^2 is ``Aa`` (float32, as
    pykeops' tests use it)."""
    res = np.zeros(ax.shape, dtype=np.float32)
    for d in range(ax.shape[1]):
        diff = ax[:, d][:, None] - by[:, d][None, :]
        res[:, d] = np.sum(q * ((2 * diff * Aa) @ p), axis=1)
    return res


def log_sum_exp(mat: np.ndarray, axis: int = 0) -> np.ndarray:
    """log sum exp of ``mat`` along ``axis``, computed stably (the max factored out)."""
    top = mat.max(axis=axis)
    return top + np.log(np.exp(mat - np.expand_dims(top, axis)).sum(axis=axis))


def WarmUpGpu() -> None:
    """pykeops warms its GPU up before timings; tvmred's kernels need no warm-up call."""


class numpytools:
    """The array functions pykeops' generic code looks up for numpy."""

    norm = staticmethod(np.linalg.norm)
    arraysum = staticmethod(np.sum)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    arraytype = np.ndarray
    float_types = [float, np.float16, np.float32, np.float64]

    @staticmethod
    def is_tensor(x):
        return isinstance(x, np.ndarray)

    @staticmethod
    def copy(x):
        return np.copy(x)

    @staticmethod
    def eq(x, y):
        return np.equal(x, y)

    @staticmethod
    def transpose(x):
        return x.T

    @staticmethod
    def permute(x, *axes):
        return x.transpose(*axes)

    @staticmethod
    def contiguous(x):
        return np.ascontiguousarray(x)

    @staticmethod
    def numpy(x):
        return x

    @staticmethod
    def tile(*args):
        return np.tile(*args)

    @staticmethod
    def solve(a, b):
        return np.linalg.solve(a, b)

    @staticmethod
    def size(x):
        return x.size

    @staticmethod
    def view(x, shape):
        return np.reshape(x, shape)

    @staticmethod
    def long(x):
        return x.astype(np.int64)

    @staticmethod
    def dtype(x):
        return x.dtype

    @staticmethod
    def dtypename(dtype):
        return np.dtype(dtype).name

    @staticmethod
    def rand(m, n, dtype):
        return np.random.rand(m, n).astype(dtype)

    @staticmethod
    def randn(m, n, dtype):
        return np.random.randn(m, n).astype(dtype)

    @staticmethod
    def zeros(shape, dtype, device=None, requires_grad=None):
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def empty(shape, dtype, device=None, requires_grad=None):
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def eye(n, dtype):
        return np.eye(n, dtype=dtype)

    @staticmethod
    def array(x, dtype, device=None):
        return np.asarray(x, dtype=dtype)

    @staticmethod
    def device(x):
        return "cpu"


__all__ = [
    "WarmUpGpu",
    "chain_rules",
    "differences",
    "grad_np_kernel",
    "log_np_kernel",
    "log_sum_exp",
    "np_kernel",
    "np_kernel_sphere",
    "numpytools",
    "squared_distances",
]
