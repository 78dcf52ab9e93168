"""``lostreg experiment registers_gap``: three backbones x three datasets from one data root, each
backbone built once, the gap table and reports; resumable; stops before work on a missing dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from PIL import Image

import synthetic
from lostreg.cli import experiment_cmd
from lostreg.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This file's own root (not conftest's): VOC07, VOC12 and COCO20k of 3-4 tiny images each, in
    the layout the experiment reads, which its COCO20k run writes a cache into."""
    root = tmp_path_factory.mktemp("data")
    sizes = ((64, 48), (48, 64))
    synthetic.write_voc_dataset(root, year="2007", n_images=3, seed=1, sizes=sizes)
    synthetic.write_voc_dataset(root, year="2012", n_images=3, seed=2, sizes=sizes)
    coco = synthetic.write_coco20k_root(root / "COCO", n_images=4, seed=3)
    synthetic.write_coco20k_filelist(root / "coco_20k_filenames.txt", [int(im.image_id) for im in coco.images[:3]])
    return root


def test_registers_gap_end_to_end_and_resume(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    built: list[str] = []
    real = experiment_cmd.build_backbone_loudly

    def counting(name, weights, device, **kwargs):  # type: ignore[no-untyped-def]
        built.append(name)
        return real(name, weights, device, **kwargs)

    monkeypatch.setattr(experiment_cmd, "build_backbone_loudly", counting)
    args = ["experiment", "registers_gap", f"data_root={data_root}", "size=s", "weights=random", "num_workers=0",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert built == ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"], "each backbone built once"
    results = tmp_path / "outputs" / "experiment_registers_gap_s"
    # gap.png: the grouped-bar figure (issue 14 adds it).
    assert {p.name for p in results.iterdir()} == {"gap.md", "gap.csv", "gap.png", "report_voc07.html",
                                                   "report_voc12.html", "report_coco20k.html"}
    # The headline (issue 14): one row per family, DINOv2 beside DINOv2+reg, random weights named.
    assert "| DINO | dino_vits16 (no registers variant released) | weights=random |" in out
    assert "| DINOv2 | dinov2_vits14 / dinov2_vits14_reg | weights=random |" in out
    assert (results / "gap.csv").read_text().count("(RANDOM weights)") == 0  # the CSV has a column for it
    for backbone in ("dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"):
        assert f"{backbone},weights=random" in (results / "gap.csv").read_text()
        for dataset in ("voc07", "voc12", "coco20k"):  # the single commands' run directories
            assert (tmp_path / "outputs" / dataset / f"{backbone}-random" / "k_layer-1_k100_bias0.0"
                    / "metrics.json").is_file()
    # Table 3 (the authors' own models) is a reference row below, saying what differs; never beside ours.
    references = out[out.index("## Reference rows"):]
    assert "| published: LOST (DINOv2+reg) ViT-L/14 | differs: authors'" in references
    assert "(55.4" not in out[:out.index("## Reference rows")]
    assert out.count("Not on the published data") == 3, "one note per dataset, not one per run"
    with Image.open(results / "gap.png") as figure:
        assert figure.format == "PNG" and figure.width > 300
    # Again: every run is already complete, nothing is recomputed.
    assert main(args) == 0
    assert capsys.readouterr().err.count("already complete") == 9


def test_a_missing_dataset_stops_the_experiment_before_any_backbone(voc_small: synthetic.SyntheticVoc,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A data root with VOC2007 only (conftest's 2-image set; its content does not matter here).
    assert main(["experiment", "registers_gap", f"data_root={voc_small.root}", "weights=random"]) == 2
    err = capsys.readouterr().err
    assert "VOC2012" in err and "RANDOM" not in err, "no backbone was built"
    assert main(["experiment", "nosuch", "data_root=x"]) == 2
    assert "unknown experiment 'nosuch'; known: registers_gap" in capsys.readouterr().err
    assert main(["experiment", "registers_gap"]) == 2
    assert "needs data_root=DIR" in capsys.readouterr().err


def test_families_run_deit3_and_openclip_with_the_registers_paper_protocol(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """families= picks the registers table's other rows; the registers_paper preset uses their values."""
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "registers_gap", f"data_root={data_root}", "families=deit3,openclip", "datasets=voc07",
                 "sweep=registers_paper", "weights=random", "num_workers=0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    results = tmp_path / "outputs" / "experiment_registers_gap_s_registers_paper_deit3-openclip"
    assert {p.name for p in results.iterdir()} == {"gap.md", "gap.csv", "gap.png", "report_voc07.html"}
    assert "| DeiT-III | deit3_vits16 (no registers variant released) |" in out
    assert "| OpenCLIP | openclip_vitb16 (no registers variant released) |" in out
    # Values, not keys, for these families (registers paper, section 3.3): every configuration of the sweep.
    for backbone in ("deit3_vits16", "openclip_vitb16"):
        sweeps = list((tmp_path / "outputs" / "voc07" / f"{backbone}-random").glob("sweep_*/configs/*"))
        assert len(sweeps) == 11 and all(p.name.startswith("v_layer-1_k100_bias") for p in sweeps)
    references = out[out.index("## Reference rows"):]
    for label in ("LOST (DeiT-III) ViT-B", "LOST (DeiT-III+reg) ViT-B", "LOST (OpenCLIP) ViT-B/16",
                  "LOST (OpenCLIP+reg) ViT-B/16"):
        assert f"| published: {label} | differs: authors'" in references
    assert any(line.startswith("values left out") and "LOST (DeiT-III+reg) ViT-B" in line for line in out.splitlines())
    assert "DINOv2" not in out[:out.index("## Reference rows")], "only the families asked"


def test_unknown_family_is_refused_before_any_backbone(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "registers_gap", f"data_root={data_root}", "families=dinov3", "weights=random"]) == 2
    err = capsys.readouterr().err
    assert "families=dinov3: this experiment's families are dino, dinov2, dinov2_reg, deit3, openclip" in err
    assert "RANDOM" not in err


def test_a_swept_experiment_chooses_on_one_dataset_and_reports_on_the_others(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue [13]: ``sweep=PRESET select_on=voc07 datasets=voc07,voc12``: each backbone's configuration is
    chosen on VOC07 (which runs first) and reported, fixed, on VOC12 ("chosen on" rows)."""
    monkeypatch.chdir(tmp_path)
    args = ["experiment", "registers_gap", f"data_root={data_root}", "datasets=voc12,voc07", "sweep=registers_paper",
            "select_on=voc07", "weights=random", "num_workers=0", "--no-progress"]
    assert main(args) == 0
    captured = capsys.readouterr()
    import json

    for backbone in ("dino_vits16-random", "dinov2_vits14-random", "dinov2_vits14_reg-random"):
        (voc07,) = (tmp_path / "outputs" / "voc07" / backbone).glob("sweep_*")
        (voc12,) = (tmp_path / "outputs" / "voc12" / backbone).glob("sweep_*")
        chosen = json.loads((voc07 / "metrics.json").read_text())["best"]["protocol"]
        selected = json.loads((voc12 / "metrics.json").read_text())["selected"]
        assert (selected["on"], selected["protocol"]) == ("voc07", chosen)
        assert json.loads((voc07 / "metrics.json").read_text())["selected"] is None
    assert "chosen on voc07" in captured.out and not (tmp_path / "outputs" / "coco20k").exists()
