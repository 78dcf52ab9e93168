"""torchrun: contiguous unpadded shards, one prediction file per rank, rank 0 merges (gloo, CPU)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic
from helpers import sorted_pred_lines
from lostreg.cli.main import main
from lostreg.evaluation.distributed import shard

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_shards_are_contiguous_unpadded_and_complete() -> None:
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [x for p in parts for x in p] == items
    assert shard([], 0, 4) == [] and shard([1], 3, 4) == []
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "-m", "lostreg", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_two_processes_equal_one_and_resume_with_another_world_size(voc_mixed12: synthetic.SyntheticVoc,
                                                                     tmp_path: Path) -> None:
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc_mixed12.root}",
            "num_workers=0", "batch_size=2"]
    assert main(args + [f"run_dir={tmp_path / 'one'}"]) == 0

    two = _torchrun(2, args + [f"run_dir={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted_pred_lines(tmp_path / "two") == sorted_pred_lines(tmp_path / "one")
    assert not list((tmp_path / "two").glob("preds.rank*.jsonl")), "rank files are merged"
    assert two.stdout.count("CorLoc: ") == 1, "rank 0 reports for everyone"
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["total"] == 12
    assert json.loads((tmp_path / "two" / "run.json").read_text())["sessions"][-1]["world_size"] == 2

    # Started alone (5 images), finished by two processes: the same predictions, each image once.
    assert main(args + [f"run_dir={tmp_path / 'mixed'}", "limit=5"]) == 0
    mixed = _torchrun(2, args + [f"run_dir={tmp_path / 'mixed'}"])
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    assert sorted_pred_lines(tmp_path / "mixed") == sorted_pred_lines(tmp_path / "one")


def test_rank_files_left_by_a_killed_job_are_merged_by_the_next_session(voc_mixed12: synthetic.SyntheticVoc,
                                                                         tmp_path: Path) -> None:
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc_mixed12.root}",
            "num_workers=0"]
    assert main(args + [f"run_dir={tmp_path / 'full'}"]) == 0
    lines = (tmp_path / "full" / "preds.jsonl").read_text().splitlines()
    cut = tmp_path / "cut"
    assert main(args + [f"run_dir={cut}", "limit=2"]) == 0
    # As a killed 3-rank job leaves them: two rank files, one ending in half a line.
    (cut / "preds.rank1.jsonl").write_text("\n".join(lines[4:7]) + "\n")
    (cut / "preds.rank2.jsonl").write_text(lines[9] + "\n" + lines[10][:40])
    from lostreg.rundir import RunDir

    seen = {json.loads(line)["image_id"] for line in [*(cut / "preds.jsonl").read_text().splitlines(),
                                                        *lines[4:7], lines[9]]}
    assert set(RunDir(cut).read_predictions()) == seen, "readers see unmerged rank files (not half lines)"
    assert main(args + [f"run_dir={cut}"]) == 0
    assert sorted_pred_lines(cut) == sorted_pred_lines(tmp_path / "full")
    ids = [json.loads(line)["image_id"] for line in (cut / "preds.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12
    assert not list(cut.glob("preds.rank*.jsonl"))
