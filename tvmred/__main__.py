"""Command line: ``tvmred --help``."""

from __future__ import annotations

import argparse
import sys


def _cache(args: argparse.Namespace) -> int:
    from . import cache

    if args.action == "clear":
        cache.clear_cache()
        print(f"cleared {cache.cache_dir()}")
        return 0
    entries = cache.entries()
    print(f"{cache.cache_dir()}: {len(entries)} kernel(s)")
    for e in entries:
        print(
            f"  {e['hash'][:12]}  {e['bytes']:>8} B  {e.get('reduction', '?'):<6} {e.get('formula', '')}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    import time

    from .export import export

    t0 = time.perf_counter()
    manifest = export(args.spec, args.out)
    import json

    info = json.loads(manifest.read_text())
    size = sum(f.stat().st_size for f in manifest.parent.iterdir())
    print(
        f"exported {len(info['kernels'])} kernel(s) for {len(info['routines'])} routine(s) to "
        f"{manifest.parent} ({size / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .tune import tune

    rec = tune(
        args.formula,
        args.aliases,
        reduction_op=args.reduction,
        axis=args.axis,
        dtype=args.dtype,
        sizes=(args.M, args.N),
        trials=args.trials,
        opt_arg=args.opt_arg,
        formula2=args.formula2,
        device=args.device,
    )
    for t in rec["trials"]:
        if t["time_s"] is None:  # a schedule whose answer differs from the default's
            print(f"  {t['config']}: {t['error']}, not used")
        else:
            print(f"  {t['config']}: {t['time_s'] * 1e3:.2f} ms")
    print(
        f"best {rec['config']}: {rec['time_s'] * 1e3:.2f} ms, default "
        f"{rec['default_time_s'] * 1e3:.2f} ms ({rec['default_time_s'] / rec['time_s']:.2f}x)"
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor

    return doctor()


def _bench(args: argparse.Namespace) -> int:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_suite.py"
    if not script.exists():
        print("the benchmark suite lives in the source tree: benchmarks/bench_suite.py")
        return 1
    sys.argv = [str(script), *args.rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # the script ends with sys.exit(main())
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="tvmred", description="tvmred: KeOps-style reductions on TVM")
    p.add_argument("--version", action="version", version=f"tvmred {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="list or clear the compiled-kernel cache")
    c.add_argument("action", choices=["list", "clear"])
    c.set_defaults(func=_cache)
    e = sub.add_parser(
        "export",
        help="compile the routines of a spec file into a directory "
        "loadable with tvmred.load() and only the TVM runtime",
    )
    e.add_argument("spec", help="JSON (or YAML) spec: targets and routines (see tvmred.export)")
    e.add_argument("out", help="output directory")
    e.set_defaults(func=_export)
    t = sub.add_parser(
        "tune",
        help="measure the schedule knobs of a reduction and store the "
        "fastest in the tuning database (used automatically afterwards)",
    )
    t.add_argument("formula")
    t.add_argument("aliases", nargs="+", help='e.g. "x = Vi(3)" "y = Vj(3)"')
    t.add_argument("--reduction", default="Sum")
    t.add_argument("--axis", type=int, default=1)
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--M", type=int, default=10_000)
    t.add_argument("--N", type=int, default=10_000)
    t.add_argument("--trials", type=int, default=None, help="at most this many settings")
    t.add_argument("--opt-arg", type=int, default=None)
    t.add_argument("--formula2", default=None)
    t.add_argument("--device", default="cpu", help="cpu or cuda[:k]: where to measure")
    t.set_defaults(func=_tune)
    d = sub.add_parser(
        "doctor",
        help="print versions, CPU/GPU, cache state and run a tiny formula on each device "
        "(paste its output into bug reports)",
    )
    d.set_defaults(func=_doctor)
    b = sub.add_parser(
        "bench",
        help="run benchmarks/bench_suite.py (tvmred vs pykeops vs "
        "torch); its options follow, e.g. --quick",
    )
    b.set_defaults(func=_bench, rest=[])
    # bench forwards its options (--quick, --only ...) to the script: argparse's REMAINDER
    # positional rejects a first option that starts with "--", so collect the unknown ones
    args, extra = p.parse_known_args(argv)
    if extra:
        if args.func is not _bench:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
