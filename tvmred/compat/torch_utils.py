"""``pykeops.torch.utils`` under the alias: dense torch references (squared distances, the
radial kernels of pykeops' tests) and ``torchtools``, pykeops' table of tensor functions."""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, N) matrix of |x_i - y_j|^2."""
    return (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.t()


_KERNELS = {
    "gaussian": lambda q, s: torch.exp(-q / s**2),
    "laplacian": lambda q, s: torch.exp(-torch.sqrt(q) / s),
    "cauchy": lambda q, s: 1 / (1 + q / s**2),
    "inverse_multiquadric": lambda q, s: torch.rsqrt(1 + q / s**2),
}


def torch_kernel(x, y, s, kernel: str) -> torch.Tensor:
    """The (M, N) kernel matrix k(|x_i - y_j|^2) of a radial kernel of scale ``s``."""
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (have {sorted(_KERNELS)})")
    return _KERNELS[kernel](squared_distances(x, y), s)


def is_on_device(x) -> bool:
    """Whether a tensor (or any of a list or tuple of them) is on a GPU."""
    if isinstance(x, (list, tuple)):
        return any(is_on_device(t) for t in x)
    return isinstance(x, torch.Tensor) and x.is_cuda


def WarmUpGpu() -> None:
    """pykeops warms its GPU up before timings; tvmred's kernels need no warm-up call."""


class torchtools:
    """The tensor functions pykeops' generic code looks up for torch."""

    norm = staticmethod(torch.norm)
    arraysum = staticmethod(torch.sum)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    arraytype = torch.Tensor
    float_types = [float]

    @staticmethod
    def is_tensor(x):
        return isinstance(x, torch.Tensor)

    @staticmethod
    def copy(x):
        return torch.clone(x)

    @staticmethod
    def eq(x, y):
        return torch.eq(x, y)

    @staticmethod
    def transpose(x):
        return x.t()

    @staticmethod
    def permute(x, *dims):
        return x.permute(*dims)

    @staticmethod
    def contiguous(x):
        return x.contiguous()

    @staticmethod
    def numpy(x):
        return x.detach().cpu().numpy()

    @staticmethod
    def tile(*args):
        return torch.Tensor.repeat(*args)

    @staticmethod
    def solve(a, b):
        return torch.linalg.solve(a, b)

    @staticmethod
    def size(x):
        return x.numel()

    @staticmethod
    def view(x, shape):
        return x.view(shape)

    @staticmethod
    def long(x):
        return x.long()

    @staticmethod
    def dtype(x):
        return x.dtype

    @staticmethod
    def dtypename(dtype):
        return str(dtype).rpartition(".")[2]

    @staticmethod
    def rand(m, n, dtype, device="cpu"):
        return torch.rand(m, n, dtype=dtype, device=device)

    @staticmethod
    def randn(m, n, dtype, device="cpu"):
        return torch.randn(m, n, dtype=dtype, device=device)

    @staticmethod
    def zeros(shape, dtype, device="cpu", requires_grad=False):
        return torch.zeros(shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def empty(shape, dtype, device="cpu", requires_grad=False):
        return torch.empty(shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def eye(n, dtype, device="cpu"):
        return torch.eye(n, dtype=dtype, device=device)

    @staticmethod
    def array(x, dtype, device="cpu"):
        return torch.tensor(x, dtype=dtype, device=device)

    @staticmethod
    def device(x):
        return x.device if isinstance(x, torch.Tensor) else None


__all__ = ["WarmUpGpu", "is_on_device", "squared_distances", "torch_kernel", "torchtools"]
