"""pykeops code on tvmred, through the alias (``tvmred.compat.install_pykeops_alias``): the
module paths pykeops users import (``pykeops.config``, ``pykeops.{torch,numpy}.utils`` and
``.operations``, ``pykeops.numpy.cluster``, ``keopscore``), pykeops' helpers, the keywords
of reduction calls on ``@``/``matvec``, ``keops_tensordot``/``keops_kron``, variables that
simplify away, ``grid_cluster``'s definition -- each against an independent reference -- and
KeOps' own test files run unchanged (``benchmarks/upstream_check.py``)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loops import softdtw_numpy

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT.parent / "shared" / "keops-upstream" / "test"
F64 = torch.float64


@pytest.fixture(scope="module")
def pk():
    """pykeops -> tvmred for this module's tests (sys.modules and the finder restored)."""
    from tvmred import compat

    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("pykeops", "keopscore")}
    compat.install_pykeops_alias(force=True)
    yield importlib.import_module("pykeops")
    for k in [k for k in sys.modules if k.split(".")[0] in ("pykeops", "keopscore")]:
        del sys.modules[k]
    sys.modules.update(saved)
    sys.meta_path.remove(compat._FINDER)


def test_module_paths_and_config(pk):
    import keopscore
    import pykeops.config
    import pykeops.numpy.utils
    import pykeops.torch.cluster
    import pykeops.torch.operations
    import pykeops.torch.utils

    import tvmred.numpy
    import tvmred.torch
    from tvmred.settings import cache_dir

    assert pk.torch is tvmred.torch and pk.numpy is tvmred.numpy
    assert pykeops.torch.operations.KernelSolve is tvmred.torch.KernelSolve
    assert pykeops.config.torch_found and pykeops.config.numpy_found
    assert pykeops.config.gpu_available == torch.cuda.is_available()  # no GPU: both False here
    assert pykeops.config.get_build_folder() == str(cache_dir()) == pk.get_build_folder()
    keopscore.auto_factorize = False  # what pykeops' own tests do: accepted
    assert pk.__version__ == "2.3"


def test_common_module_paths(pk):
    """``pykeops.common``'s names pykeops code imports (KeOps' own example
    ``plot_gpu_select_numpy.py`` imports ``get_gpu_number`` from ``gpu_utils``)."""
    from pykeops.common.gpu_utils import get_gpu_number
    from pykeops.common.lazy_tensor import ComplexGenericLazyTensor, GenericLazyTensor
    from pykeops.common.utils import axis2cat, cat2axis
    from pykeops.torch import ComplexLazyTensor, LazyTensor

    assert get_gpu_number() == torch.cuda.device_count()
    assert [axis2cat(0), axis2cat(1), cat2axis(0), cat2axis(1)] == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="Axis"):
        axis2cat(2)
    x = LazyTensor(torch.rand(3, 1, 2))
    z = ComplexLazyTensor(torch.rand(3, 1, 2, dtype=torch.complex64))
    assert isinstance(x, GenericLazyTensor) and not isinstance(x, ComplexGenericLazyTensor)
    assert isinstance(z, GenericLazyTensor) and isinstance(z, ComplexGenericLazyTensor)


def test_utils_are_the_dense_references(pk):
    from pykeops.numpy.utils import grad_np_kernel, log_np_kernel, log_sum_exp, np_kernel
    from pykeops.numpy.utils import squared_distances as np_sq
    from pykeops.torch.utils import squared_distances, torch_kernel

    rng = np.random.default_rng(1)
    x, y = rng.random((7, 3)), rng.random((5, 3))
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(np_sq(x, y), d2, atol=1e-12)
    t = torch.from_numpy
    torch.testing.assert_close(squared_distances(t(x), t(y)), t(d2))
    s = 0.7
    for kernel, k in [
        ("gaussian", np.exp(-d2 / s**2)),
        ("laplacian", np.exp(-np.sqrt(d2) / s)),
        ("cauchy", 1 / (1 + d2 / s**2)),
        ("inverse_multiquadric", 1 / np.sqrt(1 + d2 / s**2)),
    ]:
        np.testing.assert_allclose(np_kernel(x, y, s, kernel), k, rtol=1e-9)
        np.testing.assert_allclose(log_np_kernel(x, y, s, kernel), np.log(k), rtol=1e-9)
        torch.testing.assert_close(torch_kernel(t(x), t(y), s, kernel), t(k))
        h = 1e-6  # the derivative in r^2, by central differences of the kernel itself
        kp = {"gaussian": lambda q: np.exp(-q / s**2), "laplacian": lambda q: np.exp(-np.sqrt(q) / s),
              "cauchy": lambda q: 1 / (1 + q / s**2),
              "inverse_multiquadric": lambda q: 1 / np.sqrt(1 + q / s**2)}[kernel]  # fmt: skip
        fd = (kp(d2 + h) - kp(d2 - h)) / (2 * h)
        np.testing.assert_allclose(grad_np_kernel(x, y, s, kernel), fd, rtol=1e-5)
    m = rng.normal(size=(4, 6)) * 30
    np.testing.assert_allclose(log_sum_exp(m, axis=1), np.log(np.exp(m).sum(1)), rtol=1e-12)


def test_install_checks_and_helpers(pk, capsys, tmp_path, monkeypatch):
    pk.test_torch_bindings()
    pk.test_numpy_bindings()
    out = capsys.readouterr().out
    assert out.count("is working") == 2
    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path / "a"))
    pk.set_build_folder(str(tmp_path / "b"))
    assert pk.get_build_folder() == str(tmp_path / "b")
    pk.set_verbose(False)


def test_reduction_keywords_on_matmul_matvec_and_methods(pk):
    from pykeops.torch import LazyTensor

    x, y, b = (
        torch.rand(30, 3, dtype=F64),
        torch.rand(40, 3, dtype=F64),
        torch.rand(40, 2, dtype=F64),
    )
    K = (-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))).exp()
    ref = torch.exp(-(torch.cdist(x, y) ** 2)) @ b
    torch.testing.assert_close(K.__matmul__(b, backend="CPU"), ref)
    torch.testing.assert_close(K.matvec(b, sum_scheme="direct_sum"), ref)
    torch.testing.assert_close(K.t().rmatvec(b, backend="CPU"), ref)
    out = torch.empty(30, 2, dtype=F64)
    res = (K * LazyTensor(b[None])).sum(dim=1, out=out, backend="CPU")
    assert res is out
    torch.testing.assert_close(out, ref)
    w = torch.rand(40, 1, dtype=F64)
    lse = (-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))).logsumexp(
        dim=1, other=LazyTensor(w[None])
    )
    torch.testing.assert_close(
        lse, torch.logsumexp(-(torch.cdist(x, y) ** 2) + w.log().t(), 1, True)
    )


def test_variables_that_simplify_away_still_count():
    """pykeops numbers the arguments by the variables written in the formula, even those
    its simplification removes (the second derivative of a linear formula is 0)."""
    from tvmred.numpy import Genred

    g = Genred("Grad(Grad(x + Var(1,3,1), x, Var(2,3,0)),x, Var(3,3,0))", ["x=Vi(0,3)"], axis=1)
    x, y = np.random.rand(5, 3), np.random.rand(6, 3)
    assert np.array_equal(g(x, y, x, x), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="takes 4 arguments"):
        g(x, y)


def test_tensordot_and_kron_against_torch():
    from tvmred.torch import Genred, LazyTensor

    a = torch.randn(3, 4 * 7, dtype=F64, requires_grad=True)
    b = torch.randn(5, 7 * 2, dtype=F64)
    A, B = LazyTensor(a[:, None]), LazyTensor(b[None])
    a3, b3 = a.reshape(3, 4, 7), b.reshape(5, 7, 2)
    got = A.keops_tensordot(B, (4, 7), (7, 2), (1,), (0,)).sum(dim=1)
    want = torch.einsum("ikl,jlm->ikm", a3, b3).reshape(3, 8)
    torch.testing.assert_close(got, want)
    g = Genred("TensorDot(x, y, [4, 7], [7, 2], [1], [0])", ["x = Vi(28)", "y = Vj(14)"], axis=1)
    torch.testing.assert_close(g(a.detach(), b), want.detach())
    # a permutation of the free axes: free axis k goes to output position perm[k]
    got = A.keops_tensordot(B, (4, 7), (7, 2), (1,), (0,), (1, 0)).sum(dim=1)
    torch.testing.assert_close(got, torch.einsum("ikl,jlm->imk", a3, b3).reshape(3, 8))
    kron = A.keops_kron(B, [4, 7], [7, 2]).sum(dim=1)
    want = torch.stack(
        [sum(torch.kron(a3[i], b3[j]).flatten() for j in range(5)) for i in range(3)]
    )
    torch.testing.assert_close(kron, want)
    (ga,) = torch.autograd.grad(kron.sum(), a)
    (gw,) = torch.autograd.grad(want.sum(), a)
    torch.testing.assert_close(ga, gw)


def test_grid_cluster_follows_pykeops_definitions():
    """torch: cells floor((x - min x) / size), int32 labels in lexicographic cell order;
    numpy: cells floor(x / size), int64 -- each checked against an independent labelling."""
    from tvmred.numpy import cluster as ncl
    from tvmred.torch import cluster as tcl

    x = torch.rand(500, 3, dtype=F64) * 2 - 0.3
    size = 0.17
    lab = tcl.grid_cluster(x, size)
    cells = np.floor((x.numpy() - x.numpy().min(0)) / size).astype(np.int64)
    want = np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1)
    assert lab.dtype == torch.int32 and np.array_equal(lab.numpy(), want)
    nlab = ncl.grid_cluster(x.numpy(), size)
    want = np.unique(np.floor(x.numpy() / size).astype(np.int64), axis=0, return_inverse=True)[1]
    assert nlab.dtype == np.int64 and np.array_equal(nlab, want.reshape(-1))
    xs, ls = ncl.sort_clusters(x.numpy(), nlab)
    r = ncl.cluster_ranges(ls)
    assert np.array_equal(np.diff(r, axis=1)[:, 0], np.bincount(nlab))
    cent = ncl.cluster_centroids(x.numpy(), nlab)
    for k in (0, len(r) - 1):
        np.testing.assert_allclose(cent[k], x.numpy()[nlab == k].mean(0))


def test_numpy_alias_imports_no_torch():
    code = ("import sys, tvmred.compat; tvmred.compat.install_pykeops_alias(); "
            "import pykeops.numpy, pykeops.numpy.utils, pykeops.config, pykeops.common.utils; "
            "from pykeops.common.gpu_utils import get_gpu_number; get_gpu_number(); "
            "print('torch' in sys.modules)")  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


#: a few quick files of KeOps' own suite, for the default run (``-m slow`` runs them all)
QUICK = ["test_kron.py", "test_lazytensor_gaussian_cpu.py", "test_numpy.py"]
DTYPE_FILES = {"test_complex.py", "test_complex_numpy.py"}  # issue: dtypes


def _upstream(files):
    if not UPSTREAM.is_dir():
        pytest.skip(f"KeOps' test suite is not at {UPSTREAM} (shared/keops-upstream)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import upstream_check
    finally:
        sys.path.pop(0)
    lines = []
    res = upstream_check.check(UPSTREAM, only=files, exclude=DTYPE_FILES, echo=lines.append)
    failed = [f"{k}: {v[1]}" for k, v in res.items() if v[0] == "FAIL"]
    assert not failed, "\n".join(lines)
    return res


def test_keops_own_quick_files_pass():
    res = _upstream(QUICK)
    assert sum(v[0] == "PASS" for v in res.values()) == len(QUICK)


@pytest.mark.slow
def test_keops_own_suite_passes():
    """Every file but the dtype ones (complex) and those needing a GPU."""
    _upstream(())


def test_bspline_is_a_partition_of_unity():
    """B-splines of order k on sorted knots t_0..t_n-1 sum to 1 on [t_k, t_n-k-1), are >= 0,
    and order 0 is the indicator of each knot interval (their defining properties)."""
    from tvmred.torch import LazyTensor

    knots = torch.sort(torch.rand(9, dtype=F64)).values
    x = knots[3] + (knots[5] - knots[3]) * torch.rand(40, 1, dtype=F64)  # inside [t_2, t_6)
    T, X = LazyTensor(knots[None, None, :]), LazyTensor(x[:, None, :])
    one = torch.ones(1, 1, dtype=F64)
    for k in (0, 1, 2):
        b = (T.bspline(X, k) * LazyTensor(one[None])).sum(dim=1)
        assert b.shape == (40, 9 - k - 1)
        assert (b >= -1e-12).all()
        torch.testing.assert_close(b.sum(1), torch.ones(40, dtype=F64))
    ind = (T.bspline(X, 0) * LazyTensor(one[None])).sum(dim=1)
    want = ((knots[:-1] <= x) & (x < knots[1:])).to(F64)
    torch.testing.assert_close(ind, want)


def _pairwise(fn, x, v):
    """sum_j fn(x_i, v_j), by torch's own autograd functions, float64."""
    return torch.stack([sum(fn(xi, vj) for vj in v) for xi in x])[:, None]


def test_trace_divergence_laplacian_against_torch_autograd():
    from tvmred.torch import Genred, LazyTensor

    torch.manual_seed(3)
    x = torch.randn(7, 3, dtype=torch.float64)
    v = torch.randn(9, 3, dtype=torch.float64)
    aliases = ["x = Vi(3)", "v = Vj(3)"]

    def gauss(xi, vv):
        return torch.exp(-((xi - vv) ** 2).sum())

    jac = torch.autograd.functional.jacobian
    hess = torch.autograd.functional.hessian
    cases = {
        # a linear map v -> x * v (elementwise) and a scalar linear form <x, v>
        "TraceOperator(x*v, v)": lambda xi, vj: jac(lambda w: xi * w, vj).trace(),
        "TraceOperator((x|v), v)": lambda xi, vj: jac(lambda w: xi @ w, vj).sum(),
        "Divergence(Exp(-SqDist(x,v))*v, v)": lambda xi, vj: jac(
            lambda w: gauss(xi, w) * w, vj
        ).trace(),
        "Laplacian(Exp(-SqDist(x,v)), v)": lambda xi, vj: hess(lambda w: gauss(xi, w), vj).trace(),
    }
    for formula, ref in cases.items():
        out = Genred(formula, aliases, reduction_op="Sum", axis=1)(x, v)
        torch.testing.assert_close(out, _pairwise(ref, x, v), msg=formula)
    X, V = LazyTensor(x[:, None]), LazyTensor(v[None])
    torch.testing.assert_close(
        (X * V).trace_operator(V).sum(1), _pairwise(cases["TraceOperator(x*v, v)"], x, v)
    )
    with pytest.raises(Exception, match="dim"):
        Genred("Divergence(x, v)", ["x = Vi(2)", "v = Vj(3)"], reduction_op="Sum", axis=1)


def test_difference_matrix_as_pykeops_lays_it_out():
    from tvmred.torch import LazyTensor

    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    out = LazyTensor(x[:, None]).difference_matrix(LazyTensor(y[None])).sum(1)
    ref = torch.zeros(5, 6, dtype=torch.float64)
    for j in range(4):
        for a in range(2):
            for b in range(3):
                ref[:, a * 3 + b] += x[:, b] - y[j, a]  # out[j n + i] = x_i - y_j
    torch.testing.assert_close(out, ref)


def test_softdtw_sqdist_against_the_textbook_recursion():
    from tvmred.errors import DimError
    from tvmred.torch import Genred, LazyTensor

    torch.manual_seed(5)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64)
    gamma = 0.7
    out = LazyTensor(x[:, None]).softdtw_sqdist(LazyTensor(y[None]), gamma).sum(1)
    xs, ys = x.detach().numpy(), y.numpy()
    ref = [[sum(softdtw_numpy(xi, yj, gamma) for yj in ys)] for xi in xs]
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12)
    # the gradient against finite differences of the textbook recursion
    (g,) = torch.autograd.grad(out.sum(), x)
    h, k, c = 1e-6, 2, 1
    xp, xm = xs.copy(), xs.copy()
    xp[k, c] += h
    xm[k, c] -= h
    fd = sum(softdtw_numpy(xp[k], yj, gamma) - softdtw_numpy(xm[k], yj, gamma) for yj in ys)
    np.testing.assert_allclose(g[k, c].item(), fd / (2 * h), rtol=1e-6)
    # gamma must be scalar; longer sequences: tests/test_loops.py
    with pytest.raises(DimError, match="gamma must be scalar"):
        Genred("SoftDTW_SqDist(x,y,g)", ["x = Vi(9)", "y = Vj(9)", "g = Pm(2)"], axis=1)
