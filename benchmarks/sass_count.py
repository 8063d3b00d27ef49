"""CUDA kernels read at the machine-code level, without a GPU: SASS instructions per pair.

Each case's kernel is generated as tvmred compiles it (the source TVM emits, after
``tvmred.cudatool.postprocess``), compiled to a cubin for the chosen architecture (nvcc, else
NVRTC), disassembled (``cuobjdump -sass``; ``pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm``) and its
innermost loop -- the backward branch enclosing the most marker instructions -- counted.  The
marker is an instruction each pair executes a known number of times: one exp (MUFU.EX2) for
exp formulas, y's D global loads (LDG) for the thread-per-row Min / K-Min kernels (y is read
from global memory once a pair there); pairs per iteration = marker count / per pair.  A
K-selection's insertion, which its early exit skips for all but a few pairs, is left out of
the count (``rarely_run``: its instructions in the JSON).  Printed per case: registers,
spills, instructions per pair, the share of FFMA, loads per pair, and the time the count
predicts for N = M = 1e4 / 1e5 / 1e6 at one warp instruction per scheduler per clock
(4 schedulers per SM; 132 SMs at 1.98 GHz, an H100 SXM / H200) against the MUFU limit
(16 ex2 per SM per clock).

    python benchmarks/sass_count.py [--arch sm_90] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMS, CLOCK, SCHEDULERS, MUFU_PER_SM = 132, 1.98e9, 4, 16

# name: (formula, reduction, D, schedule config[, (marker opcode, per pair), K, dim of b]);
# "row_block"
# 128 x R: R rows a thread, each j-row read from shared memory once for all R
CASES = {
    "Min_ArgMin D=3, thread per row": ("SqDist(x,y)", "Min_ArgMin", 3, None, ("LDG", 3)),
    "KMin_ArgKMin K=10 D=3, thread per row": (
        "SqDist(x,y)",
        "KMin_ArgKMin",
        3,
        None,
        ("LDG", 3),
        10,
    ),
    "Gaussian D=3, thread per row": ("Exp(-SqDist(x,y))*b", "Sum", 3, None),
    "Gaussian D=3, j-tiles 128": ("Exp(-SqDist(x,y))*b", "Sum", 3, {"tile": 128}),
    "LogSumExp D=3, thread per row": ("Concat(-SqDist(x,y),IntCst(1))", "LogSumExp", 3, None),
    "LogSumExp D=3, j-tiles 128": ("Concat(-SqDist(x,y),IntCst(1))", "LogSumExp", 3, {"tile": 128}),
    "Gaussian D=64, thread per row": ("Exp(-SqDist(x,y))*b", "Sum", 64, None),
    "Gaussian D=64, j-tiles 128": ("Exp(-SqDist(x,y))*b", "Sum", 64, {"tile": 128}),
    "Exp((x|y))*b D=64, j-tiles 128": ("Exp((x|y))*b", "Sum", 64, {"tile": 128}),
    # attention: a softmax-weighted sum of 64-dimensional values (the LogSumExp kernel with
    # 64 weight columns, as SumSoftMaxWeight's); 64-row tiles (two 64-float rows: 32 KiB)
    "softmax weights D=64, E=64, j-tiles 64": (
        "Concat((x|y),b)",
        "LogSumExp",
        64,
        {"tile": 64},
        ("MUFU.EX2", 1),
        None,
        64,
    ),
}
# the same in the flash-attention layout (the two_pass knob): blocks of 16 j of the tile,
# 16 pair exps and one rescale exp a block -- 17 MUFU.EX2 a 16 pairs
CASES["softmax weights D=64, E=64, j-tiles 64, two-pass 16"] = (
    *CASES["softmax weights D=64, E=64, j-tiles 64"][:3],
    {"tile": 64, "two_pass": 16},
    ("MUFU.EX2", 17 / 16),
    None,
    64,
)
for _name, _rows in (
    ("Gaussian D=3", (2, 4)),
    ("Gaussian D=64", (2,)),
    ("Exp((x|y))*b D=64", (2,)),
):
    for _r in _rows:  # R rows a thread: the tiled case with row_block 128 R
        _f, _red, _d, _cfg = CASES[f"{_name}, j-tiles 128"]
        CASES[f"{_name}, j-tiles 128, {_r} rows/thread"] = (
            _f,
            _red,
            _d,
            {**_cfg, "row_block": 128 * _r},
        )


def cuobjdump() -> str | None:
    """cuobjdump, with the nvdisasm it runs for ``-sass`` (beside it, on PATH or in
    NVDISASM_PATH); None if either is missing."""
    import os

    found = [shutil.which("cuobjdump")]
    try:
        import nvidia

        found += [
            str(p) for base in nvidia.__path__ for p in sorted(Path(base).glob("cu*/bin/cuobjdump"))
        ]
    except ImportError:
        pass
    for tool in filter(None, found):
        beside = Path(tool).with_name("nvdisasm").is_file()
        if beside or shutil.which("nvdisasm") or os.environ.get("NVDISASM_PATH"):
            return tool
    return None


def source(formula: str, red: str, dim: int, config, arch: str, k=None, bdim=1) -> str:
    from tvmred.build import compile_reduction
    from tvmred.cudatool import postprocess
    from tvmred.parse import parse, parse_aliases
    from tvmred.reductions import KernelSpec, Variant
    from tvmred.targets import cuda_target

    al = parse_aliases([f"x = Vi({dim})", f"y = Vj({dim})", f"b = Vj({bdim})"])
    spec = KernelSpec(parse(formula, al), red, 0, "float32", "float32", Variant(k=k))
    ex, _ = compile_reduction(spec, cuda_target(arch), config)
    (dev,) = ex.mod.imports
    return postprocess(dev.inspect_source())


def cubin(src: str, arch: str, tmp: Path) -> tuple[bytes, str]:
    """The cubin and ptxas' resource line (registers, spills)."""
    if shutil.which("nvcc"):
        (tmp / "k.cu").write_text(src)
        r = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o",
                            str(tmp / "k.cubin"), str(tmp / "k.cu")], capture_output=True,
                           text=True, check=True)  # fmt: skip
        return (tmp / "k.cubin").read_bytes(), r.stderr
    from tvm.support import nvcc as tvm_nvcc

    from tvmred.cudatool import setup

    setup()
    return bytes(tvm_nvcc.compile_cuda(src, target_format="cubin", arch=arch, compiler="nvrtc")), ""


LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);")


def innermost_loop(sass: str, marker: str = "MUFU.EX2") -> list[tuple]:
    """The instructions ``(address, opcode, operands, predicate)`` of the backward-branch
    loop holding the most ``marker`` instructions (the pair loop; its rarely taken
    branches, as a K-selection's insertion, included: :func:`rarely_run`)."""
    ins = [(int(m.group(1), 16), m.group(3), m.group(4), m.group(2) or "")
           for m in LINE.finditer(sass)]  # fmt: skip
    best: list[tuple] = []
    for k, (addr, op, rest, _) in enumerate(ins):
        start = _branch_target(op, rest)
        if start is None or start >= addr:
            continue
        body = [i for i in ins[: k + 1] if i[0] >= start]
        if sum(i[1].startswith(marker) for i in body) > sum(i[1].startswith(marker) for i in best):
            best = body
    return best


def _branch_target(op: str, operands: str) -> int | None:
    """The address a branch instruction jumps to (None for any other instruction)."""
    target = re.search(r"0x([0-9a-f]+)", operands) if op.startswith("BRA") else None
    return int(target.group(1), 16) if target else None


def rarely_run(loop: list[tuple]) -> set[int]:
    """Addresses a K-selection's early exit skips (``schedules/early_exit.py``): the
    instructions a predicated forward branch jumps over to the ``BSYNC`` closing its block
    -- the insertion, run when the pair's value is below the row's K-th (rarely, once a few
    hundred j are seen)."""
    at = {i[0]: i[1] for i in loop}
    skipped: set[int] = set()
    for addr, op, rest, pred in loop:
        end = _branch_target(op, rest)
        if pred and end is not None and end > addr:
            if at.get(end, "").startswith("BSYNC"):
                skipped.update(a for a in at if addr < a < end)
    return skipped


def analyse(name: str, case: tuple, arch: str, tool: str) -> dict:
    formula, red, dim, config = case[:4]
    marker, per = case[4] if len(case) > 4 else ("MUFU.EX2", 1)
    k, bdim = (case[5] if len(case) > 5 else None), (case[6] if len(case) > 6 else 1)
    config = {"two_pass": 0, **(config or {})}  # the online loop unless the case says (not
    # TVMRED_CUDA_TWO_PASS)
    src = source(formula, red, dim, config, arch, k, bdim)
    with tempfile.TemporaryDirectory() as d:
        binary, ptxas = cubin(src, arch, Path(d))
        (Path(d) / "k.cubin").write_bytes(binary)
        sass = subprocess.run([tool, "-sass", str(Path(d) / "k.cubin")], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    body = innermost_loop(sass, marker)
    rare = rarely_run(body) if "KMin" in red else set()
    loop = [op for a, op, _, _ in body if a not in rare]  # what a pair runs
    pairs = sum(o.startswith(marker) for o in loop) / per
    regs = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores", ptxas)
    row = {"case": name, "instructions": len(loop), "pairs": pairs, "marker": marker,
           "registers": int(regs.group(1)) if regs else None,
           "spill_bytes": int(spills.group(1)) if spills else None,
           "exp_guarded": "FSETP.GEU.AND" in sass and "-126" in sass,
           "rarely_run": len(rare)}  # fmt: skip
    if pairs:
        per = len(loop) / pairs
        row["per_pair"] = per
        row["ffma_share"] = sum(o.startswith("FFMA") for o in loop) / len(loop)
        row["loads_per_pair"] = sum(o.startswith(("LDS", "LDG")) for o in loop) / pairs
        row["opcodes"] = dict(Counter(loop).most_common())
        for n in (10**4, 10**5, 10**6):
            issue = n * n * per / 32 / (SMS * SCHEDULERS * CLOCK)
            exps = sum(o.startswith("MUFU.EX2") for o in loop) / pairs
            mufu = n * n * exps / (SMS * MUFU_PER_SM * CLOCK)
            row[f"predicted_s_{n:.0e}"] = max(issue, mufu)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tool = cuobjdump()
    if tool is None:
        sys.exit(
            "cuobjdump / nvdisasm not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"
        )
    rows = []
    print(f"{'case':<46} {'regs':>4} {'instr/pair':>10} {'FFMA':>5} {'loads/pair':>10} "
          f"{'1e4 (ms)':>9} {'1e5 (ms)':>9} {'1e6 (s)':>8}")  # fmt: skip
    for name, case in CASES.items():
        row = analyse(name, case, args.arch, tool)
        rows.append(row)
        if "per_pair" not in row:
            print(f"{name:<46} no pair loop found")
            continue
        print(f"{name:<46} {row['registers']:>4} {row['per_pair']:>10.2f} "
              f"{row['ffma_share']:>5.0%} {row['loads_per_pair']:>10.2f} "
              f"{row['predicted_s_1e+04'] * 1e3:>9.3f} {row['predicted_s_1e+05'] * 1e3:>9.2f} "
              f"{row['predicted_s_1e+06']:>8.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
