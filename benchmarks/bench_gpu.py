"""GPU timings: the cases of the CUDA issue's table, tvmred beside dense torch (or torch's
best kernel: ``scaled_dot_product_attention`` for attention) in one run.

Each case is first checked against a float64 dense reference on its first 256 output rows
(the selected distances for ArgKMin): a wrong answer is reported and not timed.  Timed with
CUDA events (min over repeats after a warm-up).  Prints one JSON line per case with the
ratio torch/tvmred and the issue's target, and writes them all to ``--out`` with the card's
name.  ``--device cpu --scale 0.01`` runs the same script on the CPU at 1% of the sizes (a
dry run of its logic; the numbers mean nothing).  pykeops 2.3 is not run here: it segfaults at
its first GPU compile with CUDA 13.

    python benchmarks/bench_gpu.py [--out PATH] [--device cuda] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import min_time  # noqa: E402

GAUSS = ("Exp(-SqDist(x,y))*b", ["x = Vi(D)", "y = Vj(D)", "b = Vj(E)"])
ROWS = 256
SASS = Path(__file__).resolve().parent / "results" / "sass_sm90.json"


def sass_case(name: str) -> Optional[str]:
    """The case of ``benchmarks/sass_count.py`` whose kernel this run's case compiles to
    (the kernel variant from TVMRED_CUDA_TILE / TVMRED_CUDA_ROWS), None if it has none."""
    import os

    tile = int(os.environ.get("TVMRED_CUDA_TILE") or 0)
    rows = int(os.environ.get("TVMRED_CUDA_ROWS") or 1)
    blocks = int(os.environ.get("TVMRED_CUDA_TWO_PASS") or 0)
    scheme = f"j-tiles {tile}" if tile else "thread per row"
    if rows > 1:
        scheme += f", {rows} rows/thread"
    if name.startswith("attention"):  # counted with 64-row tiles (what fits 48 KiB)
        two = f", two-pass {blocks}" if blocks and tile else ""
        return f"softmax weights D=64, E=64, j-tiles 64{two}" if tile and rows == 1 else None
    kind = {"gauss D=3": "Gaussian D=3", "gauss D=64": "Gaussian D=64",
            "LogSumExp D=3": "LogSumExp D=3", "ArgKMin K=10 D=3": "KMin_ArgKMin K=10 D=3"}  # fmt: skip
    for prefix, sass in kind.items():
        if name.startswith(prefix):
            counted = not (blocks and tile and sass.startswith("LogSumExp"))  # D=3: not counted
            return f"{sass}, {scheme}" if counted else None
    return None


def predicted_s(name: str, M: int, N: int, device: torch.device) -> Optional[float]:
    """The time the SASS instruction count predicts (sass_count.py's model: one warp
    instruction per scheduler per clock, 16 MUFU.EX2 per SM per clock; the card's SM count,
    sass_count's clock), None without a counted kernel."""
    import sass_count

    if not SASS.is_file():
        return None
    rows = {r["case"]: r for r in json.loads(SASS.read_text())["rows"]}
    row = rows.get(sass_case(name) or "")
    if row is None or "per_pair" not in row:
        return None
    sms = sass_count.SMS
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    clock = sass_count.CLOCK
    issue = M * N * row["per_pair"] / 32 / (sms * sass_count.SCHEDULERS * clock)
    mufu = M * N / (sms * sass_count.MUFU_PER_SM * clock) if row["marker"] == "MUFU.EX2" else 0
    return max(issue, mufu)


def timer(device: torch.device) -> Callable[[Callable, int], float]:
    if device.type != "cuda":
        return min_time

    def cuda_time(fn, repeats):
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            best = min(best, a.elapsed_time(b) / 1e3)
        return best

    return cuda_time


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-300)).item()


def cases(scale: float) -> list[dict]:
    """(name, formula, aliases, reduction, kw, sizes, reference, torch baseline, target s)."""
    n = lambda v: max(64, int(v * scale))  # noqa: E731

    def d2(x, y):
        return torch.cdist(x.double(), y.double()) ** 2

    def gauss_ref(x, y, b):
        return torch.exp(-d2(x[:ROWS], y)) @ b.double()

    def gauss_torch(x, y, b):
        return torch.exp(-(torch.cdist(x, y) ** 2)) @ b

    out = []
    for M, N, target in ((1e4, 1e4, 0.15e-3), (1e5, 1e5, 4e-3), (1e6, 1e6, 0.35), (1e3, 1e6, 3e-3)):
        out.append(dict(name=f"gauss D=3 M={M:g} N={N:g}", formula=GAUSS, dims=(3, 3), red="Sum", kw={},
                        M=n(M), N=n(N), ref=gauss_ref, torch=gauss_torch, target=target))  # fmt: skip
    out.append(dict(name="gauss D=64 E=1 M=N=1e5", formula=GAUSS, dims=(64, 1), red="Sum", kw={},
                    M=n(1e5), N=n(1e5), ref=gauss_ref, torch=gauss_torch, target=60e-3))  # fmt: skip
    out.append(dict(name="LogSumExp D=3 M=N=1e5", formula=("-SqDist(x,y)", ["x = Vi(D)", "y = Vj(D)"]),
                    dims=(3, 0), red="LogSumExp", kw={}, M=n(1e5), N=n(1e5),
                    ref=lambda x, y: torch.logsumexp(-d2(x[:ROWS], y), 1, keepdim=True),
                    torch=lambda x, y: torch.logsumexp(-(torch.cdist(x, y) ** 2), 1, keepdim=True),
                    target="1.5x gauss 1e5"))  # fmt: skip
    out.append(dict(name="ArgKMin K=10 D=3 M=N=1e5", formula=("SqDist(x,y)", ["x = Vi(D)", "y = Vj(D)"]),
                    dims=(3, 0), red="ArgKMin", kw={"opt_arg": 10}, M=n(1e5), N=n(1e5),
                    ref=lambda x, y: d2(x[:ROWS], y).topk(10, dim=1, largest=False).values,
                    torch=lambda x, y: torch.cdist(x, y).topk(10, dim=1, largest=False).indices,
                    target="1.5x gauss 1e5"))  # fmt: skip

    def attn_ref(q, k, v):
        return torch.softmax(q[:ROWS].double() @ k.double().T, 1) @ v.double()

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            q[None], k[None], v[None], scale=1.0
        )[0]

    out.append(dict(name="attention SumSoftMaxWeight D=64 M=N=1e4",
                    formula=("(q|k)", ["q = Vi(64)", "k = Vj(64)", "v = Vj(64)"]), dims=None,
                    red="SumSoftMaxWeight", kw={"formula2": "v"}, M=n(1e4), N=n(1e4), ref=attn_ref,
                    torch=sdpa, target=3e-3))  # fmt: skip
    return out


def inputs(case: dict, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    formula, aliases = case["formula"]
    if case["dims"] is not None:
        aliases = [
            a.replace("(D)", f"({case['dims'][0]})").replace("(E)", f"({case['dims'][1]})")
            for a in aliases
        ]
    case["aliases"] = aliases
    out = []
    for a in aliases:
        dim = int(a.split("(")[1].rstrip(")"))
        rows = case["M"] if "Vi" in a else case["N"]
        t = torch.rand(rows, dim, generator=g)
        out.append((t / dim**0.5 if dim >= 16 else t).to(device))
    return out


def run_case(case: dict, device: torch.device, time_fn) -> dict:
    from tvmred.torch import Genred

    args = inputs(case, device)
    g = Genred(case["formula"][0], case["aliases"], reduction_op=case["red"], axis=1, **case["kw"])
    row: dict[str, Any] = {
        "case": case["name"],
        "M": case["M"],
        "N": case["N"],
        "target_s": case["target"],
    }
    t0 = time.perf_counter()
    out = g(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - t0
    want = case["ref"](*args)
    got = out[:ROWS]
    if case["red"] == "ArgKMin":
        got = (torch.cdist(args[0][:ROWS].double(), args[1].double()) ** 2).gather(1, got)
    err = rel_error(got, want)
    row["rel_error"] = err
    if err > 1e-4:
        row["wrong"] = True
        return row
    reps = 3 if case["M"] * case["N"] >= 1e12 else 10
    row["tvmred_s"] = time_fn(lambda: g(*args), reps)
    row["ns_per_pair"] = row["tvmred_s"] / case["M"] / case["N"] * 1e9
    pred = predicted_s(case["name"], case["M"], case["N"], device)
    if pred is not None:  # the SASS model's time for this kernel variant, and the gap
        row["sass_case"], row["predicted_s"] = sass_case(case["name"]), pred
        row["measured/predicted"] = row["tvmred_s"] / pred
    if case["torch"] is not None and case["M"] * case["N"] <= 1e8:
        try:
            row["torch_s"] = time_fn(lambda: case["torch"](*args), reps)
            row["torch/tvmred"] = row["torch_s"] / row["tvmred_s"]
        except RuntimeError as e:  # out of memory, ...
            row["torch_error"] = str(e)[:200]
    return row


def reference_rows(device: torch.device, time_fn, scale: float) -> list[dict]:
    """The reference example, forward and forward + gradient w.r.t. y, checked first."""
    from tvmred.torch import Genred

    M, N = max(64, int(3000 * scale)), max(64, int(5000 * scale))
    ref = Genred(
        "Square(p-a)*Exp(x+y)", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"], axis=1
    )
    g = torch.Generator().manual_seed(1)
    x, y, aa, pp = (torch.rand(*s, generator=g).to(device) for s in ((M, 3), (N, 3), (N, 1), (1,)))
    y.requires_grad_()
    c = ref(x, y, aa, pp)
    e = torch.rand_like(c)
    (gy,) = torch.autograd.grad(c, y, e)
    yd = y.detach().double().requires_grad_()
    dense = (
        ((pp.double() - aa.double().T) ** 2)[..., None] * torch.exp(x.double()[:, None] + yd[None])
    ).sum(1)
    (gr,) = torch.autograd.grad(dense, yd, e.double())
    errs = (rel_error(c, dense), rel_error(gy, gr))
    rows = [{"case": "reference forward", "rel_error": errs[0], "target_s": 0.1e-3},
            {"case": "reference forward+grad y", "rel_error": errs[1], "target_s": 0.2e-3}]  # fmt: skip
    if max(errs) <= 1e-4:
        rows[0]["tvmred_s"] = time_fn(lambda: ref(x, y, aa, pp), 10)
        rows[1]["tvmred_s"] = time_fn(lambda: torch.autograd.grad(ref(x, y, aa, pp), y, e), 10)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/gpu/bench_gpu.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--scale", type=float, default=1.0, help="sizes x scale (dry runs)")
    p.add_argument("--only", nargs="*", help="substrings of case names to run")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    time_fn = timer(device)
    rows = []
    for case in cases(a.scale):
        if a.only and not any(s in case["name"] for s in a.only):
            continue
        try:
            row = run_case(case, device, time_fn)
        except Exception as e:  # one failing case must not hide the others
            row = {"case": case["name"], "error": f"{type(e).__name__}: {e}"[:500]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not a.only:
        for row in reference_rows(device, time_fn, a.scale):
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": name, "scale": a.scale, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
