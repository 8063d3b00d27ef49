"""The exceptions tvmred raises on purpose, one per stage (the public ones are re-exported by
``tvmred``)."""

from __future__ import annotations


class FormulaError(ValueError):
    """A malformed formula: unknown operation, wrong number of arguments, bad parameter."""


class DimError(ValueError):
    """A formula whose dimensions do not fit an operation's rule."""


class ParseError(FormulaError):
    """A formula that cannot be read; the message shows where."""


class KernelNotExported(LookupError):
    """A loaded library lacks the kernel a call needs (and no compiler is available)."""
