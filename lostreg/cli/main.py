"""``lostreg`` command line: a thin front end over the library.

Sub-commands register themselves in :data:`COMMANDS`; each gets its own argparse sub-parser.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from lostreg import __version__
from lostreg.cli import backbones_cmd, compare_cmd, data_cmd, discover_cmd, eval_cmd, export_cmd, inspect_cmd, report_cmd

# name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "discover": (discover_cmd.add_arguments, discover_cmd.run, "find the main object's box in images"),
    "eval": (eval_cmd.add_arguments, eval_cmd.run, "CorLoc of LOST on a dataset (hydra overrides)"),
    "compare": (compare_cmd.add_arguments, compare_cmd.run, "CorLoc table of eval runs beside published numbers"),
    "data": (data_cmd.add_arguments, data_cmd.run, "check dataset layouts, fetch the COCO20k list"),
    "export": (export_cmd.add_arguments, export_cmd.run, "write pseudo-boxes for detector training"),
    "report": (report_cmd.add_arguments, report_cmd.run, "self-contained HTML report of eval runs"),
    "inspect": (inspect_cmd.add_arguments, inspect_cmd.run, "diagnostic figures: token norms, attention, PCA, LOST internals"),
    "backbones": (backbones_cmd.add_arguments, backbones_cmd.run, "list the backbones lostreg knows"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lostreg",
        description="Unsupervised object discovery (LOST) with DINO, DINOv2 and DINOv2+registers.",
    )
    parser.add_argument("--version", action="version", version=f"lostreg {__version__}")
    # The metavar lists the commands, so a bare `lostreg` shows them in its usage error.
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lostreg`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("lostreg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
