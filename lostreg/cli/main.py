"""``lostreg`` command line: a thin front end over the library.

Sub-commands are listed in :data:`COMMANDS` by module name and imported only when chosen. A
command module has ``add_arguments(parser)``, ``run(args) -> int`` and optionally ``parents()``
(shared argparse parents, e.g. :func:`lostreg.cli.common.protocol_parent_parser`), and imports its
heavy dependencies (torch, timm, hydra, matplotlib) inside ``run``: ``lostreg --help`` and ``lostreg COMMAND --help`` answer in about the time Python
takes to start.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from lostreg import __version__
from lostreg.cli.common import report_user_error
from lostreg.errors import LostregError

#: name -> (module under lostreg.cli with ``add_arguments(parser)`` and ``run(args) -> int``, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "discover": ("discover_cmd", "find the main object's box in images, folders or globs"),
    "eval": ("eval_cmd", "CorLoc of a discovery method on a dataset (hydra overrides), resumable"),
    "sweep": ("sweep_cmd", "a grid of protocols on a dataset from one backbone pass per batch"),
    "experiment": ("experiment_cmd", "a whole comparison (e.g. registers_gap) in one command"),
    "compare": ("compare_cmd", "CorLoc table of eval and sweep runs beside published numbers"),
    "data": ("data_cmd", "check dataset layouts, fetch the COCO20k list"),
    "export": ("export_cmd", "write pseudo-boxes for detector training"),
    "score": ("score_cmd", "CorLoc, AP50 and AR of a detector's predictions (COCO, YOLO, detectron2) on a dataset"),
    "report": ("report_cmd", "self-contained HTML report of eval runs"),
    "inspect": ("inspect_cmd", "diagnostic figures: token norms, attention, PCA, the method's internals"),
    "calibrate": ("calibrate_cmd", "find a ViT's register neurons (test-time registers) from unlabeled images"),
    "artifacts": ("artifacts_cmd", "the registers paper's artifact study: norms along layers, outliers, probes"),
    "backbones": ("backbones_cmd", "list the backbones lostreg knows"),
}


def _command_module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"lostreg.cli.{COMMANDS[name][0]}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``lostreg`` parser; only ``command``'s sub-parser gets its arguments (and its module imported).

    Args:
        command: the sub-command about to run, or None to describe every command fully
            (imports every command module; used by tests and documentation tools).
    """
    parser = argparse.ArgumentParser(
        prog="lostreg",
        description="Unsupervised object discovery (LOST, TokenCut) with self-supervised Vision Transformers "
                    "(DINO, DINOv2, DINOv2+registers, DINOv3, test-time registers): boxes, CorLoc beside the "
                    "published numbers, pseudo-labels, and the diagnostics that show why registers matter.",
    )
    parser.add_argument("--version", action="version", version=f"lostreg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user errors too (also LOSTREG_DEBUG=1); bugs always show theirs")
    # The metavar lists the commands, so a bare `lostreg` shows them in its usage error.
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, (_, help_text) in COMMANDS.items():
        if command is None or name == command:
            module = _command_module(name)
            # Shared flag groups (the discovery protocol) come as argparse parents, declared once.
            parents = module.parents() if hasattr(module, "parents") else []
            command_parser = sub.add_parser(name, help=help_text, description=help_text, parents=parents)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first argument that is not an option), if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _list_positional(parser: argparse.ArgumentParser, command: str | None) -> str | None:
    """The ``nargs="*"``/``"+"`` positional of ``command``'s sub-parser (overrides, paths), if it has one."""
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    sub = subparsers.choices.get(command) if subparsers is not None and command else None
    if sub is None:
        return None
    return next((a.dest for a in sub._actions if not a.option_strings and a.nargs in ("*", "+")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lostreg`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    # With no valid command, build the light parser: argparse then prints the command list.
    parser = build_parser(command or "")
    args, rest = parser.parse_known_args(argv)
    if rest:
        # Flags and positionals in any order (``eval backbone=x --no-progress weights=random``): argparse
        # stops a list positional at the first flag; what follows it belongs to that list.
        listed = _list_positional(parser, command)
        if listed is None or any(item.startswith("-") for item in rest):
            parser.parse_args(argv)  # exits with argparse's message for what is not recognised
        setattr(args, listed, list(getattr(args, listed) or []) + rest)
    if args.debug:
        os.environ["LOSTREG_DEBUG"] = "1"  # commands (and their worker processes) read it
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("lostreg: interrupted", file=sys.stderr)
        return 130
    except LostregError as err:
        # A user error a command did not handle itself: one line (the traceback with --debug).
        # Anything else is a bug and leaves with its traceback, exit code 1.
        report_user_error(err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
