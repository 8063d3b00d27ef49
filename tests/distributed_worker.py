"""One rank of tests/test_distributed.py, run as ``python distributed_worker.py SPEC RANK``.

SPEC (JSON) names the world size, the gloo rendezvous file, the cases file written by the
parent (global tensors, per case) and the row splits.  The rank takes its rows of every case,
calls ``DistributedGenred`` (and the backward, with its rows of the parent's cotangent), and
saves its outputs and gradients to ``out_dir/rank{RANK}.pt`` for the parent to compare with the
single-process results.  With ``"errors": true`` it also runs the bad calls and records, per
call, the exception each rank raised.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def rows(split: list[int], rank: int) -> slice:
    """Rank ``rank``'s rows: ``split`` holds the boundaries, [0, b1, ..., n]."""
    return slice(split[rank], split[rank + 1])


def local(t: torch.Tensor, cat: int, splits: dict, rank: int) -> torch.Tensor:
    if cat == 2:
        return t.clone()
    return t[..., rows(splits[str(cat)], rank), :].clone()


#: LazyTensor expressions of the parent's "lazy" cases (the same formulas as their Genred
#: references): (x_i, y_j, b_j) -> a reduction made with call=False
LAZY = {
    "gauss_sum": lambda x, y, b: ((-((x - y) ** 2).sum(-1)).exp() * b).sum(dim=1, call=False),
    "sqdist_argkmin": lambda x, y, b: ((x - y) ** 2).sum(-1).argKmin(3, dim=0, call=False),
    "lse": lambda x, y, b: (b.sum(-1) - ((x - y) ** 2).sum(-1)).logsumexp(dim=1, call=False),
}


def run_case(case: dict, splits: dict, rank: int) -> dict:
    from tvmred.torch import LazyTensor
    from tvmred.torch.distributed import DistributedGenred, sharded_reduction

    args = [local(t, c, splits, rank) for t, c in zip(case["args"], case["cats"])]
    if case["cot"] is not None:
        args = [a.requires_grad_() for a in args]
    if case.get("lazy"):
        x, y, b = args  # the LazyTensors are built from this rank's shards
        red = LAZY[case["lazy"]](
            LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :]), LazyTensor(b[None, :, :])
        )
        out = sharded_reduction(red, timeout=120)
    else:
        dg = DistributedGenred(
            case["formula"],
            case["aliases"],
            reduction_op=case["red"],
            axis=case["axis"],
            opt_arg=case["k"],
            formula2=case["formula2"],
            timeout=120,
        )
        out = dg(*args)
    res: dict = {"out": out}
    if case["cot"] is not None:
        value = out[0] if isinstance(out, tuple) else out
        d = case["row_dim"]  # the output rows come after the batch dims
        cot = case["cot"].narrow(d, splits[str(1 - case["axis"])][rank], value.shape[d])
        res["grads"] = torch.autograd.grad(value, args, cot)
    return res


def run_errors(rank: int) -> dict:
    """The bad calls: per call, (exception type, message) on this rank, or None."""
    from tvmred.torch.distributed import DistributedGenred

    al = ["x = Vi(3)", "y = Vj(3)"]
    g = torch.Generator().manual_seed(rank)
    x, y = (
        torch.rand(5, 3, generator=g, dtype=torch.float64),
        torch.rand(6, 3, generator=g, dtype=torch.float64),
    )
    sq = DistributedGenred("SqDist(x,y)", al, reduction_op="Sum", axis=1, timeout=60)
    calls = {
        "width": lambda: sq(x, torch.rand(6, 4, dtype=torch.float64) if rank == 1 else y),
        "dtype": lambda: sq(x.float(), y.float()) if rank == 1 else sq(x, y),
        "no_rows": lambda: sq(x, y[:0] if rank == 1 else y),
        "other_reduction": lambda: (
            DistributedGenred("SqDist(x,y)", al, reduction_op="Min", axis=1, timeout=60)(x, y)
            if rank == 1
            else sq(x, y)
        ),
        "requires_grad": lambda: sq(x.clone().requires_grad_(rank == 0), y),
        "batch": lambda: sq(x.expand(2, 5, 3) if rank == 0 else x, y),
        "ok_after": lambda: sq(x, y),  # the group is still usable after the errors above
    }
    got: dict = {}
    for name, fn in calls.items():
        try:
            got[name] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 -- recorded for the parent
            got[name] = (type(e).__name__, str(e))
    return got


def run_helpers(rank: int) -> dict:
    """rows_of, shard and gather on uneven pieces, and gather's error on every rank."""
    from tvmred.torch.distributed import gather, rows_of, shard

    got: dict = {"rows_of": [rows_of(5).start, rows_of(5).stop]}
    got["shard"] = shard(torch.arange(20.0).reshape(2, 5, 2))
    got["gather"] = gather(torch.full((2, rank + 1, 3), float(rank)))
    got["gather_dim0"] = gather(torch.full((rank + 2, 4, 1), rank), dim=0)
    try:
        gather(torch.zeros(2, 3 + rank))
        got["gather_error"] = ("ok", "")
    except ValueError as e:
        got["gather_error"] = ("ValueError", str(e))
    return got


def run_hangs(rank: int) -> tuple:
    """Calls the other rank does not make: rank 0 runs a backward that rank 1 skips, then rank
    1 makes a forward call that rank 0 skips.  Each must raise, not hang: (type, message)."""
    from tvmred.torch.distributed import DistributedGenred

    sq = DistributedGenred("SqDist(x,y)", ["x = Vi(1)", "y = Vj(1)"], axis=1, timeout=1.5)
    x, y = torch.rand(3, 1, requires_grad=True), torch.rand(4, 1)
    out = sq(x, y)  # both ranks
    try:
        if rank == 0:
            torch.autograd.grad(out.sum(), [x])
        else:
            time.sleep(3)  # after rank 0 has given up
            sq(x, y)
        got: tuple = ("ok", "")
    except Exception as e:  # noqa: BLE001
        got = (type(e).__name__, str(e))
    if rank == 0:
        time.sleep(3)  # alive while rank 1 waits
    return got


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(sys.argv[2])
    dist.init_process_group(
        "gloo",
        init_method=f"file://{spec['rendezvous']}",
        rank=rank,
        world_size=spec["world"],
        timeout=datetime.timedelta(seconds=120),
    )
    cases = torch.load(spec["cases"])
    results = {name: run_case(c, spec["splits"], rank) for name, c in cases.items()}
    if spec.get("errors"):
        results["errors"] = run_errors(rank)
        results["helpers"] = run_helpers(rank)
    out = Path(spec["out_dir"]) / f"rank{rank}.pt"
    if spec.get("errors"):
        results["hang"] = run_hangs(rank)  # last: it leaves the group broken
    torch.save(results, out)
    sys.stdout.flush()
    os._exit(0)  # no teardown of a group that may be broken


if __name__ == "__main__":
    sys.exit(main())
