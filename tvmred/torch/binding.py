"""``tvmred.torch.Genred``: the torch binding of :class:`tvmred.genred.Genred`."""

from __future__ import annotations

from typing import Optional

import torch

from .. import genred
from .autograd import torch_call


class Genred(genred.Genred):
    __doc__ = genred.Genred.__doc__

    def __call__(
        self,
        *args: torch.Tensor,
        backend: str = "auto",
        device_id: int = -1,
        ranges: object = None,
        out: Optional[torch.Tensor] = None,
    ):
        return torch_call(self.reduction, args, backend, device_id, ranges, out)
