"""
Gaussian convolution and KNN sharded over processes
===================================================

Launch with (CPU processes, gloo; on a machine with several GPUs the same script uses NCCL and
one GPU per process)::

    torchrun --nproc-per-node 2 tutorials/distributed_gaussian.py

Every process (rank) holds a contiguous block of the points -- here the same random data is
generated on every rank and each keeps its block, as a data loader would hand it out -- and
``DistributedGenred`` computes, for this rank's i-rows,

.. math::

   c_i = \\sum_j \\exp(-\\|x_i - y_j\\|^2 / s^2)\\, b_j \\quad\\text{over all the } j
   \\text{ of all the ranks,}

the j-blocks travelling round the ranks while each rank computes on the block in hand.  The
gradient w.r.t. this rank's j-rows sums the contributions of every rank's i-rows; the gradient
w.r.t. the parameter ``s`` is summed over the ranks.  Then a KNN query (``ArgKMin``) returns
global indices.

Rank 0 gathers the results and compares them with one process running the plain ``Genred`` on
all the points, printing the largest relative differences (asserted < 1e-4 in float32).
"""

import os
import time

import torch
import torch.distributed as dist

from tvmred.torch import Genred
from tvmred.torch.distributed import DistributedGenred, gather, shard

M, N, D = 20_000, 30_000, 3
FORMULA = "Exp(-SqDist(x,y)/Square(s))*b"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "s = Pm(1)"]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> None:
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"])
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)

    # The same global data on every rank (fixed seed); each rank keeps its block of rows.
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(M, D, generator=g), torch.rand(N, D, generator=g)
    b, s = torch.randn(N, 1, generator=g), torch.tensor([0.25])
    x_r, y_r, b_r = (shard(t).to(dev) for t in (x, y, b))
    y_r.requires_grad_()
    s_r = s.to(dev).requires_grad_()

    # ---------------------------------------------------------------- the sharded call
    conv = DistributedGenred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    for attempt in ("first (compiles)", "warm"):
        t0 = time.perf_counter()
        c_r = conv(x_r, y_r, b_r, s_r)  # (this rank's M rows, 1)
        t_fwd = time.perf_counter() - t0
        loss = (c_r**2).sum()  # each rank's part of the loss; every rank runs the backward
        t0 = time.perf_counter()
        gy_r, gs = torch.autograd.grad(loss, [y_r, s_r])
        t_bwd = time.perf_counter() - t0
        print(
            f"rank {rank}: {attempt} call: forward {t_fwd:.3f} s, backward {t_bwd:.3f} s",
            flush=True,
        )

    knn = DistributedGenred("SqDist(x,y)", ALIASES[:2], reduction_op="ArgKMin", opt_arg=5, axis=1)
    idx_r = knn(x_r, y_r.detach())  # (this rank's M rows, 5): global indices into y

    c, gy, idx = gather(c_r), gather(gy_r), gather(idx_r)  # everything on every rank
    print(f"rank {rank}/{size}: {x_r.shape[0]} i-rows, {y_r.shape[0]} j-rows", flush=True)

    # ------------------------------------------------------- one process, all the points
    if rank == 0:
        xs, ys, bs, ss = (t.to(dev) for t in (x, y, b, s))
        ys.requires_grad_()
        ss.requires_grad_()
        c1 = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)(xs, ys, bs, ss)
        gy1, gs1 = torch.autograd.grad((c1**2).sum(), [ys, ss])
        idx1 = Genred("SqDist(x,y)", ALIASES[:2], reduction_op="ArgKMin", opt_arg=5, axis=1)(
            xs, ys.detach()
        )
        errs = {
            "output": relative(c, c1),
            "grad y": relative(gy, gy1),
            "grad s": relative(gs, gs1),
        }
        same = (idx == idx1).float().mean().item()
        print("sharded vs one process, max relative difference:", errs)
        print(f"grad s: sharded {gs.item():.6g}, one process {gs1.item():.6g}")
        print(f"KNN: {same:.2%} of the global indices identical to one process's")
        assert all(e < 1e-4 for e in errs.values()), errs
        assert same > 0.999  # float32 near-ties may swap two neighbours
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
