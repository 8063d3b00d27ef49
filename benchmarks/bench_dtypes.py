"""Half inputs beside float32: the bytes a call reads and its time.

A float16 / bfloat16 call passes its tensors to the kernel as they are (loaded and converted
to float32 in the kernel: no float32 copy made outside it), so it reads half the bytes of a
float32 call.  Printed per case: the dtype, the input bytes the kernel reads (the tensors'
own sizes), the best time, and the ratios to float32; also the answer's error against
float64 (relative to its largest value), the bound being one rounding of the dtype.

    python benchmarks/bench_dtypes.py [--sizes 10000 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_suite.py / README "Performance"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402

from tvmred.torch import Genred  # noqa: E402

CASES = {
    "Gaussian D=3 Sum": ("Exp(-SqDist(x,y))*b", 3, "Sum", None),
    "Gaussian D=64 Sum": ("Exp(-SqDist(x,y)*IntInv(64))*b", 64, "Sum", None),
    "ArgKMin K=10 D=3": ("SqDist(x,y)", 3, "ArgKMin", 10),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10000])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = timing.machine()
    print(json.dumps(info))
    rows = []
    print(f"{'case':<20} {'N=M':>7} {'dtype':>9} {'input bytes':>12} {'time':>10} "
          f"{'bytes/f32':>9} {'time/f32':>9} {'rel. err':>9}")  # fmt: skip
    for name, (formula, d, red, k) in CASES.items():
        aliases = [f"x = Vi({d})", f"y = Vj({d})"] + (["b = Vj(1)"] if red == "Sum" else [])
        g = Genred(formula, aliases, reduction_op=red, axis=1, opt_arg=k)
        for n in args.sizes:
            torch.manual_seed(0)
            base = [torch.rand(n, d), torch.rand(n, d)] + (
                [torch.rand(n, 1)] if red == "Sum" else []
            )
            f32 = {}
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                ts = [t.to(dtype) for t in base]
                out = g(*ts)
                t = timing.min_time(lambda: g(*ts), 5)
                nbytes = sum(t_.numel() * t_.element_size() for t_ in ts)
                err = float("nan")
                if red == "Sum":  # against float64 on the same (rounded) inputs
                    exact = g(*[t_.double() for t_ in ts])
                    err = ((out.double() - exact).abs().max() / exact.abs().max()).item()
                if dtype == torch.float32:
                    f32 = {"bytes": nbytes, "time": t}
                row = {"case": name, "n": n, "dtype": str(dtype).split(".")[1],
                       "input_bytes": nbytes, "time_s": t, "bytes_vs_f32": nbytes / f32["bytes"],
                       "time_vs_f32": t / f32["time"], "rel_err": err}  # fmt: skip
                rows.append(row)
                print(f"{name:<20} {n:>7} {row['dtype']:>9} {nbytes:>12} {t * 1e3:>8.2f}ms "
                      f"{row['bytes_vs_f32']:>9.2f} {row['time_vs_f32']:>9.2f} {err:>9.1e}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
