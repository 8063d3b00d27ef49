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


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="tvmred", description="tvmred: KeOps-style reductions on TVM")
    p.add_argument("--version", action="version", version=f"tvmred {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="list or clear the compiled-kernel cache")
    c.add_argument("action", choices=["list", "clear"])
    c.set_defaults(func=_cache)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
