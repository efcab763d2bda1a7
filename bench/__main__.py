"""`python -m bench [--only NAME ...] [--quick] [--list]`: start the engines once, run, report."""

from __future__ import annotations

import argparse
import signal
import sys

import bench.suite  # noqa: F401  (registers the benchmarks)
from bench.registry import REGISTRY, select
from bench.runner import run


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", choices=list(REGISTRY),
        help="run these benchmarks (and what they need); default: all",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run of a minute or so")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--users",
        type=int,
        metavar="N",
        help="users of the nightly benchmarks (default: their full or quick size)",
    )
    args = parser.parse_args(args_list)
    if args.list:
        for bench in REGISTRY.values():
            extra = ""
            if bench.limit is not None:
                sign = ">=" if bench.limit.higher_is_better else "<="
                of = "" if bench.limit.is_fixed else f" x {bench.limit.name}"
                extra = f" (limit: {sign} {bench.limit.target:g}{of})"
            print(f"{bench.name:22} {bench.description}{extra}")
        return 0
    benches = select(args.only)
    # a TERM (a CI timeout, `kill`) stops the run like Ctrl-C: the engines are stopped on the way out
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(benches, quick=args.quick, argv=args_list, users=args.users)


if __name__ == "__main__":
    sys.exit(main())
