"""``lostreg experiment NAME data_root=DIR [size=s|b|l] [families=A,B] [datasets=A,B] [sweep=PRESET
[select_on=DATASET]] [out=DIR] [ttreg=FILE] [eval overrides]``.

    lostreg experiment registers_gap data_root=/data size=s
    lostreg experiment registers_gap data_root=/data size=l sweep=best_of select_on=voc07 device=cuda
    lostreg experiment registers_gap data_root=/data size=b families=dinov2,dinov2_reg,deit3,openclip \
        sweep=registers_paper

Runs every (backbone, dataset) of ``configs/experiment/NAME.yaml``, each backbone built once, in
the run directories ``lostreg eval`` (or ``lostreg sweep``) would use, so it resumes as a whole;
then writes ``gap.md`` (one row per family, without and with registers, beside the comparable
published numbers; reference rows below), ``gap.csv`` (every run), ``gap.png`` and one HTML report
per dataset to ``out`` (default ``outputs/experiment_NAME_SIZE``). stdout: the table. Exit 0 when every run finished,
1 when some failed (the table shows the others), 2 when nothing could start.
"""

from __future__ import annotations

import argparse
import sys

from lostreg.cli.common import build_backbone_loudly, error, report_user_error, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="experiment (configs/experiment/): registers_gap")
    parser.add_argument("arguments", nargs="*", metavar="KEY=VALUE",
                        help="data_root=DIR (required), size=s|b|l (default s), families=dino,dinov2,dinov2_reg,"
                             "deit3,openclip (default the first three), datasets=voc07,voc12 (a subset), "
                             "sweep=PRESET (e.g. best_of: a protocol sweep instead of the single protocol), "
                             "select_on=DATASET (with sweep: choose the configuration there, report it on the "
                             "others), out=DIR, ttreg=FILE, and any eval override (weights=..., device=..., "
                             "batch_size=..., features.*, lost.*)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lostreg.evaluation.experiment import Experiment

    errors = user_errors()
    try:
        experiment = Experiment.prepare(args.name, list(args.arguments))
    except errors as err:
        report_user_error(err)
        return 2

    def build_loudly(name: str, weights: str, device: str):  # type: ignore[no-untyped-def]
        return build_backbone_loudly(name, weights, device, random_hint="weights=random")

    print(f"{len(experiment.runs)} runs; results in {experiment.out}", file=sys.stderr)
    try:
        outcome = experiment.run(build_loudly, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("lostreg: interrupted; every run keeps what it computed: run the same command again to resume",
              file=sys.stderr)
        return 130
    except errors as err:
        report_user_error(err)
        return 2
    sys.stdout.write(outcome["table"])
    for path in outcome["files"]:
        print(f"wrote {path}", file=sys.stderr)
    for what, why in outcome["failed"]:
        error(f"{what} failed: {why}")
    return 1 if outcome["failed"] else 0
