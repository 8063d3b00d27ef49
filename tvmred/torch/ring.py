"""The process group of a sharded reduction as a ring (:mod:`tvmred.torch.distributed`):
neighbours, staging memory, JSON metadata exchanges, sends and receives that time out, and
the packing of several tensors into one aligned message."""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from .. import settings

Shape = tuple[int, ...]
DATA, ACC = 1, 2  # message tags (gloo matches on them; NCCL on the order, which is the same)
ALIGN = 64  # bytes: segments of a packed shard start aligned, so the kernels take them as is


class CommunicationError(RuntimeError):
    """An exchange with the other ranks failed or timed out: a rank did not make the same
    sharded call (forward or backward), or died."""


class Comm:
    """The process group as a ring: this rank, its neighbours, where transfers are staged
    (CUDA memory for NCCL, host memory otherwise), and the timeout of every wait."""

    def __init__(self, group: Optional[Any], timeout: Optional[float]) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "tvmred.torch.distributed needs an initialised process group: call "
                "torch.distributed.init_process_group (torchrun sets its environment)"
            )
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given group")
        self.size = dist.get_world_size(self.group)
        self.seconds = float(timeout if timeout is not None else settings.dist_timeout())
        self.timeout = datetime.timedelta(seconds=self.seconds)
        self.backend = str(dist.get_backend(self.group))
        self.left = dist.get_global_rank(self.group, (self.rank - 1) % self.size)
        self.right = dist.get_global_rank(self.group, (self.rank + 1) % self.size)

    def staging(self, device: torch.device) -> torch.device:
        """Where tensors of ``device`` travel: CUDA memory when NCCL can carry them, else the
        host (gloo)."""
        if device.type == "cuda" and "nccl" in self.backend:
            return device
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def wait(self, works: Sequence[Any], what: str) -> None:
        try:
            for w in works:
                w.wait(self.timeout)
        except RuntimeError as e:
            raise CommunicationError(
                f"rank {self.rank}: {what} failed or timed out after {self.seconds:g} s -- "
                "every rank of the group must make the same sharded calls, forward and "
                f"backward, in the same order ({e})"
            ) from None

    def all_gather_json(self, obj: Any, what: str) -> list:
        """Every rank's ``obj`` (JSON-able), in rank order: two small all_gathers."""
        dev = self.staging(torch.device("cpu"))
        data = json.dumps(obj).encode()
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        ns = [torch.empty_like(n) for _ in range(self.size)]
        self.wait([dist.all_gather(ns, n, group=self.group, async_op=True)], what)
        lens = [int(x) for x in ns]
        buf = torch.zeros(max(lens), dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(dev)
        bufs = [torch.empty_like(buf) for _ in range(self.size)]
        self.wait([dist.all_gather(bufs, buf, group=self.group, async_op=True)], what)
        return [json.loads(bytes(b[:k].cpu().numpy())) for b, k in zip(bufs, lens)]

    def all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """The sum of ``t`` over the ranks."""
        s = t.to(self.staging(t.device)).contiguous()
        self.wait([dist.all_reduce(s, group=self.group, async_op=True)], what)
        return s.to(t.device)

    def exchange(self, sends: list, recvs: list) -> list:
        """Post ``(tensor, tag)`` sends to the left neighbour and receives from the right one."""
        ops = [dist.P2POp(dist.isend, t, self.left, self.group, tag) for t, tag in sends]
        ops += [dist.P2POp(dist.irecv, t, self.right, self.group, tag) for t, tag in recvs]
        return dist.batch_isend_irecv(ops) if ops else []

    def ring(
        self,
        own: list[torch.Tensor],
        shapes: Callable[[int], list[Shape]],
        step: Callable[[int, list[torch.Tensor]], Optional[torch.Tensor]],
        acc_shape: Optional[Callable[[int], Shape]] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Optional[torch.Tensor]:
        """Call ``step(q, shard of rank q)`` for q = rank, rank+1, ..., rank-1 (mod size):
        ``own`` is this rank's shard, ``shapes(q)`` the shapes of rank q's; the next shard's
        transfer is posted before ``step`` runs.  With ``acc_shape``, ``step`` returns a
        partial result for rank q's rows (shape ``acc_shape(q)``): the partials of all ranks
        are summed along the ring and the sum for this rank's rows is returned."""
        P, r, stage = self.size, self.rank, self.staging(device)
        cur, flat = list(own), pack(own, stage) if own and P > 1 else None
        carry: Optional[torch.Tensor] = None
        for t in range(P):
            q = (r + t) % P
            sends, recvs, nxt, acc_in = [], [], None, None
            if own and t < P - 1:
                nxt = torch.empty(
                    packed_size(shapes((q + 1) % P), dtype), dtype=dtype, device=stage
                )
                sends.append((flat, DATA))
                recvs.append((nxt, DATA))
            if acc_shape is not None and t > 0:
                acc_in = torch.empty(acc_shape(q), dtype=dtype, device=stage)
                sends.append((carry, ACC))
                recvs.append((acc_in, ACC))
            works = self.exchange(sends, recvs)
            partial = step(q, cur)
            self.wait(works, f"the ring transfer of rank {(q + 1) % P}'s rows")
            if acc_shape is not None:
                assert partial is not None
                total = partial if acc_in is None else partial + acc_in.to(device)
                carry = total.to(stage).contiguous()
            if nxt is not None:
                flat, cur = nxt, unpack(nxt, shapes((q + 1) % P), device)
        if acc_shape is None:
            return None
        assert carry is not None
        if P == 1:
            return carry.to(device)
        mine = torch.empty(acc_shape(r), dtype=dtype, device=stage)
        self.wait(self.exchange([(carry, ACC)], [(mine, ACC)]), "the return of the sums")
        return mine.to(device)


def offsets(shapes: list[Shape], dtype: torch.dtype) -> list[int]:
    """Start of each segment in a packed buffer (elements), each aligned to ALIGN bytes."""
    step = max(1, ALIGN // torch.empty(0, dtype=dtype).element_size())
    offs, at = [], 0
    for s in shapes:
        offs.append(at)
        n = 1
        for d in s:
            n *= d
        at += -(-n // step) * step
    return offs + [at]


def packed_size(shapes: list[Shape], dtype: torch.dtype) -> int:
    return offsets(shapes, dtype)[-1]


def pack(ts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors in one flat buffer on ``device`` (one message per ring step)."""
    offs = offsets([tuple(t.shape) for t in ts], ts[0].dtype)
    flat = torch.zeros(offs[-1], dtype=ts[0].dtype, device=device)
    for t, o in zip(ts, offs):
        flat[o : o + t.numel()].copy_(t.reshape(-1))
    return flat


def unpack(flat: torch.Tensor, shapes: list[Shape], device: torch.device) -> list[torch.Tensor]:
    flat = flat.to(device)
    offs = offsets(shapes, flat.dtype)
    out = []
    for s, o in zip(shapes, offs):
        n = 1
        for d in s:
            n *= d
        out.append(flat[o : o + n].view(s))
    return out
