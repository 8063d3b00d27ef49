"""``generic_sum`` & co (pykeops' shortcuts for ``Genred``): the output declaration gives the
axis -- ``"a = Vi(1)"`` reduces over j -- and, for ``generic_argkmin``, K (``"a = Vi(K)"``)."""

from __future__ import annotations

from ..generic import helpers
from .binding import Genred

generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = helpers(Genred)
