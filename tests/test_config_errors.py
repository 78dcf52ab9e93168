"""Fail before work: every bad configuration is one line naming the setting, exit 2, nothing written.

Walks a table of bad settings through the command line (``lostreg eval``, ``discover``,
``inspect``) on a small generated VOC set; each must stop before any run directory, picture or
summary is created, with exactly one ``lostreg: error:`` line and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic import SyntheticVoc
from lostreg.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached hub weights and no network: a pretrained backbone cannot be loaded."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("lostreg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def corrupt_weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x00garbage" * 50)
    return path


EVAL_CASES = [
    # (overrides, words the one line must contain)
    (["backbone=dinov2_reg"], ["timm/vit_small_patch14_reg4_dinov2.lvd142m", "weights=PATH", "weights=random"]),
    (["backbone.name=nosuch_vit"], ["unknown backbone 'nosuch_vit'"]),
    (["backbone=pixels", "batch_size=0"], ["batch_size must be >= 1"]),
    (["backbone=pixels", "num_workers=-1"], ["num_workers must be >= 0"]),
    (["backbone=pixels", "max_size=-5"], ["max_size must be"]),
    (["backbone=pixels", "limit=0"], ["limit must be >= 1"]),
    (["backbone=pixels", "device=tpu"], ["device must be auto, cpu, cuda or cuda:N", "'tpu'"]),
    (["backbone=pixels", "device=cuda:x"], ["device must be auto, cpu, cuda or cuda:N"]),
    (["backbone=dino", "weights={corrupt}"], ["weights.pth", "cannot read weights"]),
    (["backbone=dino", "weights={folder}"], ["is a folder, not a weights file"]),
    (["backbone=pixels", "lost.k_patches=0"], ["lost.k_patches must be >= 1, got 0"]),
    (["backbone=pixels", "lost.k_patches=abc"], ["lost.k_patches=abc", "Integer"]),
    (["backbone=pixels", "features.which=x"], ["features.which must be one of q, k, v"]),
    (["backbone=pixels", "features.which=q"], ["pixels has no attention layers", "features.which must be k"]),
    (["backbone=dino", "weights=random", "features.layer=99"], ["features.layer must be in [-12, 11]"]),
    (["backbone=pixels", "dataset.no_hard=maybe"], ["dataset.no_hard=maybe", "not a valid bool"]),
    (["backbone=pixels", "lost.gram_bias=inf"], ["lost.gram_bias must be a finite number"]),
    (["backbone=pixels", "method=nosuch"], ["method must be one of"]),
]


@pytest.mark.parametrize("overrides, words", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_eval_refuses_bad_settings_before_writing(overrides: list[str], words: list[str], voc_small: SyntheticVoc,
                                                  tmp_path: Path, offline: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    values = {"corrupt": corrupt_weights(tmp_path), "folder": tmp_path}
    overrides = [o.format(**values) for o in overrides]
    code = main(["eval", "--no-progress", "dataset=voc07", f"dataset.root={voc_small.root}", "num_workers=0",
                 f"run_dir={run_dir}", *overrides])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert all(word in line for word in words), line
    assert not run_dir.exists(), "a refused configuration writes nothing"


def test_a_refused_start_does_not_poison_the_run_directory(voc_small: SyntheticVoc, tmp_path: Path, offline: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The offline failure used to leave config.yaml behind, and the same command with
    weights=random was then refused as "another configuration"."""
    base = ["eval", "--no-progress", "backbone=dino", "dataset=voc07", f"dataset.root={voc_small.root}",
            "num_workers=0", f"run_dir={tmp_path / 'run'}"]
    assert main(base) == 2
    assert main(base + ["weights=random"]) == 0, capsys.readouterr().err


DISCOVER_CASES = [
    (["--device", "tpu"], ["device must be auto, cpu, cuda or cuda:N"]),
    (["--device", "cuda:x"], ["device must be auto, cpu, cuda or cuda:N"]),
    (["--max-size", "-5"], ["--max-size must be >= 0"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["--backbone", "dino", "--weights", "random", "--layer", "40"], ["--layer must be in [-12, 11]"]),
    (["--backbone", "pixels", "--which", "q"], ["pixels has no attention layers"]),
    (["--k-patches", "0"], ["--k-patches must be >= 1"]),
    (["--gram-bias", "nan"], ["--gram-bias must be a finite number"]),
    (["--output", "{file}"], ["exists and is not a folder"]),
]


@pytest.mark.parametrize("flags, words", DISCOVER_CASES, ids=[" ".join(c[0]) for c in DISCOVER_CASES])
def test_discover_refuses_bad_settings_once(flags: list[str], words: list[str], voc_small: SyntheticVoc,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "taken.txt"
    existing.write_text("not a folder")
    flags = [f.format(file=existing) for f in flags]
    images = voc_small.image_dir
    args = ["discover", str(images), "--backbone", "pixels", *flags]
    if "--output" not in flags:
        args += ["--output", str(tmp_path / "out")]
    code = main(args)
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2 and captured.out == ""
    assert all(word in line for word in words), line
    assert not (tmp_path / "out").exists() and existing.read_text() == "not a folder"


@pytest.mark.parametrize("flags, words", [
    (["--device", "tpu"], ["device must be auto, cpu, cuda or cuda:N"]),
    (["--output", "{file}"], ["exists and is not a folder"]),
    (["--max-size", "-1"], ["--max-size must be >= 0"]),
])
def test_inspect_refuses_bad_settings_once(flags: list[str], words: list[str], voc_small: SyntheticVoc,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "taken.txt"
    existing.write_text("not a folder")
    flags = [f.format(file=existing) for f in flags]
    image = next(voc_small.image_dir.iterdir())
    args = ["inspect", str(image), "--backbone", "pixels", *flags]
    if "--output" not in flags:
        args += ["--output", str(tmp_path / "out")]
    code = main(args)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()
