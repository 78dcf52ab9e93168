"""``lostreg eval``: CorLoc of a discovery method (LOST, TokenCut) on a dataset, configured by hydra overrides.

    lostreg eval backbone=dinov2_reg dataset=voc07 dataset.root=/data lost.k_patches=50
    lostreg eval --multirun backbone=dino,dinov2,dinov2_reg dataset=voc07,voc12,coco20k

Exit codes: 0 done (images that failed are recorded in preds.jsonl and counted as misses; a
resume tries them again), 2 nothing could run (bad config, dataset layout, weights, or a run
directory of another config), 130 interrupted (everything computed so far is saved; re-run to
resume), 1 a bug stopped the run (its traceback is shown; everything computed so far is saved).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lostreg.cli.common import build_backbone_loudly, error, report_user_error, user_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="hydra overrides (`lostreg eval --cfg` prints them all): backbone=NAME "
                             "dataset=voc07|voc12|coco20k|coco|folder dataset.root=DIR weights=pretrained|random|PATH "
                             "method=lost|tokencut features.which=k|q|v features.layer=-1 "
                             "features.l2_normalize=false lost.k_patches=100 lost.gram_bias=0 "
                             "lost.exclude_outliers=false tokencut.tau=0.2 tokencut.eig=torch64 "
                             "protocol=lost_original|registers_paper|best_of (presets) ttreg=NEURON_FILE "
                             "precision=fp32|tf32|bf16 max_size=null device=auto batch_size=8 num_workers=2 "
                             "limit=N overwrite=false run_dir=DIR; flags may come anywhere among them")
    parser.add_argument("--multirun", "-m", action="store_true",
                        help="sweep comma-separated values (backbone=dino,dinov2,dinov2_reg), one run each")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    from lostreg.config import compose_config, expand_sweeps

    errors = user_errors()
    try:
        runs = expand_sweeps(args.overrides) if args.multirun else [list(args.overrides)]
        configs = [compose_config(overrides) for overrides in runs]
    except errors as err:
        report_user_error(err)
        return 2
    if args.cfg:
        from omegaconf import OmegaConf

        for cfg in configs:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0

    from lostreg.evaluation.runner import EvalJob

    def build_loudly(name: str, weights: str, device: str):  # type: ignore[no-untyped-def]
        return build_backbone_loudly(name, weights, device, random_hint="weights=random")

    status = 0
    run_dirs: list[Path] = []
    for overrides, cfg in zip(runs, configs):
        command = "lostreg eval " + " ".join(shlex.quote(o) for o in overrides)
        if len(configs) > 1:
            print(f"== {command}", file=sys.stderr)
        try:
            job = EvalJob.prepare(cfg, builder=build_loudly)
            metrics = job.run(progress=not args.no_progress, command=command)
            if not job.dist.is_main:
                continue  # in a torchrun job, rank 0 reports for everyone
        except KeyboardInterrupt:
            print(f"lostreg: interrupted; everything computed is saved in {cfg.run_dir}; "
                  "run the same command again to resume", file=sys.stderr)
            return 130
        except errors as err:
            report_user_error(err)
            status = 2
            continue
        run_dirs.append(Path(cfg.run_dir))
        _report(metrics, Path(cfg.run_dir))
    if args.multirun and run_dirs:  # the table of the runs that did run, even if others failed
        from lostreg.evaluation.compare import build_table, load_runs, to_markdown

        print(to_markdown(build_table(load_runs([str(d) for d in run_dirs]), include_published=True)))
    return status


def _report(metrics: dict, run_dir: Path) -> None:
    from lostreg.evaluation.corloc import format_corloc

    if metrics["corloc"] is not None:
        print(format_corloc(metrics))
    else:
        print(f"{metrics['total']} images, no ground truth: boxes in {run_dir / 'preds.jsonl'}")
    if metrics["failed"]:
        print(f"{metrics['failed']} images failed (counted as misses; see 'error' in preds.jsonl; a resume tries "
              "them again)", file=sys.stderr)
    print(f"run directory: {run_dir}", file=sys.stderr)
