"""The throughput data path: uint8 from the workers, normalisation and padding where the backbone
is, a prefetcher, a background writer, and the backbone's precision option — same numbers as the
one-image path."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lostreg.backbones import build_backbone
from lostreg.datasets.base import ImageRecord
from lostreg.evaluation.loading import DevicePrefetcher, collate_packed, iterate_prepared
from lostreg.precision import forward_precision
from lostreg.preprocess import ImagePreparer, batch_images, to_padded_tensor
from lostreg.rundir import PredictionStore, PredictionWriter, RunDir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_batched_normalisation_equals_the_one_image_path_bit_for_bit() -> None:
    """Images of different sizes but one padded size (500x375 and 497x370 at p=14): packed in uint8,
    normalised and padded as a batch, they equal to_padded_tensor of each, padding exactly +0."""
    preparer = ImagePreparer(14, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = _images([(375, 500), (370, 497), (378, 504)])
    items = [preparer(image, str(i)) for i, image in enumerate(images)]
    assert len({it.padded_hw for it in items}) == 1
    batch = batch_images(items, "cpu")
    for image, row in zip(images, batch):
        expected = to_padded_tensor(image, 14).tensor
        assert torch.equal(row, expected)
        assert not torch.signbit(row[:, image.shape[0]:]).any(), "padding is +0.0, never -0.0"
    with pytest.raises(ValueError, match="one padded size"):
        batch_images([items[0], preparer(_images([(100, 100)])[0], "x")])


def test_loader_batches_are_packed_uint8_grouped_by_padded_size(tmp_path: Path) -> None:
    from PIL import Image

    records = []
    for i, (h, w) in enumerate([(40, 60), (40, 60), (60, 40), (41, 60)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(_images([(h, w)], seed=i)[0]).save(path)
        records.append(ImageRecord(image_id=str(i), path=path, width=None, height=None))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    records.append(ImageRecord(image_id="bad", path=tmp_path / "bad.png", width=None, height=None))
    preparer = ImagePreparer(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    dataset_items = [item for batch in iterate_prepared(records, preparer, 8, 0) for item in batch.failed]
    assert [it.record.image_id for it in dataset_items] == ["bad"]
    from lostreg.evaluation.loading import PreparedImages

    loaded = [PreparedImages(records, preparer)[i] for i in range(len(records))]
    batch = collate_packed(loaded)
    assert [it.record.image_id for it in batch.failed] == ["bad"]
    assert [[it.record.image_id for it in g.items] for g in batch.groups] == [["0", "1", "3"], ["2"]]
    for group in batch.groups:
        assert group.packed.dtype == torch.uint8
        expected = torch.stack([to_padded_tensor(np.asarray(Image.open(it.record.path)), 16,
                                                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).tensor for it in group.items])
        assert torch.equal(batch_images([it.prepared for it in group.items], "cpu", group.packed), expected)
    prefetched = list(DevicePrefetcher(iter([batch, batch]), torch.device("cpu")))
    assert len(prefetched) == 2 and prefetched[0] is batch


def test_writer_keeps_order_and_drains_on_close(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    store = PredictionStore(tmp_path / "preds.jsonl")
    slow = store.append

    def slower(records):  # type: ignore[no-untyped-def]
        time.sleep(0.01)
        slow(records)

    store.append = slower  # type: ignore[method-assign]
    writer = PredictionWriter(run, store, max_pending=2)
    for i in range(10):
        writer.submit([{"image_id": str(i)}], {"total": i + 1})
    writer.close()
    assert list(store.read()) == [str(i) for i in range(10)]
    assert json.loads(run.metrics_path.read_text()) == {"total": 10}


def test_writer_errors_reach_the_caller(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    store = PredictionStore(tmp_path / "missing_dir" / "preds.jsonl")  # cannot be written
    writer = PredictionWriter(run, store)
    writer.submit([{"image_id": "1"}])
    with pytest.raises(FileNotFoundError):
        writer.close()
    assert not any(t.name == "lostreg-prediction-writer" for t in threading.enumerate())


def test_precision_options_on_the_cpu() -> None:
    backbone = build_backbone("dino", weights="random", device="cpu")
    x = torch.randn(1, 3, 32, 48)
    fp32 = backbone.extract(x)
    assert torch.equal(backbone.extract(x, precision="tf32"), fp32), "TF32 does not exist on the CPU"
    bf16 = backbone.extract(x, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)
    assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=-1).min() > 0.98
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        with forward_precision("fp16", "cpu"):
            pass
