"""Failures say what they are: a bad image is recorded and the run goes on; a bug stops the run loudly.

A bug injected into a method (an exception from lostreg's own code) must not become a run where
every image "failed" with exit code 0: ``lostreg eval`` stops with exit code 1 and the traceback,
after the batches before it are on disk (and recorded in run.json); the same command then resumes
and ends equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from lostreg.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_BUGGY = textwrap.dedent("""
    import sys
    import lostreg.lost as lost_module

    real = lost_module.run_lost
    calls = {"n": 0}

    def run_lost_with_a_bug(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ZeroDivisionError("injected bug in the method")
        return real(*args, **kwargs)

    lost_module.run_lost = run_lost_with_a_bug  # before the registry imports it
    from lostreg.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc_bug")
    synthetic.write_voc_dataset(root, n_images=10, seed=13, sizes=((96, 64),))
    return root


def lines(run_dir: Path) -> list[str]:
    return sorted((run_dir / "preds.jsonl").read_text().splitlines())


def test_a_bug_in_a_method_stops_eval_loudly_after_saving(voc: Path, tmp_path: Path) -> None:
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc}", "batch_size=2",
            "num_workers=0"]
    assert main([*args, f"run_dir={tmp_path / 'full'}"]) == 0
    script = tmp_path / "buggy.py"
    script.write_text(_BUGGY)
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, str(script), *args, f"run_dir={cut}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "ZeroDivisionError: injected bug" in proc.stderr
    assert "lostreg: error" not in proc.stderr  # not reported as a user error
    # The two batches before the bug are on disk, none of them as a failure, and the metrics say so.
    saved = [json.loads(line) for line in lines(cut)]
    assert len(saved) == 4 and all(p["error"] is None for p in saved)
    metrics = json.loads((cut / "metrics.json").read_text())
    assert (metrics["total"], metrics["failed"], metrics["complete"]) == (4, 0, False)
    session = json.loads((cut / "run.json").read_text())["sessions"][-1]
    assert session["error"] == "ZeroDivisionError: injected bug in the method" and session["ended"]
    # The same command, without the bug, resumes and ends equal to the uninterrupted run.
    assert main([*args, f"run_dir={cut}"]) == 0
    assert lines(cut) == lines(tmp_path / "full")


def test_a_bug_in_discover_is_not_an_image_failure(voc: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in (voc / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir())[:3]
    script = tmp_path / "buggy.py"
    script.write_text(_BUGGY)
    proc = subprocess.run([sys.executable, str(script), "discover", *images, "--backbone", "pixels",
                           "--no-progress", "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "ZeroDivisionError: injected bug" in proc.stderr, proc.stderr
    assert "inputs failed" not in proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2  # the two images before the bug were reported
    assert len((tmp_path / "out" / "discoveries.jsonl").read_text().splitlines()) == 2


def test_bad_images_are_recorded_and_the_run_goes_on(voc: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "tiny.png")
    run_dir = tmp_path / "run"
    assert main(["eval", "--no-progress", "backbone=pixels", "dataset=folder", f"dataset.root={folder}",
                 "num_workers=0", f"run_dir={run_dir}"]) == 0
    preds = {json.loads(line)["image_id"]: json.loads(line) for line in (run_dir / "preds.jsonl").read_text()
             .splitlines()}
    assert preds["good.png"]["error"] is None
    assert "broken.jpg" in preds["broken.jpg"]["error"] and "smaller than one" in preds["tiny.png"]["error"]
    assert json.loads((run_dir / "metrics.json").read_text())["failed"] == 2


def test_a_finished_run_rerun_leaves_its_metrics_as_they_were(voc: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc}",
            "num_workers=0", f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    before = (tmp_path / "run" / "metrics.json").read_text()
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    sessions = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["timings"]["images"] == 0
