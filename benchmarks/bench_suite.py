"""tvmred vs pykeops 2.3 vs dense torch (and faiss-cpu's exact search for the KNN cases),
side by side in one process, on the CPU.

Each case is timed for every library in the same run (min over repeats after a warm-up, all
cores); the table prints times and the ratios pykeops/tvmred, torch/tvmred and faiss/tvmred.
Before it is timed, every library's answer is compared with a float64 dense reference (its
first 256 output rows; the selected distances for ArgKMin): a wrong answer is reported, not
timed.  Dense
torch is skipped where its (M, N) intermediates would not fit in ~4 GB.  pykeops is imported
lazily and skipped if absent (``pip install -e ".[bench]"``).  The first call of each case
(``*_first_call_s``) runs with empty kernel caches (a fresh ``TVMRED_CACHE_DIR`` / pykeops
build folder): compile + run, TVM already imported.

    python benchmarks/bench_suite.py [--quick] [--only NAME ...] [--out PATH] [--plot PATH]

Writes JSON (default ``benchmarks/results/suite_cpu.json``) and, with ``--plot``, a log-log plot
of time vs N for the Gaussian convolution.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

# OpenMP threads that spin after a torch op steal the cores of the next TVM (or pykeops) kernel;
# passive waiting avoids it (README, "Performance").  Set before torch loads its OpenMP runtime;
# it applies to every library in this process alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import timing  # noqa: E402
from timing import min_time  # noqa: E402


@dataclass
class Case:
    name: str
    formula: str
    aliases: list
    M: int
    N: int
    reduction: str = "Sum"
    opt_arg: Optional[int] = None
    formula2: Optional[str] = None
    dtype: torch.dtype = torch.float32
    grad_of: Optional[int] = None  # time forward + gradient w.r.t. this argument
    dense: Optional[Callable] = None  # torch reference on full tensors
    dims: dict = field(default_factory=dict)
    flops: Optional[float] = None  # per (i, j) pair, counted by hand (see FLOPS); None: -


def gauss_dense(x, y, b):
    return torch.exp(-(torch.cdist(x, y) ** 2)) @ b


def lse_dense(x, y, g):
    return torch.logsumexp(-(torch.cdist(x, y) ** 2) * g, dim=1, keepdim=True)


def argkmin_dense(x, y):
    return torch.cdist(x, y).topk(10, dim=1, largest=False).indices


def softmax_dense(q, k, v):
    return torch.softmax(q @ k.T, dim=1) @ v


def cosine_dense(x, y, b):
    n = torch.nn.functional.normalize
    return torch.exp(3 * n(x, dim=1) @ n(y, dim=1).T) @ b


def ref_dense(x, y, a, p):
    return (((p - a.T) ** 2)[..., None] * torch.exp(x[:, None, :] + y[None, :, :])).sum(1)


GAUSS = "Exp(-SqDist(x,y))*b"
# Flops per (i, j) pair, by hand: + - * 1 each, exp 10 (its polynomial and scaling), the
# accumulation of each output component 1; K-selection 1 (a comparison, as early exit skips
# the insertion almost always).  Gradient cases are not counted (printed "-").
EXP = 10


def sqdist_flops(d: int) -> int:
    return 3 * d - 1  # d subtractions, d products, d - 1 additions


def gauss(n, d=3, e=3, dtype=torch.float32, grad=None, name=None):
    return Case(
        name or f"gauss D={d} E={e} N=M={n:g}" + (" f64" if dtype == torch.float64 else ""),
        GAUSS,
        [f"x = Vi({d})", f"y = Vj({d})", f"b = Vj({e})"],
        n,
        n,
        dtype=dtype,
        grad_of=grad,
        dense=gauss_dense,
        flops=None if grad is not None else sqdist_flops(d) + 1 + EXP + 2 * e,
    )


def cases(quick: bool) -> list[Case]:
    big = [] if quick else [gauss(100_000)]
    return [
        Case(
            "reference M=3000 N=5000",
            "Square(p-a)*Exp(x+y)",
            ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"],
            3000,
            5000,
            dense=ref_dense,
            flops=2 + 3 + 3 * EXP + 3 + 3,  # (p-a)^2, x+y, exp, *, accumulate
        ),
        Case(
            "reference fwd+grad y",
            "Square(p-a)*Exp(x+y)",
            ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"],
            3000,
            5000,
            grad_of=1,
            dense=ref_dense,
        ),
        gauss(1000),
        gauss(10_000),
        *big,
        gauss(10_000, grad=0, name="gauss fwd+grad x N=M=1e4"),
        Case(
            "LogSumExp softmin N=M=1e4",
            "-SqDist(x,y)*g",  # g = 1/eps = 10
            ["x = Vi(3)", "y = Vj(3)", "g = Pm(1)"],
            10_000,
            10_000,
            reduction="LogSumExp",
            dense=lse_dense,
            flops=sqdist_flops(3) + 2 + EXP + 4,  # -d*g; max, subtract, exp, add
        ),
        Case(
            "ArgKMin K=10 D=3 N=M=1e4",
            "SqDist(x,y)",
            ["x = Vi(3)", "y = Vj(3)"],
            10_000,
            10_000,
            reduction="ArgKMin",
            opt_arg=10,
            dense=argkmin_dense,
            flops=sqdist_flops(3) + 1,
        ),
        Case(
            "ArgKMin K=10 D=64 N=M=1e4",
            "SqDist(x,y)",
            ["x = Vi(64)", "y = Vj(64)"],
            10_000,
            10_000,
            reduction="ArgKMin",
            opt_arg=10,
            dense=argkmin_dense,
            # the dot-product guard's kernel (schedules/guard.py): a multiply-add a dimension
            # a pair, the exact distance only at the few pairs that may enter a K-list; with
            # AVX-512 VNNI in 16-bit integers (twice the rate: the share of FP32 peak can
            # pass 100 %)
            flops=2 * 64 + 1,
        ),
        gauss(10_000, d=64, e=1),
        # a Sum of the kernel times x - y in blocks of j (tvmred.reductions.sum.scaled)
        gauss(10_000, d=64, e=1, grad=0, name="gauss fwd+grad x D=64 N=M=1e4"),
        gauss(10_000, d=3, e=16),  # 16 right-hand sides (gpytorch's probe vectors): blocks
        Case(
            "cosine kernel D=64 N=M=1e4",
            "Exp((Normalize(x)|Normalize(y))*3)*b",
            ["x = Vi(64)", "y = Vj(64)", "b = Vj(1)"],
            10_000,
            10_000,
            dense=cosine_dense,
            # the normalized points once per row (tvmred.hoist): a dot product, *3, exp and
            # the accumulation a pair (pykeops normalizes x_i and y_j again at every pair)
            flops=2 * 64 - 1 + 1 + EXP + 2,
        ),
        gauss(10_000, dtype=torch.float64),
        Case(
            "attention SumSoftMaxWeight D=64 N=M=4000",
            "(q|k)",
            ["q = Vi(64)", "k = Vj(64)", "v = Vj(64)"],
            4000,
            4000,
            reduction="SumSoftMaxWeight",
            formula2="v",
            dense=softmax_dense,
            flops=2 * 64 + EXP + 3 * 64 + 4,  # (q|k); exp, max; a multiply and an FMA a column
        ),
    ]


def make_inputs(case: Case) -> list[torch.Tensor]:
    from tvmred.parse import parse_aliases

    g = torch.Generator().manual_seed(0)
    out = []
    for a in parse_aliases(case.aliases):
        pos, dim, cat = a.var.params
        shape = (dim,) if cat == 2 else (case.M if cat == 0 else case.N, dim)
        t = torch.rand(*shape, generator=g, dtype=torch.float64)
        if cat == 2:
            t.fill_(10.0)  # the LogSumExp case's 1/eps
        if dim >= 16:
            t = t / dim**0.5
        out.append(t.to(case.dtype))
    return out


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    return min_time(fn, repeats)


def runner(lib: str, case: Case, args: list[torch.Tensor]) -> Optional[Callable]:
    if lib == "torch":
        if case.dense is None or case.M * case.N * 8 * 8 > 4e9:
            return None
        return lambda *a: case.dense(*a)
    if lib == "faiss":
        return faiss_runner(case)
    if lib == "tvmred":
        from tvmred.torch import Genred
    else:
        try:
            from pykeops.torch import Genred  # type: ignore
        except ImportError:
            return None
    kw = {"backend": "CPU"} if lib == "pykeops" else {}
    r = Genred(
        case.formula,
        case.aliases,
        reduction_op=case.reduction,
        axis=1,
        opt_arg=case.opt_arg,
        formula2=case.formula2,
    )
    return lambda *a: r(*a, **kw)


def faiss_runner(case: Case) -> Optional[Callable]:
    """faiss-cpu's exact K-nearest-neighbour search (``IndexFlatL2``: a GEMM, then a
    K-selection) for the KNN cases, index built in each call as tvmred gets y in each call;
    None for other cases or without faiss (``pip install faiss-cpu``).  ``FAISS_OPT_LEVEL``
    (generic, avx2, avx512) picks its SIMD code, as ``TVMRED_LLVM_MCPU`` picks tvmred's."""
    if case.reduction != "ArgKMin" or case.formula != "SqDist(x,y)":
        return None
    try:
        import faiss  # type: ignore
    except ImportError:
        return None
    faiss.omp_set_num_threads(torch.get_num_threads())

    def knn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        index = faiss.IndexFlatL2(y.shape[1])
        index.add(y.detach().numpy())
        return torch.from_numpy(index.search(x.detach().numpy(), case.opt_arg)[1])

    return knn


CHECK_ROWS = 256  # output rows checked against the float64 dense reference


def reference(case: Case, args: list[torch.Tensor]) -> Any:
    """The float64 dense answer on the first CHECK_ROWS output rows (the gradient w.r.t. a
    j-variable needs every row: the reference example is small enough for it)."""
    a64 = [t.detach().double() for t in args]
    dense = case.dense
    if case.grad_of is None:
        return dense(a64[0][:CHECK_ROWS], *a64[1:])
    a64[case.grad_of].requires_grad_()
    rows = CHECK_ROWS if case.grad_of == 0 else case.M
    c = dense(a64[0][:rows], *a64[1:])
    (g,) = torch.autograd.grad(c, a64[case.grad_of], torch.ones_like(c))
    return g[:CHECK_ROWS]


def wrong(case: Case, args: list[torch.Tensor], out: Any) -> Optional[str]:
    """None if ``out`` (a library's answer) matches the reference, else what is wrong."""
    got = out[0] if isinstance(out, tuple) else out
    got = got[:CHECK_ROWS].detach()
    want = reference(case, args)
    if case.reduction == "ArgKMin":  # compare the distances of the selected points
        x, y = (t.detach().double() for t in args[:2])
        d2 = ((x[:CHECK_ROWS, None] - y[None]) ** 2).sum(-1)
        got, want = d2.gather(1, got.long()), d2.gather(1, want)
    tol = 1e-10 if case.dtype == torch.float64 else 1e-4
    err = ((got.double() - want).abs().max() / want.abs().max()).item()
    return None if err <= tol else f"relative error {err:.1e} > {tol:.0e}"


def fresh_caches(lib: str) -> None:
    """Empty kernel caches for ``lib``, so that its first call compiles."""
    if lib == "tvmred":
        import tvmred

        os.environ["TVMRED_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-tvmred-")
        tvmred.clear_cache(disk=False)
    elif lib == "pykeops":
        import pykeops  # type: ignore

        pykeops.set_build_folder(tempfile.mkdtemp(prefix="bench-pykeops-"))


def time_case(lib: str, case: Case, repeats: int) -> Optional[dict]:
    args = make_inputs(case)
    fn = runner(lib, case, args)
    if fn is None:
        return None
    if case.grad_of is not None:
        args[case.grad_of].requires_grad_()

        def call():
            c = fn(*args)
            return torch.autograd.grad(c, args[case.grad_of], torch.ones_like(c))
    else:

        def call():
            with torch.no_grad():
                return fn(*args)

    if lib != "torch":
        fresh_caches(lib)
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    bad = wrong(case, args, out)  # checked before timing: a fast wrong answer is no result
    if bad is not None:
        print(f"  {lib}: WRONG answer on {case.name}: {bad}", flush=True)
        return {"s": None, "first_call_s": first, "wrong": bad}
    return {"s": best_time(call, repeats), "first_call_s": first, "wrong": None}


def machine() -> dict:
    return timing.machine()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, no N=1e5 case")
    p.add_argument("--only", nargs="*", help="substrings of case names to run")
    p.add_argument("--libs", nargs="*", default=["tvmred", "pykeops", "torch", "faiss"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "suite_cpu.json"))
    p.add_argument("--plot", default=None, help="PNG path for the time-vs-N plot")
    a = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    repeats = 3 if a.quick else 7
    info = machine()
    print("machine:", json.dumps(info))
    threads = int(os.environ.get("TVM_NUM_THREADS") or torch.get_num_threads())
    info["peak_fp32"] = "%.3g flop/s (%s)" % timing.peak_flops(32, threads)
    print("FP32 peak:", info["peak_fp32"])
    rows = []
    for case in cases(a.quick):
        if a.only and not any(s in case.name for s in a.only):
            continue
        res = {lib: time_case(lib, case, repeats if case.N <= 10_000 else 2) for lib in a.libs}
        t = res.get("tvmred") or {}
        row = {
            "case": case.name,
            **{f"{k}_s": (v or {}).get("s") for k, v in res.items()},
            **{f"{k}_wrong": v["wrong"] for k, v in res.items() if v and v.get("wrong")},
            "tvmred_first_call_s": t.get("first_call_s"),
            "pykeops_first_call_s": (res.get("pykeops") or {}).get("first_call_s"),
        }
        for lib in ("pykeops", "torch", "faiss"):
            if row.get(f"{lib}_s") and t.get("s"):
                row[f"{lib}/tvmred"] = row[f"{lib}_s"] / t["s"]
        if case.flops and t.get("s"):
            peak, _ = timing.peak_flops(64 if case.dtype == torch.float64 else 32, threads)
            row["tvmred_peak_share"] = case.M * case.N * case.flops / t["s"] / peak
        rows.append(row)
        fmt = lambda v: f"{v * 1e3:10.2f}" if v else f"{'-':>10}"  # noqa: E731
        rat = lambda v: f"{v:8.1f}x" if v else f"{'-':>9}"  # noqa: E731
        print(
            f"{case.name:32s} tvmred {fmt(row.get('tvmred_s'))} ms | pykeops "
            f"{fmt(row.get('pykeops_s'))} ms {rat(row.get('pykeops/tvmred'))} | torch "
            f"{fmt(row.get('torch_s'))} ms {rat(row.get('torch/tvmred'))} | tvmred "
            + (
                f"{100 * row['tvmred_peak_share']:4.0f}% of peak"
                if "tvmred_peak_share" in row
                else "   - of peak"
            )
            + (
                f" | faiss {fmt(row['faiss_s'])} ms {rat(row.get('faiss/tvmred'))}"
                if row.get("faiss_s")
                else ""
            ),
            flush=True,
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    if a.plot:
        plot(rows, a.plot)
    return 0


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [
        (float(r["case"].split("N=M=")[1].split()[0]), r)
        for r in rows
        if r["case"].startswith("gauss D=3 E=3 N=M=") and "f64" not in r["case"]
    ]
    pts.sort(key=lambda t: t[0])
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    for lib in ("tvmred", "pykeops", "torch"):
        xs = [n for n, r in pts if r.get(f"{lib}_s")]
        ax.loglog(xs, [r[f"{lib}_s"] for n, r in pts if r.get(f"{lib}_s")], "o-", label=lib)
    ax.set_xlabel("N = M")
    ax.set_ylabel("time (s)")
    ax.set_title("Gaussian convolution, D=3, float32, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
