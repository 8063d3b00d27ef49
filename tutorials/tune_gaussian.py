"""
Autotuning a reduction
======================

``tvmred.tune`` measures the knobs of tvmred's schedule template for one reduction (here the
number of output rows each SIMD block handles), on data of the size you care about, and
stores the fastest setting in the tuning database (``$TVMRED_CACHE_DIR/tuning.json``).  Every
later compile of that reduction on that target picks it up automatically — in this process
and in the next ones.  The same from the shell::

    tvmred tune "Exp(-SqDist(x,y))*b" "x = Vi(3)" "y = Vj(3)" "b = Vj(3)" --M 10000 --N 10000

This script tunes the Gaussian convolution at N = M = 10^4 and times the default and the tuned
kernels side by side through ``Genred``.
"""

import os
import time

import torch

import tvmred
from tvmred import tune
from tvmred.torch import Genred

FORMULA = "Exp(-SqDist(x,y))*b"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"]
N = 10_000


def best_of(fn, repeats=7):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    x, y, b = torch.rand(N, 3), torch.rand(N, 3), torch.rand(N, 3)
    routine = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    default = best_of(lambda: routine(x, y, b))  # compiled with the template's defaults

    record = tune.tune(FORMULA, ALIASES, reduction_op="Sum", axis=1, sizes=(N, N))
    print("\nmeasured settings:")
    for t in record["trials"]:
        print(f"  {t['config']}: {t['time_s'] * 1e3:7.2f} ms")

    tvmred.clear_cache(disk=False)  # drop the in-process kernels: the next call uses the record
    tuned_routine = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
    tuned = best_of(lambda: tuned_routine(x, y, b))
    ref = routine(x[:100], y, b)
    torch.testing.assert_close(tuned_routine(x[:100], y, b), ref)
    print(f"\nGaussian convolution, N = M = {N}, float32, {torch.get_num_threads()} threads:")
    print(f"  default schedule {default * 1e3:7.2f} ms")
    print(f"  tuned {record['config']} {tuned * 1e3:7.2f} ms   speed-up {default / tuned:.2f}x")


if __name__ == "__main__":
    main()
