"""The method registry: a third method is one module plus one registration, and every seam follows.

``tests/toy_method.py`` is that module (``brightest``). Registered for a test, it gets its protocol
section, validation, command-line flags, hydra config section, run-directory name, sweep axis,
memory estimate and record fields from its registration alone, and runs through ``lostreg eval``,
``lostreg sweep`` and ``lostreg discover`` end to end.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import pytest

import synthetic
import toy_method
from lostreg.backbones import build_backbone
from lostreg.boxes import patch_box_to_pixels
from lostreg.cli.common import protocol_from_args, protocol_overrides, protocol_parent_parser
from lostreg.cli.main import main
from lostreg.config import compose_config, protocol_from_config
from lostreg.io.images import load_image_rgb
from lostreg.knobs import FeatureConfig, ProtocolError, knob
from lostreg.memory import estimate_batch_bytes
from lostreg.methods import MethodSpec, get_method, method_names, register_method
from lostreg.preprocess import to_padded_tensor
from lostreg.protocol import DiscoveryProtocol, describe_protocol

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SRC = Path(__file__).resolve().parents[1] / "lostreg"


@pytest.fixture()
def toy() -> MethodSpec:
    spec = toy_method.register()
    yield spec
    toy_method.unregister()


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc_toy")
    synthetic.write_voc_dataset(root, n_images=5, seed=21, sizes=((160, 128), (150, 100)), scene="simple")
    return root


def test_builtins_are_registered_first_with_their_labels() -> None:
    assert method_names()[:2] == ("lost", "tokencut")
    assert (get_method("lost").label, get_method("tokencut").label) == ("LOST", "TokenCut")
    assert get_method("tokencut").record_fields(type("R", (), {"degenerate": 1})()) == {"degenerate": True}


def test_no_method_is_named_outside_the_registry() -> None:
    """No ``method == "lost"``-style branch and no ``hasattr(result, "degenerate")`` outside lostreg/methods/."""
    named = re.compile(r"method\s*[!=]=\s*['\"]|hasattr\([^)]*degenerate")
    offenders = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py") if "methods" not in path.parts
                 for n, line in enumerate(path.read_text().splitlines(), 1) if named.search(line)]
    assert offenders == []


def test_a_toy_method_gets_every_seam_from_its_registration(toy: MethodSpec) -> None:
    config = toy_method.BrightestConfig(radius=2)
    protocol = DiscoveryProtocol(method="brightest", brightest=config)
    assert protocol.method_knobs == config and protocol.validate() is protocol
    assert protocol.name == "brightest_k_layer-1_r2"
    assert protocol.departures() == ["method=brightest", "radius=2"]
    assert describe_protocol(protocol) == "Brightest on raw keys of the last layer, radius 2"
    assert protocol.identity() == {"method": "brightest", "features": {"which": "k", "layer": -1,
                                   "l2_normalize": False}, "brightest": {"radius": 2}}
    with pytest.raises(ProtocolError, match="^brightest.radius must be >= 0, got -1$"):
        DiscoveryProtocol(method="brightest", brightest=toy_method.BrightestConfig(radius=-1)).validate()
    # Command-line flags, from the field.
    parser = argparse.ArgumentParser(parents=[protocol_parent_parser()])
    args = parser.parse_args(["--method", "brightest", "--radius", "2"])
    assert protocol_from_args(args) == protocol
    assert protocol_overrides(args) == ["method=brightest", "brightest.radius=2"]
    with pytest.raises(ProtocolError, match="^--radius must be >= 0"):
        protocol_from_args(parser.parse_args(["--method", "brightest", "--radius", "-3"]))
    # Hydra: a config section and a sweep axis of its own; the run directory is named by it.
    cfg = compose_config(["method=brightest", "brightest.radius=2", "sweep.radius=[0,1]"])
    assert protocol_from_config(cfg) == protocol and cfg.run_dir.endswith("/brightest_k_layer-1_r2")
    assert list(cfg.sweep.radius) == [0, 1]
    # Memory estimate and the JSON of earlier configs (no brightest section) still read.
    assert estimate_batch_bytes(protocol, patches=100, batch=2).method_bytes == 2 * 100 * 8
    assert DiscoveryProtocol.from_mapping({"lost": {"k_patches": 7}}).lost.k_patches == 7


def test_without_the_registration_the_method_is_unknown() -> None:
    with pytest.raises(ProtocolError, match="method must be one of lost, tokencut"):
        protocol_from_config(compose_config(["method=brightest"]))
    with pytest.raises(Exception, match="brightest"):
        compose_config(["brightest.radius=2"])


def test_setting_names_stay_unique_across_methods() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Clash:
        tau: float = knob(0.5, "taken by TokenCut")

        def validate(self) -> None:
            pass

    spec = MethodSpec("clash", "Clash", Clash, run=lambda *a: [], memory_bytes=lambda *a: 0,
                      dir_name=lambda f, c: "clash", describe=lambda f, c: "clash")
    with pytest.raises(ValueError, match=r"setting name\(s\) \['tau'\]"):
        register_method(spec)
    assert "clash" not in method_names()


def _expected_pixel_box(path: str, radius: int) -> list[int]:
    backbone = build_backbone("pixels")
    image = load_image_rgb(path)
    padded = to_padded_tensor(image, backbone.patch_size, backbone.mean, backbone.std)
    features = backbone.extract(padded.tensor[None])[0]
    box = toy_method.expected_box(features, padded.grid_hw, radius)
    return list(patch_box_to_pixels(box, backbone.patch_size, (image.shape[0], image.shape[1])))


def test_the_toy_runs_through_eval_sweep_and_discover(toy: MethodSpec, voc: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc}", "num_workers=0",
            "batch_size=2", "method=brightest"]
    assert main(["eval", *base, "brightest.radius=2", f"run_dir={tmp_path / 'eval'}"]) == 0
    preds = [json.loads(line) for line in (tmp_path / "eval" / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 5
    for pred in preds:
        assert pred["box_xyxy"] == _expected_pixel_box(pred["image"], 2), pred["image_id"]
        assert pred["touches_corner"] is (pred["box_xyxy"][:2] == [0, 0])  # the method's record field
    assert "method: brightest" in (tmp_path / "eval" / "config.yaml").read_text()

    # A sweep of the toy varies its knob; its table shows its knobs only.
    assert main(["sweep", *base, "sweep.radius=[0,2]", f"run_dir={tmp_path / 'sweep'}"]) == 0
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["which", "layer", "l2_normalize", "radius", "corloc", "hits", "total"]
    swept = tmp_path / "sweep" / "configs" / "brightest_k_layer-1_r2" / "preds.jsonl"
    assert sorted(swept.read_text().splitlines()) == sorted((tmp_path / "eval" / "preds.jsonl").read_text().splitlines())

    # discover: the same boxes, the record field on stdout.
    capsys.readouterr()
    image = preds[0]["image"]
    assert main(["discover", image, "--backbone", "pixels", "--method", "brightest", "--radius", "2",
                 "--max-size", "0"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["box_xyxy"] == preds[0]["box_xyxy"] and "touches_corner" in record


def test_tokencut_knobs_can_be_swept_and_its_table_shows_only_them(voc: Path, tmp_path: Path) -> None:
    base = ["--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc}", "num_workers=0",
            "method=tokencut"]
    assert main(["sweep", *base, "sweep.tau=[0.1,0.3]", f"run_dir={tmp_path / 's'}"]) == 0
    with (tmp_path / "s" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["which", "layer", "l2_normalize", "tau", "corloc", "hits", "total"]
    assert sorted(float(r["tau"]) for r in rows) == [0.1, 0.3]
    assert {p.name for p in (tmp_path / "s" / "configs").iterdir()} == {
        "tokencut_k_layer-1_tau0.1", "tokencut_k_layer-1_tau0.3"}
    # A LOST knob in a TokenCut sweep is refused before any work, naming the key.
    assert main(["sweep", *base, "sweep.k_patches=[10,100]", f"run_dir={tmp_path / 'bad'}"]) == 2
    assert not (tmp_path / "bad").exists()


def test_protocol_fields_are_declared_once() -> None:
    """The flags, the hydra nodes and the sweep axes list exactly the declared settings."""
    from lostreg.config import sweep_axes
    from lostreg.knobs import knob_fields

    declared = [f.name for f in knob_fields(FeatureConfig)]
    for spec in (get_method(m) for m in method_names()):
        declared += list(spec.knob_names())
    assert list(sweep_axes()) == declared
    parser = argparse.ArgumentParser(parents=[protocol_parent_parser()])
    dests = {a.dest for a in parser._actions} - {"help", "method"}
    assert dests == set(declared)
    cfg = compose_config([])
    assert set(cfg.features) | {k for m in method_names() for k in cfg[m]} == set(declared)
