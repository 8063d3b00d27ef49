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
        print(f"  {e['hash'][:12]}  {e['bytes']:>8} B  {e.get('reduction', '?'):<6} {e.get('formula', '')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import time

    from .export import export

    t0 = time.perf_counter()
    manifest = export(args.spec, args.out)
    import json

    info = json.loads(manifest.read_text())
    size = sum(f.stat().st_size for f in manifest.parent.iterdir())
    print(f"exported {len(info['kernels'])} kernel(s) for {len(info['routines'])} routine(s) to "
          f"{manifest.parent} ({size / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="tvmred", description="tvmred: KeOps-style reductions on TVM")
    p.add_argument("--version", action="version", version=f"tvmred {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="list or clear the compiled-kernel cache")
    c.add_argument("action", choices=["list", "clear"])
    c.set_defaults(func=_cache)
    e = sub.add_parser("export", help="compile the routines of a spec file into a directory "
                       "loadable with tvmred.load() and only the TVM runtime")  # fmt: skip
    e.add_argument("spec", help="JSON (or YAML) spec: targets and routines (see tvmred.export)")
    e.add_argument("out", help="output directory")
    e.set_defaults(func=_export)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
