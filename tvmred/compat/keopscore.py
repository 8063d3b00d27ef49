"""``keopscore`` under the alias: the module-level switches pykeops code sets.  tvmred
compiles differently (TVM, no C++ generation), so they change nothing: ``auto_factorize``
(pykeops factorises formulas; tvmred shares equal sub-formulas by construction), ``verbose``,
``debug_ops``."""

from __future__ import annotations

__tvmred__ = True
__version__ = "2.3"
auto_factorize = False
verbose = False
debug_ops = False
