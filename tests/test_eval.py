"""``lostreg eval`` end to end on generated datasets in the official formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import synthetic
from helpers import sorted_pred_lines
from lostreg.cli.main import main
from lostreg.evaluation import runner
from lostreg.evaluation.engine import DiscoveryEngine

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def independent_corloc(preds: list[dict], gt_by_id: dict[str, list[tuple[int, int, int, int]]]) -> tuple[int, int]:
    """Hits and total, written out here from the spec (IoU, no +1, >= 0.5 with any GT box)."""
    hits = 0
    for p in preds:
        box = p["box_xyxy"]
        best = 0.0
        for g in gt_by_id[p["image_id"]] if box else []:
            iw = max(0, min(box[2], g[2]) - max(box[0], g[0]))
            ih = max(0, min(box[3], g[3]) - max(box[1], g[1]))
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            best = max(best, inter / union)
        hits += best >= 0.5
    return hits, len(preds)


def read_preds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "preds.jsonl").read_text().splitlines()]


def metrics_without_timings(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("timings")
    return metrics


def voc_gt(images: list[synthetic.SyntheticImage]) -> dict[str, list[tuple[int, int, int, int]]]:
    return {im.image_id: [o.box_xyxy for o in im.objects] for im in images}


def test_pixels_baseline_on_simple_single_object_scenes(
    voc_simple30: synthetic.SyntheticVoc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, images = voc_simple30
    run_dir = tmp_path / "run"
    code = main(["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
                 "batch_size=8", "num_workers=2", f"run_dir={run_dir}"])
    out = capsys.readouterr().out
    assert code == 0
    preds = read_preds(run_dir)
    hits, total = independent_corloc(preds, voc_gt(images))
    assert total == 30
    assert f"CorLoc: {100 * hits / total:.2f} ({hits}/{total})" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["hits"], metrics["total"], metrics["failed"]) == (hits, 30, 0)
    assert metrics["complete"] is True
    # LOST on raw pixels finds a dark flat object on a bright, low-contrast background.
    assert hits / total >= 0.9
    assert set(os.listdir(run_dir)) >= {"config.yaml", "run.json", "preds.jsonl", "metrics.json"}
    session = json.loads((run_dir / "run.json").read_text())["sessions"][0]
    assert session["versions"]["torch"] and "batch_size" in session


def test_random_vit_end_to_end_matches_independent_corloc(
    voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, images = voc_mixed12
    run_dir = tmp_path / "vit"
    code = main(["eval", "--no-progress", "backbone=dinov2_reg", "weights=random", "dataset=voc07",
                 f"dataset.root={root}", "num_workers=0", f"run_dir={run_dir}"])
    captured = capsys.readouterr()
    assert code == 0
    assert "RANDOM weights" in captured.err
    preds = read_preds(run_dir)
    hits, total = independent_corloc(preds, voc_gt(images))
    assert total == 12
    assert f"CorLoc: {100 * hits / total:.2f} ({hits}/{total})" in captured.out
    for p in preds:
        x1, y1, x2, y2 = p["box_xyxy"]
        assert 0 <= x1 < x2 <= p["width"] and 0 <= y1 < y2 <= p["height"]
        assert x1 % 14 == 0 and y1 % 14 == 0, "boxes start on the patch grid"


def test_batch_size_never_changes_a_box(voc_simple30: synthetic.SyntheticVoc, tmp_path: Path) -> None:
    """Batch 1 and batch 8 (VOC's 500x375 / 375x500 sizes) give identical predictions.

    Bitwise-identical features need batch-invariant float kernels; on CPU they are at these
    sizes (README: tiny images of a few patches may differ in the last bit).
    """
    root, _ = voc_simple30
    for batch, workers in ((1, 0), (8, 2)):
        assert main(["eval", "--no-progress", "backbone=dino", "weights=random", "dataset=voc07",
                     f"dataset.root={root}", f"batch_size={batch}", f"num_workers={workers}",
                     f"run_dir={tmp_path / str(batch)}"]) == 0
    assert sorted_pred_lines(tmp_path / "1") == sorted_pred_lines(tmp_path / "8")


def test_coco_format_dataset(coco_crowds8: synthetic.SyntheticCoco, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    coco = coco_crowds8
    run_dir = tmp_path / "run"
    code = main(["eval", "--no-progress", "backbone=pixels", "dataset=coco",
                 f"dataset.annotation_json={coco.annotation_json}", f"dataset.image_dir={coco.image_dir}",
                 "num_workers=0", f"run_dir={run_dir}"])
    assert code == 0
    gt = {im.image_id: [o.box_xyxy for o in im.objects if not o.iscrowd] for im in coco.images}
    preds = read_preds(run_dir)
    hits, total = independent_corloc(preds, gt)
    assert total == 8
    assert f"({hits}/{total})" in capsys.readouterr().out
    assert all(len(p["gt_boxes_xyxy"]) == len(gt[p["image_id"]]) for p in preds), "crowd boxes are not GT"


def test_coco20k_layout(coco20k_layout: synthetic.SyntheticCoco, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    coco = coco20k_layout.copy_to(tmp_path / "COCO")  # eval writes its subset cache into <root>/annotations
    chosen = [int(im.image_id) for im in coco.images[:4]]
    filelist = synthetic.write_coco20k_filelist(tmp_path / "list.txt", chosen)
    code = main(["eval", "--no-progress", "backbone=pixels", "dataset=coco20k", f"dataset.root={tmp_path / 'COCO'}",
                 f"dataset.filelist_path={filelist}", "num_workers=0", f"run_dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err
    assert sorted(int(p["image_id"]) for p in read_preds(tmp_path / "run")) == sorted(chosen)


def test_bad_image_is_recorded_and_the_run_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = synthetic.write_voc_dataset(tmp_path / "voc", n_images=5, seed=7)
    images[2].path.write_bytes(images[2].path.read_bytes()[:200])  # truncated JPEG
    run_dir = tmp_path / "run"
    code = main(["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={tmp_path / 'voc'}",
                 "num_workers=0", f"run_dir={run_dir}"])
    captured = capsys.readouterr()
    assert code == 0
    preds = {p["image_id"]: p for p in read_preds(run_dir)}
    assert len(preds) == 5
    bad = preds[images[2].image_id]
    assert bad["box_xyxy"] is None and bad["hit"] is False and str(images[2].path) in bad["error"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["failed"] == 1 and metrics["total"] == 5, "a failed image is a miss in the denominator"
    assert "1 images failed" in captured.err


def test_run_dir_of_another_config_is_refused(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = voc_mixed12
    base = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
            "num_workers=0", f"run_dir={tmp_path / 'run'}"]
    assert main(base) == 0
    before = sorted_pred_lines(tmp_path / "run")
    assert main(base + ["lost.k_patches=50"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "lost.k_patches: 100 in the run dir, 50 now" in err
    assert sorted_pred_lines(tmp_path / "run") == before
    # Execution settings cannot change a box, so they may differ on resume.
    assert main(base + ["batch_size=3"]) == 0
    assert sorted_pred_lines(tmp_path / "run") == before


def test_keyboard_interrupt_then_resume_equals_uninterrupted(
    voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = voc_mixed12
    args = ["eval", "--no-progress", "backbone=dino", "weights=random", "dataset=voc07", f"dataset.root={root}",
            "batch_size=2", "num_workers=0"]
    assert main(args + [f"run_dir={tmp_path / 'full'}"]) == 0

    real = DiscoveryEngine.process  # one call per loader batch
    calls = {"n": 0}

    def interrupt_on_third(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(DiscoveryEngine, "process", interrupt_on_third)
    assert main(args + [f"run_dir={tmp_path / 'cut'}"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    partial = read_preds(tmp_path / "cut")
    assert 0 < len(partial) < 12
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["complete"] is False
    monkeypatch.setattr(DiscoveryEngine, "process", real)
    assert main(args + [f"run_dir={tmp_path / 'cut'}"]) == 0
    assert sorted_pred_lines(tmp_path / "cut") == sorted_pred_lines(tmp_path / "full")
    assert metrics_without_timings(tmp_path / "cut") == metrics_without_timings(tmp_path / "full")
    sessions = json.loads((tmp_path / "cut" / "run.json").read_text())["sessions"]
    assert [s["interrupted"] for s in sessions] == [True, False]
    assert sessions[1]["resumed_with"] == len(partial)


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from lostreg.evaluation import runner
    from lostreg.cli.main import main

    real_append = runner.PredictionStore.append
    state = {"batches": 0}

    def append_then_die(self, records):
        records = list(records)
        state["batches"] += 1
        if state["batches"] == 3:
            # Die in the middle of a write: half a line reaches the file, then SIGKILL.
            import json
            line = json.dumps(records[0]) + "\\n"
            with self.path.open("a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_append(self, records)

    runner.PredictionStore.append = append_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_mid_write_then_resume_equals_uninterrupted(voc_mixed12: synthetic.SyntheticVoc,
                                                            tmp_path: Path) -> None:
    root, _ = voc_mixed12
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
            "batch_size=2", "num_workers=2"]
    assert main(args + [f"run_dir={tmp_path / 'full'}"]) == 0
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    killed = subprocess.run([sys.executable, str(script), *args, f"run_dir={tmp_path / 'cut'}"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    raw = (tmp_path / "cut" / "preds.jsonl").read_text()
    assert not raw.endswith("\n"), "the kill left a partial line"
    resumed = subprocess.run([sys.executable, "-m", "lostreg.cli.main", *args, f"run_dir={tmp_path / 'cut'}"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted_pred_lines(tmp_path / "cut") == sorted_pred_lines(tmp_path / "full")
    assert metrics_without_timings(tmp_path / "cut") == metrics_without_timings(tmp_path / "full")
    ids = [p["image_id"] for p in read_preds(tmp_path / "cut")]
    assert len(ids) == len(set(ids)) == 12, "no image counted twice"


def test_multirun_sweeps_and_prints_the_table(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = voc_mixed12
    code = main(["eval", "--multirun", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
                 "lost.k_patches=10,100", "num_workers=0", f"run_dir={tmp_path}/k${{lost.k_patches}}"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "k10" / "metrics.json").exists() and (tmp_path / "k100" / "metrics.json").exists()
    assert out.count("CorLoc: ") == 2 and "|" in out


def test_folder_dataset_has_boxes_but_no_corloc(voc3: synthetic.SyntheticVoc, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = voc3.image_dir
    code = main(["eval", "--no-progress", "backbone=pixels", "dataset=folder", f"dataset.root={folder}",
                 "num_workers=0", f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert code == 0 and "no ground truth" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["corloc"] is None and metrics["total"] == 3


def test_missing_dataset_shows_expected_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "backbone=pixels", "dataset=voc07", f"dataset.root={tmp_path}", f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "VOC2007" in err and "Annotations" in err and "JPEGImages" in err


def test_bad_override_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "backbone=nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "backbone/nonexistent" in err and "dinov2_reg" in err


def test_a_killed_run_is_visible_and_honest(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """After SIGKILL, metrics.json reflects the batches done (complete: false): compare, report and
    export all show the partial run as incomplete, and resuming says how much was done."""
    root, _ = voc_mixed12
    args = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
            "batch_size=2", "num_workers=0", f"run_dir={tmp_path / 'cut'}"]
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    killed = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["total"] == 4 and metrics["num_images"] == 12

    assert main(["compare", str(tmp_path / "cut")]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "incomplete" in out and "4/12 images" in out
    assert main(["report", str(tmp_path / "cut"), "-o", str(tmp_path / "r.html"), "--no-progress"]) == 0
    assert "incomplete: 4 of 12 images" in (tmp_path / "r.html").read_text()
    assert main(["export", str(tmp_path / "cut"), "--format", "coco", "--out", str(tmp_path / "x.json")]) == 0
    assert "is incomplete (4 of 12 images)" in capsys.readouterr().err

    assert main(args) == 0
    assert "4/12 images already done, 8 to go" in capsys.readouterr().err
    assert main(args) == 0
    assert "already complete (12/12 images)" in capsys.readouterr().err


def test_limit_then_complete_and_overwrite(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = voc_mixed12
    base = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}", "num_workers=0",
            f"run_dir={tmp_path / 'run'}"]
    assert main(base + ["limit=5"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["total"], metrics["num_images"], metrics["complete"]) == (5, 12, False)
    assert main(base) == 0, "limit is not part of the run's identity: the same directory completes"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["complete"] is True
    capsys.readouterr()
    assert main(base + ["lost.k_patches=3"]) == 2  # another configuration: refused ...
    assert main(base + ["lost.k_patches=3", "overwrite=true"]) == 0  # ... unless started afresh
    assert "overwrite=true: removed" in capsys.readouterr().err
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "k_patches: 3" in config and len(read_preds(tmp_path / "run")) == 12


def test_default_run_dir_names_what_changes_results(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The split, no_hard and weights are in the default run directory; an equivalent spelling of
    the dataset root (VOCdevkit itself) resumes the same run."""
    root, _ = voc_mixed12
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", "num_workers=0"]
    assert main(base + [f"dataset.root={root}"]) == 0
    assert main(base + [f"dataset.root={root / 'VOCdevkit'}"]) == 0  # same data, other spelling
    assert main(base + [f"dataset.root={root}", "dataset.no_hard=true"]) == 0
    runs = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "outputs").glob("*/*/*"))
    assert runs == ["outputs/voc07/pixels/k_layer-1_k100_bias0.0", "outputs/voc07_nohard/pixels/k_layer-1_k100_bias0.0"]


def test_multirun_prints_the_table_of_the_runs_that_ran(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = voc_mixed12
    code = main(["eval", "--multirun", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={root}",
                 "lost.k_patches=10,0", "num_workers=0", f"run_dir={tmp_path}/k${{lost.k_patches}}"])
    captured = capsys.readouterr()
    assert code == 2 and "lost.k_patches must be >= 1" in captured.err
    assert captured.out.count("CorLoc: ") == 1 and "| pixels | k=10 |" in captured.out
    assert not (tmp_path / "k0").exists()


def test_bf16_is_its_own_run(voc_mixed12: synthetic.SyntheticVoc, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = voc_mixed12
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--no-progress", "backbone=dino", "weights=random", "dataset=voc07", f"dataset.root={root}",
            "num_workers=0", "limit=2"]
    assert main(base + ["precision=bf16"]) == 0
    run = tmp_path / "outputs" / "voc07" / "dino_vits16-random" / "k_layer-1_k100_bias0.0_bf16"
    assert len(read_preds(run)) == 2
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert sessions[0]["precision"] == "bf16"
    assert main(base + ["precision=fp32", f"run_dir={run}"]) == 2, "fp32 and bf16 results are never mixed"
