"""``lostreg sweep``: one backbone pass per batch, a run directory per configuration equal to
``lostreg eval``'s, kill-safe resume, presets, the table and honest selection."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import synthetic
from helpers import sorted_pred_lines
from lostreg.cli.main import main
from lostreg.config import compose_config, protocol_from_config
from lostreg.evaluation.engine import DiscoveryEngine
from lostreg.evaluation.sweep import SweepGrid

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GRID = ["sweep.which=[k,q]", "sweep.layer=[-1,-2]", "sweep.gram_bias=[0,-0.2]"]


def base(voc: synthetic.SyntheticVoc) -> list[str]:
    return ["--no-progress", "backbone=dino", "weights=random", f"dataset.root={voc.root}", "dataset=voc07",
            "num_workers=0", "batch_size=4"]


@pytest.fixture(scope="module")
def swept(voc_mixed8: synthetic.SyntheticVoc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert main(["sweep", *base(voc_mixed8), *GRID, f"run_dir={out}"]) == 0
    return out


def test_grid_expansion_and_feature_sets() -> None:
    cfg = compose_config(["sweep.which=[k,q,k]", "sweep.layer=[-1,-2]", "sweep.l2_normalize=[false,true]"])
    grid = SweepGrid.from_config(cfg, protocol_from_config(cfg))
    assert len(grid.configurations) == 2 * 2 * 2, "duplicate values are dropped"
    assert [tuple(k) for k in grid.feature_keys] == [("k", -1), ("k", -2), ("q", -1), ("q", -2)]
    assert len({p.name for p in grid.configurations}) == 8


def test_every_configuration_equals_its_own_eval_run(swept: Path, voc_mixed8: synthetic.SyntheticVoc,
                                                      tmp_path: Path) -> None:
    configs = sorted(p.name for p in (swept / "configs").iterdir())
    assert len(configs) == 8
    for name, overrides in [("q_layer-2_k100_bias-0.2", ["features.which=q", "features.layer=-2",
                                                          "lost.gram_bias=-0.2"]),
                            ("k_layer-1_k100_bias0.0", [])]:
        assert name in configs
        assert main(["eval", *base(voc_mixed8), *overrides, f"run_dir={tmp_path / name}"]) == 0
        assert sorted_pred_lines(swept / "configs" / name) == sorted_pred_lines(tmp_path / name)
        metrics = json.loads((swept / "configs" / name / "metrics.json").read_text())
        alone = json.loads((tmp_path / name / "metrics.json").read_text())
        assert {k: metrics[k] for k in ("corloc", "hits", "total", "ap50")} == \
               {k: alone[k] for k in ("corloc", "hits", "total", "ap50")}


def test_table_best_first_and_csv(swept: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (swept / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["which", "layer", "l2_normalize", "gram_bias", "k_patches", "corloc", "hits", "total"]
    corlocs = [float(r["corloc"]) for r in rows]
    assert corlocs == sorted(corlocs, reverse=True) and len(rows) == 8
    summary = json.loads((swept / "metrics.json").read_text())
    assert summary["kind"] == "sweep" and summary["complete"] and summary["best"]["corloc"] == corlocs[0]
    assert "oracle" in summary["best"]["note"]
    # The sub-directories are ordinary run directories: compare reads the sweep as its best row.
    assert main(["compare", str(swept)]) == 0
    assert "sweep of 8: best on the same data (oracle)" in capsys.readouterr().out


def test_interrupt_then_resume_equals_uninterrupted(swept: Path, voc_mixed8: synthetic.SyntheticVoc,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    real = DiscoveryEngine.process  # one call per loader batch
    calls = {"n": 0}

    def interrupt_on_second(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DiscoveryEngine, "process", interrupt_on_second)
    cut = tmp_path / "cut"
    assert main(["sweep", *base(voc_mixed8), *GRID, f"run_dir={cut}"]) == 130
    partial = sorted_pred_lines(cut / "configs" / "k_layer-1_k100_bias0.0")
    assert 0 < len(partial) < 8
    # A configuration that lost its last batch (as after a kill) is completed for that one only.
    victim = cut / "configs" / "q_layer-1_k100_bias0.0" / "preds.jsonl"
    victim.write_text("".join(victim.read_text().splitlines(keepends=True)[:-1]))
    monkeypatch.setattr(DiscoveryEngine, "process", real)
    assert main(["sweep", *base(voc_mixed8), *GRID, f"run_dir={cut}"]) == 0
    for sub in (swept / "configs").iterdir():
        assert sorted_pred_lines(cut / "configs" / sub.name) == sorted_pred_lines(sub)
    assert "images done in every configuration" in capsys.readouterr().err


def test_presets_load_and_eval_takes_their_single_protocol() -> None:
    for name, which, l2 in (("lost_original", "k", False), ("registers_paper", "k", False), ("best_of", "k", True)):
        cfg = compose_config([f"protocol={name}"])
        protocol = protocol_from_config(cfg)
        assert (protocol.features.which, protocol.features.l2_normalize) == (which, l2)
    grid = SweepGrid.from_config(compose_config(["protocol=best_of"]), protocol_from_config(
        compose_config(["protocol=best_of"])))
    assert len(grid.configurations) == 3 * 4 * 11 and {p.features.l2_normalize for p in grid.configurations} == {True}
    assert len(grid.feature_keys) == 12


def test_select_on_reports_the_configuration_chosen_on_other_data(swept: Path, voc_mixed8: synthetic.SyntheticVoc,
                                                                  voc12_set: synthetic.SyntheticVoc, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    voc12 = voc12_set.root
    out = tmp_path / "s12"
    args = [a for a in base(voc_mixed8) if not a.startswith("dataset")] + [f"dataset.root={voc12}", "dataset=voc12"]
    assert main(["sweep", *args, *GRID, f"run_dir={out}", f"select_on={swept}"]) == 0
    stdout = capsys.readouterr().out
    chosen = json.loads((swept / "metrics.json").read_text())["best"]["protocol"]
    selected = json.loads((out / "metrics.json").read_text())["selected"]
    assert selected["protocol"] == chosen and selected["on"] == "voc07"
    assert f"Chosen on voc07: {chosen}" in stdout
    assert main(["compare", str(swept), str(out)]) == 0
    table = capsys.readouterr().out
    assert "sweep of 8: chosen on voc07" in table and "sweep of 8: best on the same data (oracle)" in table
    assert main(["sweep", *args, *GRID, f"run_dir={tmp_path / 'x'}", f"select_on={tmp_path / 'nope'}"]) == 2
