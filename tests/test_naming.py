"""Datasets own their identity and directory name; run naming lives in :mod:`lostreg.rundir`.

A dataset kind registered in a test (a folder-like dataset under another name) composes, names
its run directory, is identified and builds from its registration alone; ``select_on`` finds
another dataset's sweep through rundir's layout; the sweep directory name is computed in one place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml
from omegaconf import MISSING

import synthetic
from lostreg.cli.main import main
from lostreg.config import compose_config, dataset_identity, dataset_kwargs, protocol_from_config
from lostreg.datasets import (
    FolderDataset,
    build_dataset,
    dataset_kind,
    dataset_names,
    register_dataset,
    unregister_dataset,
)
from lostreg.datasets.kinds import FolderKind
from lostreg.datasets.registry import REQUIRED
from lostreg.errors import ConfigError, UnknownNameError
from lostreg.evaluation.compare import build_table, load_runs, to_markdown
from lostreg.evaluation.experiment import Experiment
from lostreg.evaluation.sweep import SweepGrid, select_on_dir
from lostreg.rundir import backbone_dir_name, default_run_dir, run_dir_on_dataset, sweep_dir_name

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@dataclass
class ToyNode:
    """``dataset=toyfolder``: a test's own folder-like dataset."""

    name: str = REQUIRED
    root: str = REQUIRED
    recursive: bool = False
    expected_count: Optional[int] = None


@pytest.fixture
def toy_kind() -> Iterator[FolderKind]:
    """A folder-like kind under another name, registered for one test and unregistered after it."""
    kind = register_dataset(FolderKind(name="toyfolder", reader=FolderDataset, schema=ToyNode, label="Toy",
                                       location_keys=("root",), annotated=False))
    try:
        yield kind
    finally:
        unregister_dataset("toyfolder")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    written = synthetic.write_voc_dataset(root / "voc", n_images=2, seed=3, sizes=((64, 48),))
    return written[0].path.parent


def test_required_marker_is_omegaconfs() -> None:
    assert REQUIRED == MISSING


def test_a_registered_kind_composes_names_identifies_and_builds(toy_kind: FolderKind, images: Path,
                                                               tmp_path: Path) -> None:
    """Nothing in config.py names the toy dataset: its option, schema, run directory, identity and
    reader all come from the registration."""
    assert "toyfolder" in dataset_names() and dataset_kind("TOYFOLDER") is toy_kind
    cfg = compose_config(["dataset=toyfolder", f"dataset.root={images}"])
    assert dict(cfg.dataset) == {"name": "toyfolder", "root": str(images), "recursive": False, "expected_count": None}
    assert cfg.run_dir == f"outputs/toyfolder_{images.name}/dinov2_vits14_reg/k_layer-1_k100_bias0.0"
    settings = dict(cfg.dataset)
    assert dataset_identity(settings) == {"name": "toyfolder", "recursive": False, "root": str(images.resolve())}
    assert dataset_kwargs(cfg) == {"root": str(images), "recursive": False}
    assert len(build_dataset("toyfolder", **dataset_kwargs(cfg))) == 2
    # The schema is the registration's: its keys only, its types, its required values.
    with pytest.raises(ConfigError, match="unknown key dataset.nope"):
        compose_config(["dataset=toyfolder", f"dataset.root={images}", "dataset.nope=1"])
    with pytest.raises(ConfigError, match="recursive"):
        compose_config(["dataset=toyfolder", f"dataset.root={images}", "dataset.recursive=maybe"])
    with pytest.raises(ConfigError, match="dataset.root"):
        compose_config(["dataset=toyfolder"])


def test_a_registered_kind_runs_and_is_labelled_by_its_registration(toy_kind: FolderKind, images: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--no-progress", "backbone=pixels", "dataset=toyfolder", f"dataset.root={images}",
                 "num_workers=0"]) == 0
    run = tmp_path / "outputs" / f"toyfolder_{images.name}" / "pixels" / "k_layer-1_k100_bias0.0"
    assert json.loads((run / "metrics.json").read_text())["total"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["name"] == "toyfolder"
    capsys.readouterr()
    table = to_markdown(build_table(load_runs([run])))
    assert "| Toy ours |" in table.splitlines()[0]


def test_an_unregistered_kind_is_gone() -> None:
    kind = register_dataset(FolderKind(name="gone", reader=None, schema=ToyNode, label="Gone"))
    try:
        assert compose_config(["dataset=gone", "dataset.root=x"]).dataset.name == "gone"
    finally:
        assert unregister_dataset("gone") is kind
    with pytest.raises(ConfigError, match="gone"):
        compose_config(["dataset=gone", "dataset.root=x"])
    with pytest.raises(UnknownNameError, match="unknown dataset 'gone'; known: voc07, voc12, coco20k, coco, folder"):
        build_dataset("gone", root="x")
    # A run directory of a kind no longer registered is still read: labelled and identified by name.
    stand_in = dataset_kind("gone", strict=False)
    assert stand_in.label == "gone" and stand_in.published_size is None
    assert dataset_identity({"name": "gone", "root": "."})["root"] == str(Path(".").resolve())


def test_builtin_kinds_keep_their_directory_names_and_facts(tmp_path: Path) -> None:
    names = {
        ("voc07",): "voc07",
        ("voc07", "dataset.split=small"): "voc07_small",
        ("voc12", "dataset.no_hard=true"): "voc12_nohard",
        ("voc07", "dataset.split=val", "dataset.no_hard=true"): "voc07_val_nohard",
        ("coco20k",): "coco20k",
        ("coco", "dataset.annotation_json=ann/instances_mine.json", "dataset.image_dir=x"): "coco_instances_mine",
        ("folder", f"dataset.root={tmp_path / 'photos'}/"): "folder_photos",
    }
    for (name, *overrides), expected in names.items():
        assert compose_config([f"dataset={name}", *overrides]).run_dir.split("/")[1] == expected
    # The run directory reads dataset.root: unset, it is named as missing, not a resolver's traceback.
    with pytest.raises(ConfigError, match=r"missing required value\(s\): dataset.root "):
        compose_config(["dataset=folder"])
    assert [(k.name, k.label, k.main, k.published_size) for k in map(dataset_kind, dataset_names())] == [
        ("voc07", "VOC07", True, 5011), ("voc12", "VOC12", True, 11540), ("coco20k", "COCO20k", True, 19817),
        ("coco", "COCO", False, None), ("folder", "folder", False, None)]
    assert dataset_kind("coco").image_root({"name": "coco", "image_dir": "imgs", "annotation_json": "a.json"}) == "imgs"
    assert dataset_kind("voc12").variant({"split": "val", "no_hard": True}) == ["split=val", "no_hard"]
    assert dataset_kind("voc07").expected_images({"split": "trainval"}) == 5011
    assert dataset_kind("voc07").expected_images({"split": "trainval", "no_hard": True}) is None


def test_rundir_layout() -> None:
    assert backbone_dir_name("dino_vits16", "pretrained") == "dino_vits16"
    assert backbone_dir_name("dino_vits16", "random") == "dino_vits16-random"
    assert backbone_dir_name("dino_vits16", "/ckpt/mine.pth", "cal/neurons.pt") == "dino_vits16-mine-ttreg-neurons"
    assert default_run_dir("voc07_small", "pixels", "k_layer-1_k100_bias0.0_max1024") == \
        "outputs/voc07_small/pixels/k_layer-1_k100_bias0.0_max1024"
    grid = {"which": ["k", "q"], "layer": [-1]}
    assert sweep_dir_name("lost", grid, 0, "fp32") == sweep_dir_name("lost", grid, None, "fp32")
    assert sweep_dir_name("lost", grid, None, "fp32") != sweep_dir_name("lost", grid, None, "bf16")
    assert run_dir_on_dataset(Path("outputs/voc12/dino/sweep_1"), "voc12", "voc07") == Path("outputs/voc07/dino/sweep_1")
    assert run_dir_on_dataset(Path("/scratch/mine"), "voc12", "voc07") is None


def test_select_on_finds_the_sweep_beside_this_one(tmp_path: Path) -> None:
    voc12 = {"name": "voc12", "root": "data", "split": "trainval", "no_hard": False}
    here = tmp_path / "outputs" / "voc12" / "dino_vits16-random" / "sweep_0123456789"
    there = tmp_path / "outputs" / "voc07" / "dino_vits16-random" / "sweep_0123456789"
    there.mkdir(parents=True)
    assert select_on_dir("voc07", here, voc12) == there
    assert select_on_dir(str(there), tmp_path / "anywhere", voc12) == there, "a path works from any run_dir"
    with pytest.raises(ConfigError) as missing:
        select_on_dir("voc07_nohard", here, voc12)
    message = str(missing.value)
    assert "\n" not in message and str(there.parent.parent.parent / "voc07_nohard" / there.parent.name / there.name) \
        in message
    with pytest.raises(ConfigError, match="not in the default layout"):
        select_on_dir("voc07", tmp_path / "mine", voc12)
    with pytest.raises(ConfigError, match="no such sweep directory"):
        select_on_dir(str(tmp_path / "nope"), here, voc12)
    # The dataset part of the layout is the kind's own name for its variant.
    nohard = tmp_path / "outputs" / "voc12_nohard" / "dino_vits16-random" / "sweep_0123456789"
    assert select_on_dir("voc07", nohard, dict(voc12, no_hard=True)) == there


def test_the_sweep_directory_is_named_in_one_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lostreg sweep``'s default directory, the grid's and ``lostreg experiment``'s are one."""
    sizes = ((64, 48),)
    synthetic.write_voc_dataset(tmp_path, year="2007", n_images=2, seed=1, sizes=sizes)
    synthetic.write_voc_dataset(tmp_path, year="2012", n_images=2, seed=2, sizes=sizes)
    coco = synthetic.write_coco20k_root(tmp_path / "COCO", n_images=2, seed=3)
    synthetic.write_coco20k_filelist(tmp_path / "coco_20k_filenames.txt", [int(im.image_id) for im in coco.images])
    experiment = Experiment.prepare("registers_gap", [f"data_root={tmp_path}", "sweep=best_of", "weights=random",
                                                      "max_size=512"])
    assert len(experiment.runs) == 9
    for run in experiment.runs[:3]:
        assert main(["sweep", "--cfg", *run.overrides]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)["run_dir"]
        cfg = compose_config(run.overrides)
        grid = SweepGrid.from_config(cfg, protocol_from_config(cfg))
        name = sweep_dir_name(grid.configurations[0].method, grid.lists, 512, "fp32")
        assert run.cfg.run_dir == printed == grid.default_run_dir(cfg) == \
            f"outputs/{run.dataset}/{run.backbone}-random/{name}"


def test_datasets_and_rundir_stay_free_of_torch_and_hydra() -> None:
    code = "import sys, lostreg.datasets, lostreg.rundir; print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
