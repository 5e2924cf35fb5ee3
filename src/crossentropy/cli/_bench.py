"""``crossentropy bench [NAME ...] [--flag=value ...]``: run benchmarks from a source checkout.

The benchmarks live in the repository's ``benchmarks`` package (not in the installed wheel), so this
command imports ``benchmarks.__main__`` from the current working directory and hands it the
arguments, exactly like ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="run benchmarks (from a source checkout), like `python -m benchmarks`",
        description="Run the benchmark modules of benchmarks/ (all when none is named; names "
        "come before flags). "
        "Flags (--name=value or --name value) go to the benchmarks that take them; a flag "
        "that none of them takes is refused.",
        epilog="`crossentropy bench --list` lists the benchmarks with their flags; "
        "`crossentropy bench NAME -h` shows one benchmark's options.",
    )
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="NAME|--flag=value",
        help="benchmark names (e.g. linear_ce_cpu) and flags such as --quick",
    )
    parser.set_defaults(func=run)


def _load_benchmarks() -> object:
    from crossentropy.cli import CLIError

    cwd = os.getcwd()
    if not os.path.isfile(os.path.join(cwd, "benchmarks", "__main__.py")):
        # The wheel does not ship benchmarks/: they live in the repository only.
        raise CLIError(
            "benchmarks need a source checkout of crossentropy: run `crossentropy bench` in the "
            f"directory that holds benchmarks/ (there is none in {cwd})"
        )
    if cwd in sys.path:
        sys.path.remove(cwd)
    sys.path.insert(0, cwd)
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and os.path.dirname(
        getattr(loaded, "__file__", "") or ""
    ) != os.path.join(cwd, "benchmarks"):
        # a benchmarks package from elsewhere was imported earlier; load the checkout's instead
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]
    return importlib.import_module("benchmarks.__main__")


def run(args: argparse.Namespace) -> int:
    module = _load_benchmarks()
    argv = list(args.args)
    if argv[:1] == ["--"]:  # `crossentropy bench -- --flag`: the separator is not a flag
        argv = argv[1:]
    return int(module.main(argv) or 0)  # type: ignore[attr-defined]
