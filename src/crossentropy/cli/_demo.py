"""``crossentropy demo``: train with cross-entropy on a source of known entropy, code with it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="train with cross-entropy on a source of known entropy; code with the model",
        description=(
            "Part 1: a Markov source with an exactly known entropy rate H; a small model trained "
            "with linear_cross_entropy reaches H plus a small KL gap, and a range coder driven by "
            "it stores the data in that many bits (vs gzip, bz2, lzma). Part 2: digits trained "
            "with cross-entropy, MSE and focal loss. Writes demo_report.png and demo_summary.json."
        ),
    )
    parser.add_argument(
        "--out", default="demo_out", metavar="DIR", help="output directory (default: ./demo_out)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of the sequence models (default: 1200; 300 with --quick)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument(
        "--text", default=None, metavar="FILE", help="also model and code this file byte by byte"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (well under 20 s), for tests"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from crossentropy.demo import run_demo

    # The figures and their checks are in the tables and the JSON; a check that fails (say with a
    # deliberately small --steps) is reported there, not turned into an error status.
    run_demo(
        args.out,
        seed=args.seed,
        steps=args.steps,
        quick=args.quick,
        device=args.device,
        text=args.text,
        console=Console(),
    )
    return 0
