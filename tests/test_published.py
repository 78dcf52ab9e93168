"""The published rows and the rules that set one beside a run: the same checkpoint, the published protocol.

No model, no data: protocols, sweep grids and run summaries are built as lostreg writes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from lostreg.backbones.registry import resolve_backbone
from lostreg.config import compose_config, protocol_from_config
from lostreg.evaluation.compare import build_table, table_text
from lostreg.evaluation.published import (
    PUBLISHED,
    checkpoint_of,
    lostreg_backbone_for,
    mismatches,
    published_by_key,
    published_match,
    published_sweep_match,
)
from lostreg.evaluation.runs import RunSummary
from lostreg.evaluation.sweep import SweepGrid
from lostreg.protocol import DiscoveryProtocol, FeatureConfig, LostConfig

T3_REG = (55.4, 60.0, 42.0)
JIANG_REG = (56.2, 60.2, 42.3)


def _values(key: str) -> tuple[float | None, ...]:
    row = published_by_key(key)
    return (row.voc07, row.voc12, row.coco20k)


def _sweep(*overrides: str) -> tuple[DiscoveryProtocol, dict[str, list[Any]], list[DiscoveryProtocol]]:
    """A sweep as `lostreg sweep` expands it: (base protocol, its grid, its configurations)."""
    cfg = compose_config(["dataset=voc07", *overrides])
    grid = SweepGrid.from_config(cfg, protocol_from_config(cfg))
    return protocol_from_config(cfg), dict(grid.lists), list(grid.configurations)


# ------------------------------------------------------------------------------------------ the data


def test_every_row_names_its_primary_source_and_what_it_was_made_with() -> None:
    assert len({p.key for p in PUBLISHED}) == len(PUBLISHED)
    for row in PUBLISHED:
        assert row.source and row.protocol and row.matching_rule()
        # A paper and its table, a repository README, or (for a user report) the issue itself.
        assert any(word in row.source for word in ("Table", "README", "issue #")), row.key
        if not row.has_values or None in (row.voc07, row.voc12, row.coco20k):
            assert row.note, f"{row.key}: a missing value is explained"
        if row.checkpoint is not None:
            assert lostreg_backbone_for(row.key) is not None, "a released checkpoint lostreg can load"
        else:
            assert row.differs, "a row no run can match says why"
    assert _values("registers_t3_dinov2_reg") == T3_REG and _values("jiang_t5_dinov2_reg") == JIANG_REG
    assert "Table 5" in published_by_key("jiang_t5_dinov2").source, "Jiang et al., not lostreg's spec"
    assert "45" not in published_by_key("jiang_t5_dinov2_ttreg").protocol, "the paper does not say 45 neurons"
    report = published_by_key("dinov2_issue381_reg")
    assert "user's report" in report.source and "#381" in report.source and report.voc07 is None


def test_registers_paper_rows_are_the_authors_models() -> None:
    """Table 3: every model trained by the authors (none released), DINOv2 on antialiased keys, DeiT-III and
    OpenCLIP on values; DeiT-III / OpenCLIP values left out (not read in the primary source)."""
    rows = [p for p in PUBLISHED if p.key.startswith("registers_t3_")]
    assert {p.family for p in rows} == {"dinov2", "dinov2_reg", "deit3", "openclip"} and len(rows) == 6
    for row in rows:
        assert row.checkpoint is None and "gram_bias" in row.free_knobs
        assert any("not released" in d for d in row.differs) and any("bias" in d for d in row.differs)
        if row.family.startswith("dinov2"):
            assert row.features == FeatureConfig(which="k", pos_embed_antialias=True) and row.has_values
        else:
            assert row.features.which == "v" and not row.has_values


def test_checkpoints_are_read_from_the_registry() -> None:
    assert checkpoint_of("dinov2_reg") == "vit_small_patch14_reg4_dinov2.lvd142m"
    assert checkpoint_of("vit_large_patch14_reg4_dinov2.lvd142m") == "vit_large_patch14_reg4_dinov2.lvd142m"
    assert lostreg_backbone_for("jiang_t5_dinov2_reg") == "dinov2_vitl14_reg"
    assert lostreg_backbone_for("jiang_t5_openclip") == "openclip_vitb16"
    assert resolve_backbone("openclip_vitb16").timm_name == published_by_key("jiang_t5_openclip").checkpoint


# --------------------------------------------------------------------------------- single protocols


@pytest.mark.parametrize("protocol", [
    DiscoveryProtocol(),  # stock LOST
    DiscoveryProtocol(lost=LostConfig(gram_bias=-0.3)),  # Table 3's bias is unpublished: still another model
    DiscoveryProtocol(features=FeatureConfig(pos_embed_antialias=True)),  # the registers paper's resize
    DiscoveryProtocol(features=FeatureConfig(which="v")),
])
def test_a_public_dinov2_reg_run_is_never_set_beside_table_3(protocol: DiscoveryProtocol) -> None:
    for backbone in ("dinov2_vitl14_reg", "dinov2_vits14_reg", "vit_large_patch14_reg4_dinov2.lvd142m"):
        found = published_match(backbone, protocol)
        assert found is None or (found.voc07, found.voc12, found.coco20k) != T3_REG
        assert found is None
    why = mismatches(published_by_key("registers_t3_dinov2_reg"), "dinov2_vitl14_reg", protocol)
    assert any("not released" in w for w in why)


def test_the_registers_paper_preset_on_public_weights_matches_nothing() -> None:
    for backbone in ("dinov2_vitl14", "dinov2_vitl14_reg", "deit3_vitb16", "openclip_vitb16"):
        cfg = compose_config(["protocol=registers_paper", f"backbone={backbone}", "dataset=voc07"])
        assert published_match(backbone, protocol_from_config(cfg)) is None


@pytest.mark.parametrize(("backbone", "protocol", "weights", "kwargs", "expected"), [
    ("dino_vits16", DiscoveryProtocol(), "pretrained", {}, "lost_dino_vits16"),
    ("vit_small_patch16_224.dino", DiscoveryProtocol(), "pretrained", {}, "lost_dino_vits16"),  # same checkpoint
    ("dino_vits16", DiscoveryProtocol(), "pretrained", {"max_size": 1024}, None),  # not native resolution
    ("dino_vits16", DiscoveryProtocol(), "pretrained", {"ttreg": True}, None),
    ("dino_vits16", DiscoveryProtocol(features=FeatureConfig(pos_embed_antialias=True)), "pretrained", {}, None),
    ("dino_vits16", DiscoveryProtocol(features=FeatureConfig(which="out")), "pretrained", {}, None),
    ("dino_vits16", DiscoveryProtocol(), "/ckpt/dino.pth", {}, None),  # a file: the weights cannot be known
    ("dino_vitb8", DiscoveryProtocol(), "pretrained", {}, None),  # no published row of that checkpoint
])
def test_single_protocol_rows_need_the_checkpoint_and_the_protocol(backbone: str, protocol: DiscoveryProtocol,
                                                                    weights: str, kwargs: dict[str, Any],
                                                                    expected: str | None) -> None:
    found = published_match(backbone, protocol, weights, **kwargs)
    assert (found.key if found else None) == expected


# --------------------------------------------------------------------------------------- sweeps


def _best_in(configurations: list[DiscoveryProtocol], **chosen: Any) -> DiscoveryProtocol:
    """The configuration of a sweep with these settings (the one a sweep found best)."""
    for protocol in configurations:
        values = {**vars(protocol.features), **vars(protocol.method_knobs)}
        if all(values[k] == v for k, v in chosen.items()):
            return protocol
    raise AssertionError(f"no configuration {chosen}")


def test_a_best_of_sweep_of_the_public_checkpoint_is_set_beside_jiang_table_5() -> None:
    base, grid, configurations = _sweep("protocol=best_of", "backbone=dinov2_vitl14_reg")
    best = _best_in(configurations, which="q", layer=-3, gram_bias=-0.4)
    found = published_sweep_match("dinov2_vitl14_reg", best, grid)
    assert found is not None and (found.voc07, found.voc12, found.coco20k) == JIANG_REG
    # The plain DINOv2 and a test-time register each get their own row.
    assert published_sweep_match("dinov2_vitl14", best, grid).key == "jiang_t5_dinov2"
    assert published_sweep_match("dinov2_vitl14", best, grid, ttreg=True).key == "jiang_t5_dinov2_ttreg"
    # Not another size, not random weights, not downscaled images.
    assert published_sweep_match("dinov2_vits14_reg", best, grid) is None
    assert published_sweep_match("dinov2_vitl14_reg", best, grid, "random") is None
    assert published_sweep_match("dinov2_vitl14_reg", best, grid, max_size=1024) is None
    # Not as a single protocol: the published number is the best of a search.
    assert published_match("dinov2_vitl14_reg", best) is None


def test_a_registers_paper_sweep_is_not_the_searched_protocol() -> None:
    """Its grid is a bias sweep on raw keys of the last block: it does not cover q/k/v x 4 blocks x L2."""
    base, grid, configurations = _sweep("protocol=registers_paper", "backbone=dinov2_vitl14_reg")
    best = _best_in(configurations, gram_bias=-0.5)
    assert published_sweep_match("dinov2_vitl14_reg", best, grid) is None
    why = mismatches(published_by_key("jiang_t5_dinov2_reg"), "dinov2_vitl14_reg", best, grid=grid)
    assert any("sweep.which" in w for w in why) and any("sweep.l2_normalize" in w for w in why)


@pytest.mark.parametrize("overrides", [
    ("sweep.which=[k,q]", "sweep.layer=[-1,-2,-3,-4]", "sweep.l2_normalize=[true]",
     "sweep.gram_bias=[0,-0.1,-0.2,-0.3,-0.4,-0.5,-0.6,-0.7,-0.8,-0.9,-1]"),  # no v
    ("sweep.which=[k,q,v]", "sweep.layer=[-1,-2]", "sweep.l2_normalize=[true]",
     "sweep.gram_bias=[0,-0.1,-0.2,-0.3,-0.4,-0.5,-0.6,-0.7,-0.8,-0.9,-1]"),  # two blocks
    ("sweep.which=[k,q,v]", "sweep.layer=[-1,-2,-3,-4]", "sweep.l2_normalize=[true]",
     "sweep.gram_bias=[0,-1]"),  # a two-point bias grid: not the swept range
    ("sweep.which=[k,q,v]", "sweep.layer=[-1,-2,-3,-4]", "sweep.l2_normalize=[true]",
     "sweep.gram_bias=[0,-0.25,-0.5,-0.75]"),  # stops short of -1
])
def test_a_grid_that_does_not_cover_the_search_is_not_matched(overrides: tuple[str, ...]) -> None:
    base, grid, configurations = _sweep("backbone=dinov2_vitl14_reg", "features.l2_normalize=true", *overrides)
    assert all(published_sweep_match("dinov2_vitl14_reg", best, grid) is None for best in configurations[:3])


def test_a_wider_search_matches_only_while_its_best_lies_inside_the_published_one() -> None:
    base, grid, configurations = _sweep("protocol=best_of", "backbone=dinov2_vitl14_reg", "sweep.k_patches=[50,100]")
    inside = _best_in(configurations, which="k", layer=-1, gram_bias=-0.2, k_patches=100)
    outside = _best_in(configurations, which="k", layer=-1, gram_bias=-0.2, k_patches=50)
    assert published_sweep_match("dinov2_vitl14_reg", inside, grid).key == "jiang_t5_dinov2_reg"
    assert published_sweep_match("dinov2_vitl14_reg", outside, grid) is None


# ------------------------------------------------------------------------------------- the table


def _summary(backbone: str, dataset: str, corloc: float, protocol: DiscoveryProtocol = DiscoveryProtocol(),
             **fields: Any) -> RunSummary:
    sizes = {"voc07": 5011, "voc12": 11540, "coco20k": 19817}
    return RunSummary(run_dir=Path(f"/runs/{backbone}/{dataset}/{fields.get('sweep_role')}"), backbone=backbone,
                      dataset=dataset, weights="pretrained", discovery=protocol, max_size=None, corloc=corloc,
                      hits=1, total=sizes[dataset], failed=0, num_images=sizes[dataset], complete=True,
                      dataset_config={"name": dataset}, **fields)


def test_a_sweep_row_gets_the_searched_number_only_as_its_oracle_best() -> None:
    base, grid, configurations = _sweep("protocol=best_of", "backbone=dinov2_vitl14_reg")
    best = _best_in(configurations, which="k", layer=-2, gram_bias=-0.3)
    oracle = _summary("dinov2_vitl14_reg", "voc07", 55.0, best, sweep_role="best", sweep_size=132, sweep_grid=grid)
    chosen = dataclasses.replace(oracle, sweep_role="chosen", selected_on="voc12", run_dir=Path("/runs/chosen"))
    stock = _summary("dinov2_vitl14_reg", "voc07", 36.0)
    assert oracle.published().key == "jiang_t5_dinov2_reg"
    assert chosen.published() is None, "chosen on other data: not the oracle the source reports"
    assert stock.published() is None
    table = build_table([stock, oracle, chosen])
    text = table_text(table)
    cells = {tuple(c[1:3]): c for c in text.cells}
    header = text.header
    assert cells[("dinov2_vitl14_reg", "default")][header.index("VOC07 published")] == "-"
    assert cells[("dinov2_vitl14_reg", "sweep of 132: best on the same data (oracle)")][
        header.index("VOC07 published")] == "56.2"
    # Table 3 stays apart, saying what differs; the row beside the sweep is not repeated.
    references = [c for c in text.cells if c[1].startswith("published:")]
    t3 = next(c for c in references if c[1] == "published: LOST (DINOv2+reg) ViT-L/14")
    assert t3[2].startswith("differs: authors'") and "Gram bias value not published" in t3[2]
    assert t3[header.index("VOC12 published")] == "60.0"
    assert not any("DINOv2+reg, public checkpoint) ViT-L/14" in c[1] for c in references)


def test_deit3_and_openclip_tables_show_their_registers_rows_as_references() -> None:
    runs = [_summary("deit3_vitb16", "voc07", 20.0, DiscoveryProtocol(features=FeatureConfig(which="v"))),
            _summary("openclip_vitb16", "voc07", 30.0, DiscoveryProtocol(features=FeatureConfig(which="v")))]
    table = build_table(runs)
    assert all(row.published is None for row in table.rows if not row.is_published_only)
    keys = {row.published.key for row in table.rows if row.is_published_only}
    assert {"registers_t3_deit3", "registers_t3_deit3_reg", "registers_t3_openclip", "registers_t3_openclip_reg",
            "jiang_t5_openclip", "jiang_t5_openclip_ttreg"} == keys, "their families only: no DINO row"
    text = table_text(table)
    assert any(note.startswith("values left out") and "LOST (DeiT-III+reg) ViT-B" in note for note in text.notes)


def _write_sweep(root: Path, backbone: str, preset: str, best: dict[str, Any]) -> Path:
    """A finished sweep directory on VOC07 as `lostreg sweep` leaves it: the summary (with its grid) and
    the best configuration's own run directory (composed config, metrics)."""
    import json

    from omegaconf import OmegaConf

    overrides = [f"protocol={preset}", f"backbone={backbone}", "dataset=voc07"]
    cfg = compose_config(overrides)
    grid = SweepGrid.from_config(cfg, protocol_from_config(cfg))
    chosen = _best_in(list(grid.configurations), **best)
    sweep = root / f"{backbone}_{preset}"
    sub = sweep / "configs" / chosen.name
    sub.mkdir(parents=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.update(chosen.as_dict())
    (sub / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    metrics = {"corloc": 50.0, "hits": 2506, "total": 5011, "failed": 0, "num_images": 5011, "complete": True}
    (sub / "metrics.json").write_text(json.dumps(metrics))
    summary = {"kind": "sweep", "dataset": "voc07", "backbone": backbone, "num_images": 5011, "total": 5011,
               "complete": True, "grid": {k: list(v) for k, v in grid.lists.items()},
               "configurations": [{"protocol": p.name} for p in grid.configurations],
               "best": {"protocol": chosen.name}, "selected": None}
    (sweep / "metrics.json").write_text(json.dumps(summary))
    (sweep / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return sweep


def test_sweep_directories_on_disk_get_their_rows(tmp_path: Path) -> None:
    """Through `lostreg compare`'s reading of sweep directories (their grid in metrics.json)."""
    from lostreg.evaluation.compare import load_runs

    best_of = _write_sweep(tmp_path, "dinov2_vitl14_reg", "best_of", {"which": "v", "layer": -4, "gram_bias": -1.0})
    paper = _write_sweep(tmp_path, "dinov2_vitl14_reg", "registers_paper", {"gram_bias": -0.2})
    (best_row,), (paper_row,) = load_runs([best_of]), load_runs([paper])
    assert best_row.sweep_grid is not None and set(best_row.sweep_grid["which"]) == {"q", "k", "v"}
    assert best_row.published().key == "jiang_t5_dinov2_reg"
    assert paper_row.published() is None, "the registers paper's protocol on public weights: nothing beside it"
