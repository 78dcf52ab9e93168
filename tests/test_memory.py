"""Any image size in bounded memory: the pre-run estimate, memory-aware defaults, a large photo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lostreg.cli.main import main
from lostreg.config import compose_config
from lostreg.memory import GIB, InsufficientMemoryError, check_fits, estimate_batch_bytes
from lostreg.protocol import DiscoveryProtocol

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_largest_image_decides_and_the_hint_fits() -> None:
    tokencut = DiscoveryProtocol(method="tokencut")
    sizes = [("small.jpg", (375, 500)), ("phone.jpg", (3024, 4032)), ("none.jpg", None)]
    estimate = check_fits(sizes, [], DiscoveryProtocol(), 16, 384, 8, None, "cpu", available=64 * GIB)
    assert estimate is not None and estimate.patches == 189 * 252
    with pytest.raises(InsufficientMemoryError) as err:
        check_fits(sizes, [], tokencut, 16, 384, 1, None, "cpu", available=8 * GIB)
    message = str(err.value)
    assert message.startswith("phone.jpg: 4032x3024 px is 47628 patches at p=16") and "tokencut" in message
    suggested = int(message.rsplit("max_size=", 1)[1].split()[0])
    from lostreg.memory import _grid

    assert estimate_batch_bytes(tokencut, _grid((3024, 4032), suggested, 16), 1, width=384).total <= 0.9 * 8 * GIB
    assert estimate_batch_bytes(tokencut, _grid((3024, 4032), suggested + 16, 16), 1, width=384).total > 0.9 * 8 * GIB
    with pytest.raises(InsufficientMemoryError, match="batch_size=1 would fit"):
        check_fits([("a.jpg", (1000, 1000))], [], DiscoveryProtocol(), 16, 384, 64, None, "cpu", available=8 * GIB)


def test_users_data_defaults_to_discovers_max_size_published_data_to_native() -> None:
    assert compose_config(["dataset=folder", "dataset.root=x"]).max_size == 1024
    assert compose_config(["dataset=coco", "dataset.annotation_json=a", "dataset.image_dir=b"]).max_size == 1024
    assert compose_config(["dataset=folder", "dataset.root=x", "max_size=null"]).max_size is None
    for dataset in ("voc07", "voc12", "coco20k"):
        assert compose_config([f"dataset={dataset}"]).max_size is None


def test_a_run_that_cannot_fit_stops_before_any_write(big_photo_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import lostreg.memory as memory

    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 8 * GIB)
    code = main(["eval", "--no-progress", "backbone=pixels", "method=tokencut", "dataset=folder",
                 f"dataset.root={big_photo_folder}", "max_size=null", "num_workers=0",
                 f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "photo.jpg: 3200x2400 px is 30000 patches" in err and "max_size=" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_3200x2400_photo_at_native_resolution_in_bounded_memory(big_photo_folder: Path, tmp_path: Path) -> None:
    """LOST on 30k patches (pixels backbone, no resize): peak resident memory under 3 GiB (16 GB
    when LOST held the N x N Gram matrix), and the object is found."""
    code = (
        "import resource, sys; from lostreg.cli.main import main; "
        "rc = main(['eval', '--no-progress', 'backbone=pixels', 'dataset=folder', "
        f"'dataset.root={big_photo_folder}', "
        f"'max_size=null', 'num_workers=0', 'run_dir={tmp_path / 'run'}']); "
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.split("PEAK")[1].split()[0])
    assert peak_kib < 3 * 2**20, f"peak {peak_kib / 2**20:.2f} GiB"
    [line] = (tmp_path / "run" / "preds.jsonl").read_text().splitlines()
    assert json.loads(line)["box_xyxy"] == [992, 800, 2192, 1600]
