"""``lostreg sweep``: a grid of discovery protocols on one dataset, one backbone pass per batch.

    lostreg sweep backbone=dinov2_vitl14_reg dataset=voc07 dataset.root=/data \\
        sweep.which=[k,q,v] sweep.layer=[-1,-2,-3,-4] sweep.l2_normalize=[true] \\
        sweep.gram_bias=[0,-0.1,-0.2] sweep.k_patches=[100]
    lostreg sweep protocol=best_of backbone=dinov2_vitl14_reg dataset=voc12 dataset.root=/data select_on=voc07

stdout: the table of configurations, best first (also ``sweep.csv`` in the run directory), and
the configuration chosen on ``select_on``'s data when asked. Exit codes as ``lostreg eval``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from lostreg.cli.common import build_backbone_loudly, error, report_user_error, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*",
                        help="hydra overrides as for `lostreg eval`, plus the grid: sweep.which=[k,q,v] "
                             "sweep.layer=[-1,-2] sweep.l2_normalize=[false,true] sweep.gram_bias=[0,-0.1] "
                             "sweep.k_patches=[100]; presets: protocol=best_of|registers_paper|lost_original; "
                             "select_on=DATASET|SWEEP_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")


def _default_run_dir(overrides: list[str]) -> bool:
    return not any(o.split("=", 1)[0].lstrip("+~") == "run_dir" for o in overrides)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from lostreg.config import compose_config, protocol_from_config
    from lostreg.evaluation.sweep import SweepGrid, SweepJob, sweep_table_markdown

    errors = user_errors()
    try:
        cfg = compose_config(args.overrides)
        if _default_run_dir(args.overrides):
            cfg.run_dir = SweepGrid.from_config(cfg, protocol_from_config(cfg)).default_run_dir(cfg)
    except errors as err:
        report_user_error(err)
        return 2
    if args.cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    command = "lostreg sweep " + " ".join(shlex.quote(o) for o in args.overrides)

    def build_loudly(name: str, weights: str, device: str):  # type: ignore[no-untyped-def]
        return build_backbone_loudly(name, weights, device, random_hint="weights=random")

    try:
        job = SweepJob.prepare(cfg, builder=build_loudly)
        results = job.run(progress=not args.no_progress, command=command)
        selected = job.run_dir.read_metrics() or {}
    except KeyboardInterrupt:
        print(f"lostreg: interrupted; everything computed is saved in {cfg.run_dir}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except errors as err:
        report_user_error(err)
        return 2
    print(f"{len(results)} configurations, {job.grid and len(job.grid.feature_keys)} feature sets from one "
          f"backbone pass per batch", file=sys.stderr)
    print(sweep_table_markdown(results, selected.get("selected")))
    failed = max((int(r.metrics.get("failed") or 0) for r in results), default=0)
    if failed:  # as eval says it; read failures are the same in every configuration
        print(f"{failed} images failed (counted as misses; see 'error' in configs/<protocol>/preds.jsonl; a resume "
              "tries them again)", file=sys.stderr)
    print(f"run directory: {job.run_dir.path} (sweep.csv; one run directory per configuration in configs/)",
          file=sys.stderr)
    return 0
