"""`lostreg compare` and the published numbers, on fake run directories (no model, no data)."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_command
from omegaconf import OmegaConf

from lostreg.cli.main import main
from lostreg.config import compose_config
from lostreg.evaluation.compare import RunError, build_table, load_run, load_runs, to_csv, to_markdown
from lostreg.evaluation.published import PUBLISHED, published_by_key, published_for, published_match
from lostreg.protocol import METHODS, DiscoveryProtocol, FeatureConfig, LostConfig, TokenCutConfig

DATASET_SIZE = {"voc07": 5011, "voc12": 11540, "coco20k": 19817, "coco": 50, "folder": 7}
# Datasets that need more than a `name` to compose (their required keys are ???).
DATASET_EXTRA = {"coco": ["dataset.annotation_json=a.json", "dataset.image_dir=img"], "folder": ["dataset.root=x"]}


@functools.lru_cache(maxsize=None)
def composed_yaml(overrides: tuple[str, ...]) -> str:
    """The resolved config as `lostreg eval` saves it (composing is the slow part: cached)."""
    return OmegaConf.to_yaml(compose_config(list(overrides)), resolve=True)


def make_run(
    root: Path,
    name: str,
    backbone: str,
    dataset: str,
    corloc: float | None,
    done: int | None = None,
    overrides: tuple[str, ...] = (),
) -> Path:
    """Write a run directory the way `lostreg eval` does: composed config, resolved; metrics.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    overrides = (f"backbone={backbone}", f"dataset={dataset}", *DATASET_EXTRA.get(dataset, []), *overrides)
    (run_dir / "config.yaml").write_text(composed_yaml(overrides))
    n = DATASET_SIZE[dataset]
    done = n if done is None else done
    hits = None if corloc is None else round(corloc * done / 100)
    metrics = {"corloc": corloc, "hits": hits, "total": done, "failed": 0, "num_images": n,
               "complete": done == n, "dataset": dataset, "backbone": backbone}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """dino / dinov2 / dinov2_reg on the three datasets; one incomplete run, one random-weights run."""
    root = tmp_path / "runs"
    make_run(root, "dino_voc07", "dino_vits16", "voc07", 61.87)
    make_run(root, "dino_voc12", "dino_vits16", "voc12", 63.95)
    make_run(root, "dino_coco20k", "dino_vits16", "coco20k", 50.66)
    make_run(root, "dinov2_voc07", "dinov2_vitl14", "voc07", 34.81)
    make_run(root, "dinov2_voc12", "dinov2_vitl14", "voc12", 39.5)
    make_run(root, "dinov2reg_voc07", "dinov2_vitl14_reg", "voc07", 54.1)
    make_run(root, "dinov2reg_voc12", "dinov2_vitl14_reg", "voc12", 41.2, done=1000)  # incomplete
    make_run(root, "dinov2reg_coco20k_v", "dinov2_vitl14_reg", "coco20k", 40.5,
             overrides=("features.which=v", "features.layer=-2", "lost.gram_bias=-0.25"))
    make_run(root, "random_voc07", "dinov2_reg", "voc07", 3.0, overrides=("weights=random",))
    return root


def parse_markdown(text: str) -> tuple[list[str], dict[tuple[str, str, str], dict[str, str]], list[str]]:
    """(header, {(method cell, backbone cell, protocol cell): {column: cell}}, lines after the table)."""
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(table[0])
    assert set(table[1]) <= {"|", "-"}
    rows = {}
    for line in table[2:]:
        cells = split(line)
        assert len(cells) == len(header), line
        rows[(cells[0], cells[1], cells[2])] = dict(zip(header, cells))
    notes = [line for line in lines if line and not line.startswith("|")]
    return header, rows, notes


def rows_protocol(rows: dict[tuple[str, str, str], dict[str, str]], label: str) -> str:
    """The protocol cell of the reference row ``published: <label>``."""
    return next(key[2] for key in rows if key[1] == f"published: {label}")


def compare(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run_command(capsys, "compare", *argv)


# ------------------------------------------------------------------------------ published data


def test_published_numbers_are_the_spec_table() -> None:
    got = {p.key: (p.voc07, p.voc12, p.coco20k) for p in PUBLISHED}
    assert got == {
        "lost_dino_vits16": (61.9, 64.0, 50.7),
        "lost_dino_vits8": (55.5, 57.0, 49.5),
        "lost_dino_vitb16": (60.1, 63.3, 50.0),
        "registers_t3_dinov2": (35.3, 40.2, 26.9),
        "registers_t3_dinov2_reg": (55.4, 60.0, 42.0),
        # Table 3's DeiT-III and OpenCLIP rows: values not read in the primary source, left out.
        "registers_t3_deit3": (None, None, None),
        "registers_t3_deit3_reg": (None, None, None),
        "registers_t3_openclip": (None, None, None),
        "registers_t3_openclip_reg": (None, None, None),
        # Jiang et al. 2025, Table 5 (the public checkpoints; formerly cited to lostreg's spec)
        "jiang_t5_dinov2": (32.2, 36.8, 25.4),
        "jiang_t5_dinov2_reg": (56.2, 60.2, 42.3),
        "jiang_t5_dinov2_ttreg": (53.8, 57.9, 41.9),
        "jiang_t5_openclip": (None, None, None),
        "jiang_t5_openclip_ttreg": (None, None, None),
        # a user's report (github facebookresearch/dinov2 #381): no VOC07 number
        "dinov2_issue381_reg": (None, 35.94, 23.39),
        # spec tokencut.md section 3 (the TokenCut README)
        "tokencut_dino_vits16": (68.8, 72.1, 58.8),
        "tokencut_dino_vits8": (67.3, 71.6, 60.7),
        "tokencut_dino_vitb16": (68.8, 72.4, 59.0),
    }
    assert {p.key for p in PUBLISHED if p.lostreg_method == "tokencut"} == {k for k in got if k.startswith("tokencut")}
    assert all(p.lostreg_method in METHODS for p in PUBLISHED)
    assert all(p.source and p.protocol for p in PUBLISHED)
    assert published_by_key("lost_dino_vits8").corloc("voc12") == 57.0
    assert published_by_key("lost_dino_vits8").corloc("coco") is None


@pytest.mark.parametrize(
    ("backbone", "kwargs", "expected"),
    [
        ("dino_vits16", {}, "lost_dino_vits16"),
        ("dino_vits8", {}, "lost_dino_vits8"),
        ("dino_vitb16", {}, "lost_dino_vitb16"),
        # Table 3 used the authors' own ViT-L/14, never released: no public-checkpoint run matches it,
        # whatever its bias (issue 14; these three mapped to Table 3 before).
        ("dinov2_vitl14", {}, None),
        ("dinov2_vitl14_reg", {}, None),
        ("dinov2_vitl14_reg", {"gram_bias": -0.3}, None),
        ("dino_vits16", {"gram_bias": -0.3}, None),  # LOST had no bias
        ("dino_vits16", {"which": "q"}, None),
        ("dino_vits16", {"layer": -2}, None),
        ("dino_vits16", {"k_patches": 50}, None),
        ("dino_vits16", {"weights": "random"}, None),
        ("dinov2_vits14_reg", {}, None),
        ("dino_vitb8", {}, None),
    ],
)
def test_published_for_maps_only_the_same_protocol(backbone: str, kwargs: dict[str, Any], expected: str | None) -> None:
    found = published_for(backbone, **kwargs)
    assert (found.key if found else None) == expected


def _cut(**knobs: Any) -> DiscoveryProtocol:
    features = {k: knobs.pop(k) for k in ("which", "layer", "l2_normalize") if k in knobs}
    return DiscoveryProtocol(method="tokencut", features=FeatureConfig(**features), tokencut=TokenCutConfig(**knobs))


@pytest.mark.parametrize(
    ("backbone", "protocol", "weights", "expected"),
    [
        ("dino_vits16", _cut(), "pretrained", "tokencut_dino_vits16"),  # default solver: torch64
        ("dino_vits8", _cut(), "pretrained", "tokencut_dino_vits8"),
        ("dino_vitb16", _cut(), "pretrained", "tokencut_dino_vitb16"),
        ("dino_vits16", _cut(eig="scipy"), "pretrained", "tokencut_dino_vits16"),  # the reference's call
        ("dino_vits16", _cut(eig="torch32"), "pretrained", None),  # float32: another numerical protocol
        ("dino_vits16", _cut(tau=0.3), "pretrained", None),
        ("dino_vits16", _cut(eps=1e-4), "pretrained", None),
        ("dino_vits16", _cut(which="q"), "pretrained", None),
        ("dino_vits16", _cut(layer=-2), "pretrained", None),
        ("dino_vits16", _cut(l2_normalize=True), "pretrained", None),
        ("dino_vits16", _cut(), "random", None),
        ("dino_vitb8", _cut(), "pretrained", None),  # not in the TokenCut README
        ("dinov2_vitl14_reg", _cut(), "pretrained", None),  # no published TokenCut row: never a LOST one
        ("dino_vits16", DiscoveryProtocol(), "pretrained", "lost_dino_vits16"),  # LOST gets LOST's row
        # A TokenCut run with LOST knobs that differ still matches: they play no part in TokenCut.
        ("dino_vits16", DiscoveryProtocol(method="tokencut", lost=LostConfig(k_patches=5)), "pretrained",
         "tokencut_dino_vits16"),
        # ... and a LOST run is never set beside TokenCut whatever its TokenCut section says.
        ("dino_vits16", DiscoveryProtocol(lost=LostConfig(k_patches=5)), "pretrained", None),
    ],
)
def test_published_match_is_per_method(backbone: str, protocol: DiscoveryProtocol, weights: str,
                                       expected: str | None) -> None:
    found = published_match(backbone, protocol, weights)
    assert (found.key if found else None) == expected
    if found is not None:
        assert found.lostreg_method == protocol.method


# ------------------------------------------------------------------------------ loading


def test_load_run_reads_eval_config_and_metrics(runs: Path) -> None:
    run = load_run(runs / "dinov2reg_coco20k_v")
    assert (run.backbone, run.dataset, run.which, run.layer, run.gram_bias) == (
        "dinov2_vitl14_reg", "coco20k", "v", -2, -0.25)
    assert run.protocol == "which=v layer=-2 bias=-0.25"
    assert run.corloc == 40.5 and run.complete and run.num_images == 19817
    random_run = load_run(runs / "random_voc07")
    assert random_run.backbone == "dinov2_vits14_reg"  # the alias is resolved by the config group
    assert random_run.is_random and random_run.protocol == "weights=random"
    assert load_run(runs / "dino_voc07").protocol == "default"


def test_protocol_names_k_and_max_size(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "r", "dino", "voc07", 50.0, overrides=("lost.k_patches=50", "max_size=1024")))
    assert run.protocol == "k=50 max_size=1024"


def test_l2_normalised_runs_are_their_own_protocol(tmp_path: Path) -> None:
    raw = load_run(make_run(tmp_path, "raw", "dino_vits16", "voc07", 61.0))
    l2 = load_run(make_run(tmp_path, "l2", "dino_vits16", "voc07", 55.0, overrides=("features.l2_normalize=true",)))
    assert (raw.protocol, l2.protocol) == ("default", "l2")
    assert raw.published() is not None and l2.published() is None, "no published row has this protocol"
    assert len(build_table([raw, l2]).rows) >= 2


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "metrics.json").unlink(), "no metrics.json"),
        (lambda d: (d / "config.yaml").unlink(), "no config.yaml"),
        (lambda d: (d / "metrics.json").write_text("{not json"), "metrics.json: unreadable"),
        (lambda d: (d / "metrics.json").write_text('{"corloc": 1.0}'), "missing key 'hits'"),
        (lambda d: (d / "config.yaml").write_text("backbone: {name: dino_vits16}\n"), "missing key 'dataset.name'"),
        (lambda d: (d / "config.yaml").write_text("a: [unclosed\n"), "config.yaml: unreadable"),
        (lambda d: (d / "metrics.json").write_text(
            '{"corloc": 1.0, "hits": 1, "total": "5", "num_images": 5, "complete": true}'), "'total' must be int"),
    ],
)
def test_bad_run_dir_errors_name_it(tmp_path: Path, breakage: Any, message: str) -> None:
    run_dir = make_run(tmp_path, "broken", "dino", "voc07", 50.0)
    breakage(run_dir)
    with pytest.raises(RunError, match=message) as info:
        load_run(run_dir)
    assert "broken" in str(info.value) and "\n" not in str(info.value)


def test_load_runs_expands_globs_and_reports_errors(runs: Path, tmp_path: Path) -> None:
    (runs / "not_a_run").mkdir()
    errors: list[RunError] = []
    loaded = load_runs([str(runs / "dino_*"), str(runs / "dino_voc07"), str(runs / "not_a_run"),
                        str(tmp_path / "nothing*")], on_error=errors.append)
    assert [r.run_dir.name for r in loaded] == ["dino_coco20k", "dino_voc07", "dino_voc12"]  # sorted, deduplicated
    assert len(errors) == 2
    assert "not_a_run" in str(errors[0]) and "nothing*" in str(errors[1])
    with pytest.raises(RunError, match="not_a_run"):
        load_runs([runs / "not_a_run"])


# ------------------------------------------------------------------------------ the table


def test_markdown_table_ours_beside_published(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = compare(capsys, str(runs / "*"))
    assert code == 0, err
    header, rows, notes = parse_markdown(out)
    assert header == ["method", "backbone", "protocol", "VOC07 ours", "VOC07 published", "VOC12 ours",
                      "VOC12 published", "COCO20k ours", "COCO20k published", "published source"]

    dino = rows[("LOST", "dino_vits16", "default")]
    assert (dino["VOC07 ours"], dino["VOC07 published"]) == ("61.87", "61.9")
    assert (dino["VOC12 ours"], dino["VOC12 published"]) == ("63.95", "64.0")
    assert (dino["COCO20k ours"], dino["COCO20k published"]) == ("50.66", "50.7")

    # Public checkpoints: no comparable published row (issue 14: Table 3 stood here before).
    v2 = rows[("LOST", "dinov2_vitl14", "default")]
    assert (v2["VOC07 ours"], v2["VOC07 published"], v2["VOC12 ours"]) == ("34.81", "-", "39.50")
    assert (v2["COCO20k ours"], v2["COCO20k published"]) == ("-", "-")

    reg = rows[("LOST", "dinov2_vitl14_reg", "default")]
    assert (reg["VOC07 ours"], reg["VOC07 published"]) == ("54.10", "-")
    assert (reg["VOC12 ours"], reg["VOC12 published"]) == ("41.20*", "-")

    sweep = rows[("LOST", "dinov2_vitl14_reg", "which=v layer=-2 bias=-0.25")]
    assert (sweep["COCO20k ours"], sweep["COCO20k published"], sweep["VOC07 ours"]) == ("40.50", "-", "-")

    random_row = rows[("LOST", "dinov2_vits14_reg (RANDOM weights)", "weights=random")]
    assert random_row["VOC07 ours"] == "3.00" and random_row["VOC07 published"] == "-"

    # Sources: LOST paper [1] beside our row; the registers paper [2] on its reference rows; each named.
    assert dino["published source"] == "[1]" and v2["published source"] == reg["published source"] == ""
    t3_reg = rows[("LOST", "published: LOST (DINOv2+reg) ViT-L/14", rows_protocol(rows, "LOST (DINOv2+reg) ViT-L/14"))]
    assert (t3_reg["VOC07 published"], t3_reg["VOC12 published"], t3_reg["published source"]) == ("55.4", "60.0", "[2]")
    assert "not released" in t3_reg["protocol"] and "Gram bias value not published" in t3_reg["protocol"]
    assert any(n.startswith("[1] LOST paper") for n in notes)
    assert any(n.startswith("[2] Registers paper") and "Table 3" in n for n in notes)
    assert any("\\* incomplete: LOST dinov2_vitl14_reg [default] VOC12: 1000/11540 images" in n for n in notes)
    assert any(n.startswith("RANDOM weights") and "meaningless" in n for n in notes)
    assert any(n.startswith("Why the public-checkpoint numbers differ from Table 3") and "ImageNet-22k" in n
               for n in notes)


def test_published_rows_without_a_run_are_labelled(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = compare(capsys, str(runs / "*"))
    _, rows, notes = parse_markdown(out)
    published = {key: row for key, row in rows.items() if key[1].startswith("published:")}
    # The row shown beside ours (ViT-S/16) is not repeated; Table 3 is now a reference row (issue 14: its
    # models are the authors' own), and so are the rows of the table's families (dino, dinov2, dinov2_reg)
    # that no run here is comparable with. No DeiT-III / OpenCLIP row: no run of those families.
    assert sorted(key[1] for key in published) == [
        "published: LOST (DINO) ViT-B/16 [lostreg: dino_vitb16]",
        "published: LOST (DINO) ViT-S/8 [lostreg: dino_vits8]",
        "published: LOST (DINOv2 + test-time register, public checkpoint) ViT-L/14 [lostreg: dinov2_vitl14]",
        "published: LOST (DINOv2) ViT-L/14",
        "published: LOST (DINOv2+reg) ViT-L/14",
        "published: LOST (DINOv2+reg, public checkpoint) ViT-L/14 [lostreg: dinov2_vitl14_reg]",
        "published: LOST (DINOv2+reg, public checkpoint) user report, size not stated",
        "published: LOST (DINOv2, public checkpoint) ViT-L/14 [lostreg: dinov2_vitl14]",
    ]
    s8 = published[next(k for k in published if "ViT-S/8" in k[1])]
    assert (s8["VOC07 ours"], s8["VOC07 published"], s8["VOC12 published"], s8["COCO20k published"]) == (
        "", "55.5", "57.0", "49.5")
    pub_reg = published[next(k for k in published if "DINOv2+reg, public" in k[1])]
    assert (pub_reg["VOC07 published"], pub_reg["VOC12 published"], pub_reg["COCO20k published"]) == (
        "56.2", "60.2", "42.3")
    # The public-checkpoint rows cite Jiang et al., Table 5 (not lostreg's spec), and say why they stand apart.
    assert "searched protocol" in pub_reg["protocol"] and pub_reg["published source"] == "[3]"
    assert any(n.startswith("[3] Jiang et al.") and "Table 5" in n for n in notes)
    report = published[next(k for k in published if "user report" in k[1])]
    assert (report["VOC07 published"], report["VOC12 published"], report["COCO20k published"]) == ("-", "35.94", "23.39")
    assert any(n.startswith("[4] a user's report") and "dinov2 issue #381" in n for n in notes)
    # Published-only rows come after all of ours.
    keys = list(rows)
    assert all(k[1].startswith("published:") for k in keys[keys.index(next(iter(published))):])


def test_no_published(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = compare(capsys, str(runs / "*"), "--no-published")
    header, rows, notes = parse_markdown(out)
    assert code == 0
    assert header == ["method", "backbone", "protocol", "VOC07 ours", "VOC12 ours", "COCO20k ours"]
    assert not any(key[1].startswith("published") for key in rows)
    assert not any(n.startswith("[1]") or "Table 3" in n for n in notes)


def test_other_datasets_get_columns_only_when_present(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "voc", "dino", "voc07", 60.0)
    _, out, _ = compare(capsys, str(tmp_path / "voc"))
    assert "COCO ours" not in out and "folder" not in out
    # Users' data defaults to max_size=1024 (another protocol row); native here, to share the row.
    make_run(tmp_path, "coco", "dino", "coco", 44.0, overrides=("max_size=null",))
    make_run(tmp_path, "folder", "dino", "folder", None, overrides=("max_size=null",))  # no ground truth
    _, out, _ = compare(capsys, str(tmp_path / "*"))
    header, rows, notes = parse_markdown(out)
    assert header[-3:] == ["COCO ours", "folder ours", "published source"]
    row = rows[("LOST", "dino_vits16", "default")]
    assert (row["COCO ours"], row["folder ours"], row["VOC07 ours"]) == ("44.00", "n/a", "60.00")
    # n/a is explained where the table shows one (and only there: see the voc-only table above).
    assert any("n/a: the run has no CorLoc" in n for n in notes)


def test_duplicate_cell_keeps_more_images_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a_partial", "dino", "voc07", 70.0, done=100)
    make_run(tmp_path, "b_full", "dino", "voc07", 61.0)
    code, out, err = compare(capsys, str(tmp_path / "a_partial"), str(tmp_path / "b_full"))
    assert code == 0
    _, rows, _ = parse_markdown(out)
    assert rows[("LOST", "dino_vits16", "default")]["VOC07 ours"] == "61.00"
    warning = [line for line in err.splitlines() if line.startswith("lostreg: warning:")]
    assert len(warning) == 1 and "a_partial" in warning[0] and "b_full" in warning[0]
    assert "kept" in warning[0] and warning[0].index("b_full") < warning[0].index("a_partial")


def test_csv_round_trip(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "out" / "table.csv"
    code, out, _ = compare(capsys, str(runs / "*"), "--csv", str(csv_path))
    assert code == 0 and "| backbone |" in out  # the markdown still goes to stdout
    with csv_path.open(newline="") as f:
        records = list(csv.DictReader(f))
    by_key = {(r["method"], r["backbone"], r["protocol"]): r for r in records}
    dino = by_key[("lost", "dino_vits16", "default")]
    assert dino["row_type"] == "ours" and dino["random_weights"] == "0"
    assert float(dino["voc07_ours"]) == 61.87 and float(dino["voc07_published"]) == 61.9
    assert float(dino["coco20k_ours"]) == 50.66 and float(dino["coco20k_published"]) == 50.7
    assert dino["published_label"] == "LOST (DINO) ViT-S/16" and "LOST paper" in dino["published_source"]

    reg = by_key[("lost", "dinov2_vitl14_reg", "default")]
    assert float(reg["voc12_ours"]) == 41.2 and reg["voc12_complete"] == "0"
    assert (reg["voc12_images_done"], reg["voc12_num_images"]) == ("1000", "11540")
    # Empty cells for missing values (issue 14: Table 3's 42.0 stood here, beside a public checkpoint).
    assert reg["coco20k_ours"] == "" and reg["coco20k_published"] == ""

    assert by_key[("lost", "dinov2_vits14_reg", "weights=random")]["random_weights"] == "1"
    published = [r for r in records if r["row_type"] == "published"]
    assert len(published) == 8 and all(r["voc07_ours"] == "" and r["voc12_published"] for r in published)
    assert all(r["published_source"] for r in published)
    assert len(records) == 5 + 8  # one row per backbone + protocol, then published-only rows


def test_build_table_pure_functions(runs: Path, tmp_path: Path) -> None:
    table = build_table(load_runs([runs / "dino_voc07"]), include_published=False)
    assert table.datasets == ("voc07", "voc12", "coco20k") and len(table.rows) == 1
    assert "61.87" in to_markdown(table)
    path = to_csv(table, tmp_path / "t.csv")
    assert path.read_text().splitlines()[0].startswith("row_type,method,backbone,protocol,random_weights,voc07_ours")


# ------------------------------------------------------------------------------ exit codes


def test_bad_run_dirs_exit_1_and_table_still_printed(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = runs.parent / "bad_run"
    bad.mkdir()
    (bad / "config.yaml").write_text("backbone: {name: dino_vits16}\n")
    code, out, err = compare(capsys, str(runs / "dino_voc07"), str(bad), str(runs.parent / "missing"))
    assert code == 1
    assert "61.87" in out
    errors = [line for line in err.splitlines() if line.startswith("lostreg: error:")]
    assert len(errors) == 2
    assert "bad_run" in errors[0] and "no metrics.json" in errors[0]
    assert "missing" in errors[1]


def test_no_usable_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = compare(capsys, str(tmp_path / "nothing_*"))
    assert code == 2 and out == ""
    assert "nothing_*" in err and "no usable run directory" in err


def test_needs_a_run_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compare"])
    assert info.value.code == 2


def test_other_splits_are_their_own_rows_without_published_numbers(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A 20-image split and a no_hard run are labelled and never set beside the published trainval numbers."""
    full = make_run(tmp_path, "full", "dino_vits16", "voc07", 61.0)
    small = make_run(tmp_path, "small", "dino_vits16", "voc07", 70.0, overrides=("dataset.split=small",))
    no_hard = make_run(tmp_path, "nohard", "dino_vits16", "voc07", 65.0, overrides=("dataset.no_hard=true",))
    for path, images in ((small, 20), (no_hard, 4900)):  # what such runs count
        metrics = json.loads((path / "metrics.json").read_text())
        metrics.update(total=images, num_images=images)
        (path / "metrics.json").write_text(json.dumps(metrics))
    code, out, err = compare(capsys, str(full), str(small), str(no_hard))
    assert code == 0 and "two runs" not in err, "no run is dropped"
    _, rows, notes = parse_markdown(out)
    assert rows[("LOST", "dino_vits16", "default")]["VOC07 published"] == "61.9"
    small_row = rows[("LOST", "dino_vits16", "split=small")]
    assert (small_row["VOC07 ours"], small_row["VOC07 published"]) == ("70.00", "-")
    assert rows[("LOST", "dino_vits16", "no_hard")]["VOC07 published"] == "-"
    assert any("not comparable with published numbers: LOST dino_vits16 [split=small] VOC07: split=small" in n
               for n in notes)


def test_a_partial_copy_of_a_published_dataset_is_not_compared(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, "r", "dino_vits16", "voc07", 50.0)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(total=300, num_images=300)  # a 300-image "trainval": not the published 5011
    (run / "metrics.json").write_text(json.dumps(metrics))
    _, out, _ = compare(capsys, str(run))
    _, rows, notes = parse_markdown(out)
    assert rows[("LOST", "dino_vits16", "default")]["VOC07 published"] == "-"
    assert any("300 images, not the published 5011" in n for n in notes)


# ------------------------------------------------------------------------------ LOST and TokenCut in one table


@pytest.fixture()
def mixed_runs(tmp_path: Path) -> Path:
    """LOST and TokenCut runs of the same backbones: one table, rows told apart by the method column."""
    root = tmp_path / "mixed"
    make_run(root, "lost_s16_voc07", "dino_vits16", "voc07", 61.5)
    make_run(root, "cut_s16_voc07", "dino_vits16", "voc07", 68.5, overrides=("method=tokencut",))
    make_run(root, "cut_s16_voc12", "dino_vits16", "voc12", 71.9, overrides=("method=tokencut",))
    make_run(root, "cut_s16_tau", "dino_vits16", "voc07", 60.0, overrides=("method=tokencut", "tokencut.tau=0.3"))
    make_run(root, "cut_s16_f32", "dino_vits16", "voc07", 68.4, overrides=("method=tokencut", "tokencut.eig=torch32"))
    make_run(root, "cut_s8_scipy", "dino_vits8", "voc07", 67.0,
             overrides=("method=tokencut", "tokencut.eig=scipy"))
    make_run(root, "cut_v2reg", "dinov2_vitl14_reg", "voc07", 50.0, overrides=("method=tokencut",))
    return root


def test_load_run_reads_tokencut_knobs(mixed_runs: Path) -> None:
    run = load_run(mixed_runs / "cut_s16_tau")
    assert run.method == "tokencut" and run.method_label == "TokenCut"
    assert run.discovery.tokencut == TokenCutConfig(tau=0.3)
    assert run.protocol == "tau=0.3", "the method has its own column; the protocol names departures from its defaults"
    assert run.label == "TokenCut dino_vits16 [tau=0.3]"
    assert load_run(mixed_runs / "cut_s8_scipy").discovery.tokencut.eig == "scipy"
    default = load_run(mixed_runs / "cut_s16_voc07")
    assert default.protocol == "default" and default.published().key == "tokencut_dino_vits16"
    lost = load_run(mixed_runs / "lost_s16_voc07")
    assert lost.protocol == "default" and lost.row_key != default.row_key


def test_one_table_across_methods(mixed_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = compare(capsys, str(mixed_runs / "*"))
    assert code == 0 and "two runs" not in err, err
    header, rows, notes = parse_markdown(out)
    assert header[:4] == ["method", "backbone", "protocol", "VOC07 ours"]

    lost = rows[("LOST", "dino_vits16", "default")]
    cut = rows[("TokenCut", "dino_vits16", "default")]
    assert (lost["VOC07 ours"], lost["VOC07 published"]) == ("61.50", "61.9")  # LOST's number beside LOST
    assert (cut["VOC07 ours"], cut["VOC07 published"]) == ("68.50", "68.8")  # TokenCut's beside TokenCut
    assert (cut["VOC12 ours"], cut["VOC12 published"]) == ("71.90", "72.1")
    assert (cut["COCO20k ours"], cut["COCO20k published"]) == ("-", "58.8")
    assert lost["published source"] != cut["published source"]

    assert rows[("TokenCut", "dino_vits16", "tau=0.3")]["VOC07 published"] == "-"
    assert rows[("TokenCut", "dino_vits16", "eig=torch32")]["VOC07 published"] == "-"
    s8 = rows[("TokenCut", "dino_vits8", "eig=scipy")]
    assert (s8["VOC07 ours"], s8["VOC07 published"], s8["VOC12 published"]) == ("67.00", "67.3", "71.6")
    reg = rows[("TokenCut", "dinov2_vitl14_reg", "default")]
    assert reg["VOC07 published"] == "-", "the registers paper's LOST number is not TokenCut's"

    # Method blocks: our LOST rows, our TokenCut rows, then the published rows without a run.
    keys = list(rows)
    ours = [k for k in keys if not k[1].startswith("published:")]
    assert [k[0] for k in ours] == sorted((k[0] for k in ours), key=lambda m: m != "LOST")
    published_only = [k for k in keys if k[1].startswith("published:")]
    assert keys[len(ours):] == published_only
    assert ("TokenCut", "published: TokenCut (DINO) ViT-B/16 [lostreg: dino_vitb16]") in {k[:2] for k in published_only}
    assert not any("TokenCut (DINO) ViT-S/16" in k[1] or "TokenCut (DINO) ViT-S/8" in k[1] for k in published_only), \
        "rows shown beside ours are not repeated"
    assert {k[0] for k in published_only} == {"LOST", "TokenCut"}

    source = cut["published source"].strip("[]")
    assert any(n.startswith(f"[{source}] TokenCut README") and "CVPR 2022" in n for n in notes)
    assert any("eig=torch32" in n and "eig=scipy" in n for n in notes), "the solver rule is stated"
    default_note = next(n for n in notes if n.startswith("protocol default"))
    assert "LOST on raw keys of the last layer, k=100" in default_note
    assert "tau=0.2, eps=1e-05, eig=torch64" in default_note


def test_tokencut_only_table_shows_tokencut_references_only(mixed_runs: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = compare(capsys, str(mixed_runs / "cut_*"))
    _, rows, notes = parse_markdown(out)
    assert {k[0] for k in rows} == {"TokenCut"}
    assert not any(n.startswith("[") and "LOST paper" in n for n in notes)
    default_note = next(n for n in notes if n.startswith("protocol default"))
    assert "k=100" not in default_note and "tau=0.2" in default_note


def test_csv_has_the_method(mixed_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "mixed.csv"
    assert compare(capsys, str(mixed_runs / "*"), "--csv", str(csv_path))[0] == 0
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None and reader.fieldnames[:4] == ["row_type", "method", "backbone", "protocol"]
        records = list(reader)
    by_key = {(r["row_type"], r["method"], r["backbone"], r["protocol"]): r for r in records}
    assert float(by_key[("ours", "tokencut", "dino_vits16", "default")]["voc07_published"]) == 68.8
    assert float(by_key[("ours", "lost", "dino_vits16", "default")]["voc07_published"]) == 61.9
    assert by_key[("ours", "tokencut", "dino_vits16", "eig=torch32")]["voc07_published"] == ""
    published = [r for r in records if r["row_type"] == "published"]
    assert {r["method"] for r in published} == {"lost", "tokencut"}
    assert all(r["method"] in METHODS for r in records)


def test_run_dirs_from_before_tokencut_read_as_lost(tmp_path: Path) -> None:
    """A config.yaml without method / tokencut / l2_normalize (older lostreg) is LOST's default protocol."""
    run_dir = make_run(tmp_path, "old", "dino_vits16", "voc07", 61.0)
    config = OmegaConf.load(run_dir / "config.yaml")
    for key in ("method", "tokencut"):
        config.pop(key)
    config.features.pop("l2_normalize")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    run = load_run(run_dir)
    assert (run.method, run.protocol, run.discovery.tokencut) == ("lost", "default", TokenCutConfig())
    assert run.published().key == "lost_dino_vits16"


def test_mistyped_tokencut_knob_names_the_key(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bad", "dino_vits16", "voc07", 61.0, overrides=("method=tokencut",))
    config = OmegaConf.load(run_dir / "config.yaml")
    config.tokencut.tau = "high"
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    with pytest.raises(RunError, match="'tokencut.tau' must be float"):
        load_run(run_dir)


def test_test_time_register_runs_are_their_own_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_run(tmp_path, "plain", "dinov2_vitl14", "voc07", 33.0)
    ttreg = make_run(tmp_path, "ttreg", "dinov2_vitl14", "voc07", 50.0, overrides=("ttreg=/x/l14_neurons.json",))
    reg = make_run(tmp_path, "reg", "dinov2_vitl14_reg", "voc07", 54.0)
    code, out, _ = compare(capsys, str(plain), str(ttreg), str(reg))
    assert code == 0
    _, rows, _ = parse_markdown(out)
    assert rows[("LOST", "dinov2_vitl14", "ttreg=l14_neurons")]["VOC07 ours"] == "50.00"
    assert rows[("LOST", "dinov2_vitl14", "ttreg=l14_neurons")]["VOC07 published"] == "-"
    # Issue 14: Table 3 (the authors' own ViT-L/14) no longer stands beside a public checkpoint.
    assert rows[("LOST", "dinov2_vitl14", "default")]["VOC07 published"] == "-"
    assert any(key[1].startswith("published: LOST (DINOv2 + test-time register") for key in rows)
