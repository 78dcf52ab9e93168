"""Issue [13]: sweep, experiment, calibrate and the shared paths as solid as eval.

One test per row of the issue's table (what a user did -> exit code, one line, nothing written, or
a readable result), then the friction items.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from helpers import run_command
from lostreg.cli.main import main
from lostreg.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("WARNING", "lostreg: warning"))]
    assert len(lines) == 1 and lines[0].startswith("lostreg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def eval_args(voc: synthetic.SyntheticVoc, *extra: str) -> list[str]:
    return ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc.root}",
            "num_workers=0", *extra]


def sweep_args(voc: synthetic.SyntheticVoc, *extra: str) -> list[str]:
    return ["sweep", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc.root}",
            "num_workers=0", "sweep.k_patches=[1,100]", *extra]


@pytest.fixture()
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) any attempt to build a backbone: the command must stop before."""
    built: list[str] = []

    def refuse(name: str, *args: object, **kwargs: object) -> None:
        built.append(name)
        raise AssertionError(f"a backbone ({name}) was built")

    # build_backbone_loudly looks lostreg.backbones.build_backbone up when called (patching the
    # function itself would stick in the command modules that import it by name).
    monkeypatch.setattr("lostreg.backbones.build_backbone", refuse)
    return built


# ---------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("command", ["eval", "sweep"])
@pytest.mark.parametrize("where", ["afile", "afile/sub"])
def test_run_dir_in_a_file_is_one_line_and_nothing_is_written(command: str, where: str, voc_small, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              no_backbone: list[str]) -> None:
    (tmp_path / "afile").write_text("not a folder")
    args = eval_args(voc_small) if command == "eval" else sweep_args(voc_small)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*args, f"run_dir={tmp_path / where}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tmp_path / where) in line and "is a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "not a folder"
    assert no_backbone == []


def test_experiment_out_in_a_file_is_refused_before_any_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 no_backbone: list[str]) -> None:
    root = tmp_path / "data"
    synthetic.write_voc_dataset(root, n_images=2, seed=1, sizes=((64, 48),))
    synthetic.write_voc_dataset(root, year="2012", n_images=2, seed=2, sizes=((64, 48),))
    (tmp_path / "afile").write_text("x")
    code = main(["experiment", "registers_gap", f"data_root={root}", "datasets=voc07,voc12", "weights=random",
                 f"out={tmp_path / 'afile'}", "--no-progress"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"out={tmp_path / 'afile'}" in line and "is a file" in line
    assert no_backbone == [] and not (Path("outputs")).joinpath("voc07").exists()


@pytest.mark.parametrize("output", ["folder", "afile/x.json"])
def test_calibrate_output_checked_before_calibrating(output: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      no_backbone: list[str]) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["calibrate", "--backbone", "dinov2", "--weights", "random", "--images", str(tmp_path / "a.png"),
                 "--output", str(tmp_path / output), "--no-progress"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tmp_path / output) in line and ("is a folder" in line or "is a file" in line)
    assert no_backbone == []


@pytest.mark.parametrize("select_on", ["voc12", "/nowhere/at/all"])
def test_sweep_select_on_without_a_sweep_is_refused_before_work(select_on: str, voc_small, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                no_backbone: list[str]) -> None:
    run_dir = tmp_path / "outputs" / "voc07" / "pixels" / "sweep_x"
    assert main([*sweep_args(voc_small), f"run_dir={run_dir}", f"select_on={select_on}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"select_on={select_on}" in line
    assert not run_dir.exists() and no_backbone == []


def test_a_relative_dataset_root_works_from_another_folder(voc_small, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    voc_small.copy_to(work / "data")
    monkeypatch.chdir(work)
    assert main(["eval", "--no-progress", "backbone=pixels", "dataset=voc07", "dataset.root=data", "num_workers=0",
                 f"run_dir={tmp_path / 'run'}"]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"root: {work / 'data'}" in config  # recorded absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "yolo", "--out", str(tmp_path / "yolo"),
                 "--link-images"]) == 0
    links = list((tmp_path / "yolo" / "images").iterdir())
    assert len(links) == 2 and all(link.resolve().is_file() for link in links)
    # The same command with an image gone is an error naming it, not a broken link.
    gone = next((work / "data").rglob("*.jpg"))
    gone.unlink()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "voc", "--out", str(tmp_path / "voc"),
                 "--link-images"]) == 2
    assert gone.name in one_error_line(capsys.readouterr().err)


def test_whole_files_follow_the_umask(voc_small, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main([*eval_args(voc_small), f"run_dir={tmp_path / 'run'}"]) == 0
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.json", "run.json", "preds.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("command, override, key", [
    ("sweep", "sweep.foo=[1,2]", "sweep.foo"),
    ("sweep", "+sweep.foo=[1,2]", "sweep.foo"),
    ("eval", "+foo=1", "foo"),
    ("eval", "+lost.zz=2", "lost.zz"),
    ("eval", "+dataset.nosuch=1", "dataset.nosuch"),
])
def test_unknown_keys_are_refused_with_or_without_plus(command: str, override: str, key: str, voc_small,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = eval_args(voc_small) if command == "eval" else sweep_args(voc_small)
    assert main([*args, override, f"run_dir={tmp_path / 'run'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"unknown key {key}: not in" in line and "+" not in line.split("unknown key")[1]
    assert not (tmp_path / "run").exists()


_KILL_AFTER_FIRST_BATCH = textwrap.dedent("""
    import os, signal, sys
    from lostreg.evaluation.engine import DiscoveryEngine
    real = DiscoveryEngine.process
    calls = {"n": 0}

    def process_then_die(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            import time
            time.sleep(0.5)  # let the writer thread put the first batch on disk
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, batch)

    DiscoveryEngine.process = process_then_die
    from lostreg.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_killed_sweep_and_a_killed_first_eval_are_readable(voc4, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "kill.py"
    script.write_text(_KILL_AFTER_FIRST_BATCH)
    sweep_dir = tmp_path / "sweep"
    killed = subprocess.run([sys.executable, str(script), *sweep_args(voc4, "batch_size=2"), f"run_dir={sweep_dir}"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    code, out, _ = run_command(capsys, "compare", sweep_dir)
    assert code == 0 and "sweep of 2: best on the same data (oracle)" in out and "incomplete" in out
    run_dir = tmp_path / "eval"
    killed = subprocess.run([sys.executable, str(script), *eval_args(voc4, "batch_size=2"), f"run_dir={run_dir}"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    sessions = RunDir(run_dir).read_run_info()["sessions"]
    assert len(sessions) == 1 and sessions[0]["ended"] is None and sessions[0]["command"]


@pytest.mark.parametrize("command", ["eval", "experiment"])
def test_flags_among_the_overrides(command: str, voc_small, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    if command == "eval":
        argv = ["eval", "backbone=pixels", "--no-progress", "dataset=voc07", f"dataset.root={voc_small.root}",
                "num_workers=0", f"run_dir={tmp_path / 'run'}"]
        assert main(argv) == 0
        assert (tmp_path / "run" / "metrics.json").exists()
    else:  # stops at the missing data root, after parsing: the flag was accepted among the overrides
        assert main(["experiment", "registers_gap", "weights=random", "--no-progress", f"data_root={tmp_path}",
                     "datasets=voc07"]) == 2
        assert "unrecognized arguments" not in capsys.readouterr().err


def test_a_busy_run_dir_is_refused_before_the_model_is_built(voc_small, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             no_backbone: list[str]) -> None:
    run_dir = RunDir(tmp_path / "run")
    with run_dir.lock("another lostreg eval"):
        assert main([*eval_args(voc_small), f"run_dir={run_dir.path}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "being written by another process" in line and "another lostreg eval" in line
    assert no_backbone == []


# ---------------------------------------------------------------------------------- friction


def test_failed_images_are_retried_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=folder", f"dataset.root={folder}", "num_workers=0",
            f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["failed"] == 1
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(folder / "b.jpg")  # the user fixes the file
    capsys.readouterr()
    assert main(args) == 0
    assert "retrying 1 image that failed" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "run" / "preds.jsonl").read_text().splitlines()]
    assert sorted(p["image_id"] for p in lines) == ["a.png", "b.jpg"] and all(p["error"] is None for p in lines)


def test_compare_names_the_configuration_a_sweep_chose(voc4, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*sweep_args(voc4), f"run_dir={tmp_path / 's'}"]) == 0
    best = json.loads((tmp_path / "s" / "metrics.json").read_text())["best"]
    code, out, _ = run_command(capsys, "compare", tmp_path / "s", "--csv", tmp_path / "t.csv")
    words = "default" if best["k_patches"] == 100 else f"k={best['k_patches']}"
    assert code == 0 and f"the configuration is {words}" in out
    assert "voc07_configuration" in (tmp_path / "t.csv").read_text().splitlines()[0]


def test_sweep_errors_name_the_sweep_key(voc_small, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*sweep_args(voc_small), "sweep.which=[k,x]", f"run_dir={tmp_path / 's'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "sweep.which must be one of q, k, v, out; got 'x'" in line


def test_sweeps_report_failed_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["sweep", "--no-progress", "backbone=pixels", "dataset=folder", f"dataset.root={folder}",
                 "num_workers=0", "sweep.k_patches=[1,100]", f"run_dir={tmp_path / 's'}"]) == 0
    assert "1 images failed (counted as misses" in capsys.readouterr().err


def test_report_and_export_take_a_sweep_directory(voc4, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*sweep_args(voc4), f"run_dir={tmp_path / 's'}"]) == 0
    capsys.readouterr()
    code, _, err = run_command(capsys, "export", tmp_path / "s", "--format", "coco", "--out", tmp_path / "x.json")
    assert code == 0 and "is a sweep of 2 configurations: using its best configuration" in err
    assert len(json.loads((tmp_path / "x.json").read_text())["annotations"]) == 4
    code, _, _ = run_command(capsys, "report", tmp_path / "s", "-o", tmp_path / "r.html", "--no-progress")
    assert code == 0 and (tmp_path / "r.html").is_file()


def test_discover_says_a_test_time_register_was_applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lostreg.backbones import build_backbone
    from lostreg.ttreg import RegisterNeurons

    neurons = tmp_path / "n.json"
    RegisterNeurons.from_layer_units(build_backbone("dinov2", weights="random", device="cpu"), {3: [5, 9]}).save(neurons)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 70, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    code, out, err = run_command(capsys, "discover", tmp_path / "x.png", "--backbone", "dinov2", "--weights",
                                 "random", "--ttreg", neurons)
    assert code == 0
    assert "one test-time register over 2 MLP units in block 3" in err
    assert json.loads(out)["ttreg"] == str(neurons)


def test_discover_says_what_it_does_before_a_long_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lostreg.cli.discover_cmd.LONG_IMAGE_PATCHES", 10)
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(tmp_path / "big.png")
    code, _, err = run_command(capsys, "discover", tmp_path / "big.png", "--backbone", "pixels", "--max-size", "0")
    assert code == 0 and "96x64 px is 24 patches at p=16" in err


def test_experiment_lists_every_missing_dataset_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        no_backbone: list[str]) -> None:
    assert main(["experiment", "registers_gap", f"data_root={tmp_path}", "weights=random", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "3 of 3 datasets cannot be read" in line and all(d in line for d in ("voc07:", "voc12:", "coco20k:"))
    assert main(["experiment", "registers_gap", f"data_root={tmp_path}", "datasets=voc07,imagenet"]) == 2
    assert "this experiment's datasets are voc07, voc12, coco20k" in capsys.readouterr().err
    assert main(["experiment", "registers_gap", f"data_root={tmp_path}", "select_on=voc07"]) == 2
    assert "give sweep=PRESET too" in capsys.readouterr().err


def test_help_describes_every_method_and_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "TokenCut" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("method=", "ttreg=", "protocol=", "precision=", "limit="))
