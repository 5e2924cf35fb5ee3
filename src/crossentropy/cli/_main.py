"""Entry point of the ``crossentropy`` command.

Each subcommand lives in its own module ``crossentropy.cli._<name>`` with ``register(subparsers)``
(which adds its parser and sets ``func``) and heavy imports done inside ``run``, so that ``--help`` and
one subcommand never pay for another's dependencies. Errors reach the user as one line and an exit
status: 2 for bad input or usage (:class:`CLIError`, ``ValueError``, ``OSError``), 1 for anything
unexpected, 130 for Ctrl-C; never a traceback (``CROSSENTROPY_TRACEBACK=1`` shows one for debugging).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("demo", "score", "bench", "info")


class CLIError(Exception):
    """A problem with the user's input, reported as one line with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    from crossentropy import __version__

    parser = argparse.ArgumentParser(
        prog="crossentropy",
        description="Cross-entropy: demo, score prediction files, benchmark implementations.",
    )
    parser.add_argument("--version", action="version", version=f"crossentropy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"crossentropy.cli._{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"crossentropy.cli._{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        # `bench` hands every word after it to the benchmarks, flags first included (argparse's
        # REMAINDER would refuse `crossentropy bench --quick`).
        args.args = argv[argv.index("bench") + 1 :]
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    prog = f"crossentropy {args.command}"
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader left (`crossentropy score ... | head`): stop quietly, as other tools do
        _silence_stdout()
        return 1  # what rich's console does for the text report (Python's documented advice)
    except ModuleNotFoundError as exc:
        if os.environ.get("CROSSENTROPY_TRACEBACK"):
            raise
        print(f"{prog}: error: {_missing_package(exc)}", file=sys.stderr)
        return 2
    except (CLIError, ValueError, OSError) as exc:
        if os.environ.get("CROSSENTROPY_TRACEBACK"):
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("CROSSENTROPY_TRACEBACK"):
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return int(status or 0)


# top-level module -> the extra of crossentropy that installs it
_EXTRAS = {
    "rich": "cli",
    "torch": "torch",
    "triton": "triton",
    "transformers": "hf",
    "accelerate": "hf",
    "keras": "keras",
    "pyarrow": "parquet",
    "matplotlib": "demo",
    "constriction": "demo",
    "sklearn": "demo",
}


def _missing_package(exc: ModuleNotFoundError) -> str:
    name = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(name)
    if extra is None:
        return f"a required module is missing: {_one_line(exc)}"
    return (
        f"this command needs the Python package {name!r}, which is not installed; "
        f"install it with: pip install 'crossentropy[{extra}]'"
    )


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
