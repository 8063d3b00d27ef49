"""pykeops clients, unchanged, on tvmred through ``tvmred.compat.install_pykeops_alias()``:
geomloss' ``SamplesLoss`` (online and multiscale backends) and gpytorch's
``gpytorch.kernels.keops`` kernels agree with their dense backends -- and really take their
KeOps path (they silently fall back to dense code when the import of pykeops fails), which
is checked by counting tvmred calls.  Skipped when geomloss / gpytorch are not installed
(``pip install geomloss gpytorch``)."""

import importlib
import sys

import pytest
import torch

import tvmred.torch.binding
import tvmred.torch.lazytensor
from tvmred.compat import install_pykeops_alias

F64 = torch.float64


@pytest.fixture(scope="module")
def alias():
    """pykeops -> tvmred for this module's tests (sys.modules restored afterwards)."""
    saved = {k: v for k, v in sys.modules.items() if k == "pykeops" or k.startswith("pykeops.")}
    install_pykeops_alias(force=True)
    yield
    for k in [k for k in sys.modules if k == "pykeops" or k.startswith("pykeops.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def client(name: str, modules: list):
    """Import ``name`` with the alias in place, re-importing the modules that test for KeOps
    at import time if the client was imported before (then without tvmred)."""
    pytest.importorskip(name, reason=f"{name} is not installed (optional client test)")
    for m in modules:
        importlib.reload(importlib.import_module(m))
    return importlib.import_module(name)


@pytest.fixture
def calls(monkeypatch):
    """Counts tvmred reductions (Genred calls and LazyTensor reductions), with their ranges."""
    seen = []
    for mod, name in (
        (tvmred.torch.binding, "torch_call"),
        (tvmred.torch.lazytensor, "torch_call"),
        (tvmred.torch.lazytensor, "apply"),  # a plain LazyTensor reduction
    ):
        real = getattr(mod, name)

        def counted(r, *args, _real=real, _call=name == "torch_call", **kw):
            # call(r, args, backend, device_id, ranges, out); apply(r, *tensors)
            seen.append(kw.get("ranges", args[3] if _call and len(args) > 3 else None))
            return _real(r, *args, **kw)

        monkeypatch.setattr(mod, name, counted)
    return seen


GEOMLOSS = [
    "geomloss._legacy.utils",
    "geomloss._legacy.kernel_samples",
    "geomloss._legacy.sinkhorn_divergence",
    "geomloss._legacy.sinkhorn_samples",
    "geomloss._legacy.samples_loss",
    "geomloss",
]


@pytest.fixture(scope="module")
def geomloss(alias):
    gl = client("geomloss", GEOMLOSS)
    ss = importlib.import_module("geomloss._legacy.sinkhorn_samples")
    assert ss.keops_available and ss.LazyTensor is tvmred.torch.LazyTensor
    return gl


def clouds(B=None):
    g = torch.Generator().manual_seed(0)
    shape = (B,) if B else ()
    x = torch.rand(*shape, 150, 3, generator=g, dtype=F64)
    y = 0.1 + 0.8 * torch.rand(*shape, 200, 3, generator=g, dtype=F64)
    return x.requires_grad_(), y


def loss_and_grad(geomloss, x, y, **kw):
    L = geomloss.SamplesLoss(**kw)(x, y)
    return L.detach(), torch.autograd.grad(L.sum(), x)[0]


@pytest.mark.parametrize(
    "kw,tol",
    [
        # dense costs |x|^2 - 2<x,y> + |y|^2 round differently, amplified by 1/eps = 400
        ({"loss": "sinkhorn", "p": 2, "blur": 0.05}, 1e-7),
        ({"loss": "gaussian", "blur": 0.5}, 1e-12),
        # geomloss' dense distances are sqrt(max(d^2, 1e-8)): 1e-4 at d = 0
        ({"loss": "energy"}, 1e-4),
    ],
)
def test_geomloss_online_matches_tensorized(geomloss, calls, kw, tol):
    x, y = clouds()
    L, g = loss_and_grad(geomloss, x, y, backend="online", **kw)
    assert len(calls) > 0
    n = len(calls)
    L0, g0 = loss_and_grad(geomloss, x, y, backend="tensorized", **kw)
    assert len(calls) == n  # the dense backend does not call tvmred
    torch.testing.assert_close(L, L0, rtol=tol, atol=tol * L0.abs().max().item())
    torch.testing.assert_close(g, g0, rtol=tol, atol=tol * g0.abs().max().item())


def test_geomloss_online_batched(geomloss, calls):
    x, y = clouds(B=2)  # batched LazyTensors (B, N, 1, D), a logsumexp over dim 2
    L, g = loss_and_grad(geomloss, x, y, loss="sinkhorn", p=2, blur=0.1, backend="online")
    assert len(calls) > 0
    L0, g0 = loss_and_grad(geomloss, x, y, loss="sinkhorn", p=2, blur=0.1, backend="tensorized")
    torch.testing.assert_close(L, L0, rtol=1e-7, atol=1e-12)  # see the sinkhorn case above
    torch.testing.assert_close(g, g0, rtol=1e-7, atol=1e-7 * g0.abs().max().item())


def dense_lse(cost, D, dtype="float32"):
    """geomloss' multiscale log-sum-exp ``log sum_j exp(B_j - P * cost(X_i, Y_j))`` over the
    (i, j) pairs that pykeops' ``ranges`` keep, in dense torch: the reference."""
    assert cost == "(SqDist(X,Y) / IntCst(2))"

    def log_conv(x, y, b, p, ranges=None):
        c = ((x[:, None] - y[None]) ** 2).sum(-1) / 2
        f = b.view(1, -1) - p * c
        if ranges is not None:
            keep = torch.zeros_like(c, dtype=torch.bool)
            rng, slices, red = ranges[:3]
            for k, (i0, i1) in enumerate(rng.tolist()):
                for j0, j1 in red[(slices[k - 1] if k else 0) : slices[k]].tolist():
                    keep[i0:i1, j0:j1] = True
            assert 0 < keep.double().mean() < 1  # a truncated kernel
            f = f.masked_fill(~keep, -torch.inf)
        return torch.logsumexp(f, 1, keepdim=True)

    return log_conv


def test_geomloss_multiscale_sinkhorn(geomloss, calls, monkeypatch):
    """The same multiscale algorithm with tvmred's block-sparse reductions and with a dense
    masked log-sum-exp; and close to the tensorized result (geomloss' coarse-to-fine
    scheme is not the same computation, so a loose tolerance there)."""
    x, y = clouds()
    kw = dict(loss="sinkhorn", p=2, blur=0.03, backend="multiscale", truncate=2, scaling=0.7)
    L, g = loss_and_grad(geomloss, x, y, **kw)
    assert sum(r is not None for r in calls) > 0  # block-sparse tvmred reductions
    monkeypatch.setattr(sys.modules["geomloss._legacy.sinkhorn_samples"], "keops_lse", dense_lse)
    L0, g0 = loss_and_grad(geomloss, x, y, **kw)
    torch.testing.assert_close(L, L0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, g0, rtol=1e-8, atol=1e-10)
    Lt, _ = loss_and_grad(geomloss, x, y, **{**kw, "backend": "tensorized"})
    assert abs(L - Lt) < 0.05 * abs(Lt)


def test_geomloss_multiscale_kernel(geomloss, calls):
    x, y = clouds()
    L, g = loss_and_grad(
        geomloss, x, y, loss="gaussian", blur=0.3, backend="multiscale", truncate=5
    )
    assert sum(r is not None for r in calls) > 0
    L0, g0 = loss_and_grad(geomloss, x, y, loss="gaussian", blur=0.3, backend="tensorized")
    torch.testing.assert_close(L, L0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, g0, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ gpytorch


@pytest.fixture(scope="module")
def gpytorch(alias):
    gp = client("gpytorch", ["gpytorch.kernels.keops.keops_kernel"])
    kk = importlib.import_module("gpytorch.kernels.keops.keops_kernel")
    assert kk.LazyTensor is tvmred.torch.LazyTensor
    for m in ("rbf_kernel", "matern_kernel", "periodic_kernel", "__init__"):
        importlib.reload(
            importlib.import_module(f"gpytorch.kernels.keops.{m}".replace(".__init__", ""))
        )
    return gp


KERNELS = {
    "rbf": lambda k: k.RBFKernel(ard_num_dims=2),
    "matern52": lambda k: k.MaternKernel(nu=2.5),
    "matern12": lambda k: k.MaternKernel(nu=0.5),
    "periodic": lambda k: k.PeriodicKernel(),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_gpytorch_keops_kernels(gpytorch, calls, name):
    """Marginal log-likelihood, its gradients w.r.t. the hyperparameters, and a kernel
    matmul: KeOps path (tvmred) vs the same kernels with ``use_keops(False)``."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(120, 2, generator=g, dtype=F64)
    Y = torch.sin(6 * X[:, 0]) + 0.1 * torch.randn(120, generator=g, dtype=F64)
    v = torch.rand(120, 3, generator=g, dtype=F64)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(X, Y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean = gpytorch.means.ConstantMean()
            self.cov = gpytorch.kernels.ScaleKernel(KERNELS[name](gpytorch.kernels.keops))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.cov(x))

    res = []
    for keops in (True, False):
        torch.manual_seed(1)  # the same probe vectors for CG / Lanczos
        model = GP().double()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        n = len(calls)
        with gpytorch.settings.use_keops(keops), gpytorch.settings.max_cholesky_size(50):
            out = model(X)
            mv = out.lazy_covariance_matrix @ v
            loss = -mll(out, Y)
            grads = torch.autograd.grad(loss, list(model.parameters()))
        assert (len(calls) > n) == keops  # tvmred is called exactly when KeOps is on
        res.append((loss.detach(), mv.detach(), grads))
    (l1, m1, g1), (l0, m0, g0) = res
    torch.testing.assert_close(m1, m0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-8)  # CG, up to its tolerance
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gpytorch_batched_kernel_matmul(gpytorch, calls):
    x = torch.rand(2, 90, 3, dtype=F64)
    v = torch.rand(2, 90, 4, dtype=F64)
    k = gpytorch.kernels.keops.RBFKernel(batch_shape=torch.Size([2])).double()
    k.lengthscale = torch.tensor([[[0.3]], [[0.7]]], dtype=F64)
    with gpytorch.settings.max_cholesky_size(10):
        got = k(x) @ v
    assert len(calls) > 0
    with gpytorch.settings.use_keops(False):
        want = k(x) @ v
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
