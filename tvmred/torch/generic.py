"""``generic_sum`` & co (pykeops' shortcuts for ``Genred``): the output declaration gives the
axis -- ``"a = Vi(1)"`` reduces over j -- and, for ``generic_argkmin``, K (``"a = Vi(K)"``)."""

from __future__ import annotations

from typing import Any

from ..generic import generic
from .genred import Genred


def generic_sum(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """``Genred(formula, aliases, "Sum", axis)``; e.g. ``generic_sum("Exp(-SqDist(x,y))",
    "a = Vi(1)", "x = Vi(3)", "y = Vj(3)")``."""
    return generic(Genred, "Sum", formula, output, aliases, kwargs)


def generic_logsumexp(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """``Genred(formula, aliases, "LogSumExp", axis)`` (a scalar formula)."""
    return generic(Genred, "LogSumExp", formula, output, aliases, kwargs)


def generic_argmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """``Genred(formula, aliases, "ArgMin", axis)``."""
    return generic(Genred, "ArgMin", formula, output, aliases, kwargs)


def generic_argkmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """``Genred(formula, aliases, "ArgKMin", axis, opt_arg=K)``, K the output's dim."""
    return generic(Genred, "ArgKMin", formula, output, aliases, kwargs)
