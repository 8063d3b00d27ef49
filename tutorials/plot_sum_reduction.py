"""
Sum reduction
=============

The reference example of tvmred, after pykeops' gallery example
``plot_generic_syntax_pytorch.py``.  We compute the ``(M, 3)`` tensor :math:`c` with entries

.. math::

   c_i^u = \\sum_j (p - a_j)^2 \\exp(x_i^u + y_j^u),

where :math:`x` is ``(M, 3)``, :math:`y` is ``(N, 3)``, :math:`a` is ``(N, 1)`` and :math:`p`
is a scalar stored as a ``(1,)`` tensor — first with a tvmred :class:`Genred` (a symbolic
formula compiled by TVM, never materialising the ``M x N`` kernel matrix), then with a dense
PyTorch expression.  For ``float32`` and ``float64`` it

* times the forward call — the first one includes compiling the kernel, or loading it from the
  on-disk cache (``$TVMRED_CACHE_DIR``, default ``~/.cache/tvmred``) on later runs, and the
  very first one also imports TVM; the second call is warm;
* computes and times the gradient :math:`g = \\partial c^\\top e` with respect to :math:`y`,
  for a random "grad output" :math:`e`, which tvmred derives symbolically and compiles too;
* prints the largest relative difference between tvmred and PyTorch, and asserts it is small
  (float32 < 1e-4, float64 < 1e-10).

Finally it plots the first 40 rows of each column of the gradient, tvmred against PyTorch,
and saves the figure next to this script (``plot_sum_reduction.png``).
"""

###############################################################################
# Setup
# -----

import os
import sys
import time
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    matplotlib.use("Agg")  # headless: render to a file only
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import tvmred.cache  # noqa: E402
from tvmred.torch import Genred  # noqa: E402

M, N = 3000, 5000
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}

formula = "Square(p-a)*Exp(x+y)"
variables = [
    "x = Vi(3)",  # argument 0: i-variable of dimension 3
    "y = Vj(3)",  # argument 1: j-variable of dimension 3
    "a = Vj(1)",  # argument 2: j-variable of dimension 1
    "p = Pm(1)",  # argument 3: parameter of dimension 1
]


def dense(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The same reduction in plain PyTorch, through the dense ``(M, N, 3)`` array."""
    return (((p - a.T) ** 2)[..., None] * torch.exp(x[:, None, :] + y[None, :, :])).sum(1)


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def kernels_since(before: dict) -> str:
    """How the kernels used since the ``tvmred.cache.stats`` snapshot ``before`` were obtained."""
    now = tvmred.cache.stats
    built = now["compiled"] - before["compiled"]
    loaded = now["disk_hits"] - before["disk_hits"]
    return f"{built} kernel(s) compiled, {loaded} loaded from disk"


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entry-wise relative difference ``|a - b| / |b|`` (all entries here are > 0)."""
    return ((a - b).abs() / b.abs()).max().item()


###############################################################################
# tvmred vs PyTorch, in both precisions
# -------------------------------------
# The reduction runs over :math:`j`, i.e. axis ``1`` of the (virtual) kernel matrix, so the
# output is indexed by :math:`i`.  The gradient with respect to :math:`y` is the adjoint of
# the differential, applied to :math:`e`: a reduction over :math:`i` that tvmred compiles
# on the first backward call.

# PyTorch imports sympy on its first autograd.grad call (~0.3 s): pay that here, so that the
# timings below measure tvmred only.
_w = torch.ones(2, requires_grad=True)
torch.autograd.grad(2 * _w, _w, torch.ones(2))
torch.manual_seed(0)
results = {}
for dtype in (torch.float32, torch.float64):
    x = torch.rand(M, 3, dtype=dtype)
    y = torch.rand(N, 3, dtype=dtype, requires_grad=True)
    a = torch.rand(N, 1, dtype=dtype)
    p = torch.rand(1, dtype=dtype)

    my_routine = Genred(formula, variables, reduction_op="Sum", axis=1)
    before, tvm_imported = dict(tvmred.cache.stats), "tvm" in sys.modules
    c, t_first = timed(my_routine, x, y, a, p)
    how_c = kernels_since(before) + ("" if tvm_imported else ", TVM imported")
    c, t_warm = timed(my_routine, x, y, a, p)
    e = torch.rand_like(c)
    before = dict(tvmred.cache.stats)
    g, tg_first = timed(torch.autograd.grad, c, y, e, retain_graph=True)
    how_g = kernels_since(before)
    g, tg_warm = timed(torch.autograd.grad, c, y, e)
    g = g[0]

    c_torch, t_torch = timed(dense, x, y, a, p)
    (g_torch,), tg_torch = timed(torch.autograd.grad, c_torch, y, e)

    err_c, err_g = rel_diff(c, c_torch), rel_diff(g, g_torch)
    name = str(dtype).removeprefix("torch.")
    print(f"--- {name}: M={M}, N={N}")
    print(f"tvmred forward : first call {t_first:6.3f} s ({how_c}), warm {t_warm:.4f} s")
    print(f"tvmred gradient: first call {tg_first:6.3f} s ({how_g}), warm {tg_warm:.4f} s")
    print(f"torch  dense   : forward {t_torch:7.4f} s, gradient {tg_torch:7.4f} s")
    print(f"max relative difference tvmred vs torch: values {err_c:.2e}, gradients {err_g:.2e}")
    assert err_c < TOLERANCE[dtype], f"{name}: forward differs from torch by {err_c:.2e}"
    assert err_g < TOLERANCE[dtype], f"{name}: gradient differs from torch by {err_g:.2e}"
    results[name] = (g.detach(), g_torch.detach())

###############################################################################
# Plot the gradients next to each other
# -------------------------------------
# The first 40 rows of each of the three columns of :math:`g` (float32): the curves overlap.

g, g_torch = results["float32"]
fig, axes = plt.subplots(3, 1, figsize=(6, 6), sharex=True)
for u, ax in enumerate(axes):
    ax.plot(g[:40, u].numpy(), "-", label="tvmred")
    ax.plot(g_torch[:40, u].numpy(), "--", label="PyTorch")
    ax.set_ylabel(f"$g_j^{u}$")
axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
axes[0].set_title("Gradient of $c$ w.r.t. $y$ (float32)", loc="left")
axes[-1].set_xlabel("row $j$")
fig.tight_layout()
png = Path(__file__).with_suffix(".png")
fig.savefig(png, dpi=80)
print(f"saved {png}")
if matplotlib.get_backend().lower() != "agg":
    plt.show()
