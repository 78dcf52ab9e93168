"""Every backbone family of the registers table and beyond runs every command: discover, eval, sweep and
inspect, with random weights on small images (DINO, DeiT-III, OpenCLIP, DINOv2, DINOv2+reg, DINOv3).

These check that each family goes through the whole pipeline, not what its boxes are worth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from lostreg.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

#: The smallest registered backbone of each family (OpenCLIP has no ViT-S in timm's LAION-2B weights).
FAMILIES = ["dino_vits16", "deit3_vits16", "openclip_vitb16", "dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"]


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("family_pictures") / "scene.png"
    rng = np.random.default_rng(9)
    array = (rng.random((56, 80, 3)) * 60 + 100).astype(np.uint8)
    array[14:42, 24:56] = (30, 40, 200)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("family_voc")
    synthetic.write_voc_dataset(root, n_images=2, seed=13, sizes=((64, 48), (48, 64)))
    return root


@pytest.mark.parametrize("backbone", FAMILIES)
def test_every_family_runs_every_command(backbone: str, picture: Path, voc: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--weights", "random", "--device", "cpu"]
    # discover: one JSON line, a box inside the picture.
    assert main(["discover", str(picture), "--backbone", backbone, *common]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x1, y1, x2, y2 = record["box_xyxy"]
    assert record["backbone"] == backbone and 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 56

    hydra = [f"backbone={backbone}", "weights=random", "dataset=voc07", f"dataset.root={voc}", "num_workers=0",
             "batch_size=2", "--no-progress"]
    # eval: a complete run directory with a CorLoc.
    run_dir = tmp_path / "eval"
    assert main(["eval", *hydra, f"run_dir={run_dir}"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["total"] == 2 and metrics["corloc"] is not None

    # sweep: two feature kinds (the attention's keys and the output tokens) from one pass per batch.
    sweep_dir = tmp_path / "sweep"
    assert main(["sweep", *hydra, "sweep.which=[k,out]", "sweep.k_patches=[1,100]", f"run_dir={sweep_dir}"]) == 0
    summary = json.loads((sweep_dir / "metrics.json").read_text())
    assert summary["complete"] and len(summary["configurations"]) == 4
    capsys.readouterr()

    # inspect: its figures and summary.
    out = tmp_path / "inspect"
    assert main(["inspect", str(picture), "--backbone", backbone, *common, "--output", str(out)]) == 0
    inspected = json.loads((out / "summary.json").read_text())
    assert [b["backbone"] for b in inspected["backbones"]] == [backbone]
    assert len(list(out.glob("*.png"))) >= 3
