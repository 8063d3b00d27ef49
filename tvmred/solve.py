"""``KernelSolve`` (pykeops' generic conjugate-gradient solver), binding-agnostic part.

Solves ``(alpha Id + K) a = b`` for a formula ``K(a)`` linear in the variable ``a`` (often
``K_ij a_j``), reduced by a Sum: ``(K a)_i = sum_j F(x_i, y_j, a_j)``.  ``K`` must be symmetric
positive definite (not checked, as in pykeops).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .frontend import make_reduction
from .parse import parse_aliases
from .reductions import Reduction


def conjugate_gradient(linop: Callable[[Any], Any], b: Any, eps: float = 1e-6) -> Any:
    """pykeops' ``ConjugateGradientSolver``: ``a`` with ``linop(a) = b``, stopping when
    ``|r|^2 < size(b) eps^2`` (r the residual)."""
    size = b.numel() if hasattr(b, "numel") else b.size
    delta = size * eps**2
    r = b * 1
    nr2 = (r**2).sum()
    if nr2 < delta:
        return 0 * r
    a, p = 0 * r, r * 1
    while True:
        mp = linop(p)
        alp = nr2 / (p * mp).sum()
        a = a + alp * p
        r = r - alp * mp
        nr2new = (r**2).sum()
        if nr2new < delta:
            return a
        p = r + (nr2new / nr2) * p
        nr2 = nr2new


class KernelSolve:
    r"""Solver of ``(alpha Id + K) a = b`` (pykeops' ``KernelSolve``).

    Parameters
    ----------
    formula, aliases : str, list of str
        As in ``Genred``; the formula must be linear in the variable ``varinvalias``.
    varinvalias : str
        The alias (or ``"Var(pos,dim,cat)"``) of the unknown ``a``.
    axis : int
        1: ``(K a)_i = sum_j F`` (a, b indexed by i); 0: sum over i (indexed by j).
    dtype_acc, use_double_acc, sum_scheme :
        As in ``Genred``; the other pykeops options are accepted and ignored.

    Calling ``solver(*args, alpha=1e-10, eps=1e-6, backend="auto", device_id=-1,
    ranges=None)`` passes ``b`` in the position of ``a``; it returns ``a``.
    """

    def __init__(
        self,
        formula: str,
        aliases: Sequence[str],
        varinvalias: str,
        axis: int = 0,
        dtype_acc: str = "auto",
        use_double_acc: bool = False,
        sum_scheme: str = "auto",
        enable_chunks: bool = True,
        rec_multVar_highdim: Optional[bool] = None,
        dtype: Optional[str] = None,
        cuda_type: Optional[str] = None,
        use_fast_math: bool = True,
    ) -> None:
        acc = "float64" if use_double_acc else dtype_acc
        self.reduction = make_reduction(formula, aliases, "Sum", axis, acc, sum_scheme=sum_scheme)
        self.varinvpos = _position(varinvalias, aliases)
        self.formula, self.aliases, self.axis = formula, list(aliases), axis
        check_unknown(self.reduction, self.varinvpos)

    #: ``solve(reduction, pos, args, backend, device_id, alpha, eps, ranges)``: the binding's
    solve: Callable[..., Any]

    def __call__(
        self,
        *args: Any,
        backend: str = "auto",
        device_id: int = -1,
        alpha: float = 1e-10,
        eps: float = 1e-6,
        ranges: Any = None,
    ) -> Any:
        r = self.reduction
        if len(args) != r.nargs:
            raise ValueError(f"KernelSolve takes {r.nargs} arguments, got {len(args)}")
        return self.solve(r, self.varinvpos, args, backend, device_id, alpha, eps, ranges)


def _position(alias: str, aliases: Sequence[str]) -> int:
    if alias.strip().startswith("Var("):
        return int(alias.strip()[4:].split(",")[0])
    for a in parse_aliases(list(aliases)):
        if a.name == alias.strip():
            return a.var.params[0]
    raise ValueError(f"KernelSolve: {alias!r} is not among the aliases {list(aliases)}")


def check_unknown(r: Reduction, pos: int) -> None:
    """The unknown is indexed like the output (the reduced index is the other one)."""
    if not 0 <= pos < r.nargs:
        raise ValueError(f"KernelSolve: no argument at position {pos}")
    cat = r.args[pos].params[2]
    if cat != 1 - r.out_cat or r.args[pos].dim != r.formula.dim:
        raise ValueError(
            f"KernelSolve: the unknown {r.describe(pos)} must be indexed by the reduced index "
            f"and have the formula's dimension {r.formula.dim} (the system is square)"
        )
