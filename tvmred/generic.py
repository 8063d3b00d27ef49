"""pykeops' ``generic_sum``, ``generic_logsumexp``, ``generic_argmin``, ``generic_argkmin``:
``Genred`` with the axis (and K) read from an output declaration such as ``"a = Vi(1)"``
(an output indexed by i is a reduction over j)."""

from __future__ import annotations

from typing import Any, Callable

from .parse import parse_aliases


def output_type(output: str) -> tuple[int, int]:
    """(axis, dim) of an output declaration ``"name = Vi(dim)"`` or ``"Vj(dim)"``."""
    (decl,) = parse_aliases([output])
    _, dim, cat = decl.var.params
    if cat not in (0, 1):
        raise ValueError(f"the output {output!r} must be declared Vi(...) or Vj(...)")
    return 1 - cat, dim


def generic(genred: Callable, reduction_op: str, formula: str, output: str, aliases, kw) -> Any:
    axis, dim = output_type(output)
    if reduction_op == "ArgKMin":
        kw = {"opt_arg": dim, **kw}
    return genred(formula, list(aliases), reduction_op=reduction_op, axis=axis, **kw)


def helpers(genred: Callable) -> tuple[Callable, ...]:
    """``generic_sum``, ``generic_logsumexp``, ``generic_argmin``, ``generic_argkmin`` for a
    binding's ``Genred``."""

    def generic_sum(formula: str, output: str, *aliases: str, **kwargs: Any) -> Any:
        """``Genred(formula, aliases, "Sum", axis)``; e.g. ``generic_sum("Exp(-SqDist(x,y))",
        "a = Vi(1)", "x = Vi(3)", "y = Vj(3)")``."""
        return generic(genred, "Sum", formula, output, aliases, kwargs)

    def generic_logsumexp(formula: str, output: str, *aliases: str, **kwargs: Any) -> Any:
        """``Genred(formula, aliases, "LogSumExp", axis)`` (a scalar formula)."""
        return generic(genred, "LogSumExp", formula, output, aliases, kwargs)

    def generic_argmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Any:
        """``Genred(formula, aliases, "ArgMin", axis)``."""
        return generic(genred, "ArgMin", formula, output, aliases, kwargs)

    def generic_argkmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Any:
        """``Genred(formula, aliases, "ArgKMin", axis, opt_arg=K)``, K the output's dim."""
        return generic(genred, "ArgKMin", formula, output, aliases, kwargs)

    return generic_sum, generic_logsumexp, generic_argmin, generic_argkmin
