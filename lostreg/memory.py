"""Will it fit? A peak-memory estimate of one batch, checked before a run starts.

A folder of 12-Mpixel phone photos at native resolution is 47k-61k patches per image. The
backbone's memory grows linearly with the patches (PyTorch's fused attention never forms the
T x T matrix, on CPU and GPU; lostreg's own code never does either), LOST's in bounded tiles
(:mod:`lostreg.lost_tiles`), but TokenCut's dense eigenproblem needs several N x N float64
matrices per image. :func:`check_fits` compares an estimate for the largest image of a run with
the memory the device has, and stops the run at once, with the ``max_size`` that would fit,
instead of an out-of-memory kill halfway through.

The estimate is deliberately simple and on the safe side (constants measured on CPU with
random ViT-S/16 and the pixels baseline; see ``benchmarks/README.md``):

* backbone: ``B * T * D * 4 bytes * 24`` (the residual stream, the qkv and MLP activations of
  one block and their temporaries) plus a fixed ``1 GiB`` of working space;
* the method: its registration's estimate (:attr:`lostreg.methods.MethodSpec.memory_bytes`): for
  LOST one Gram step (at most 256 MiB) plus ``O(N)`` per image; for TokenCut ``B * 6 * N^2 * 8
  bytes`` (the float64 graph, Laplacian, eigenvectors, workspace).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lostreg.errors import LostregError
from lostreg.lost_tiles import available_memory_bytes
from lostreg.preprocess import downscaled_hw
from lostreg.protocol import DiscoveryProtocol

__all__ = ["InsufficientMemoryError", "MemoryEstimate", "check_fits", "estimate_batch_bytes", "image_size"]

GIB = 2**30
#: Activation bytes per token and channel in one block's forward, with temporaries (measured x ~1.5).
_BACKBONE_FACTOR = 24 * 4
_BACKBONE_FIXED = 1 * GIB
#: Use at most this share of the available memory (the OS, other processes, fragmentation).
USABLE_SHARE = 0.9


class InsufficientMemoryError(LostregError, ValueError):
    """A run whose largest image would not fit in memory (one line; a user error, exit code 2)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak of one batch of ``batch`` images of ``patches`` patches each, in bytes."""

    patches: int
    batch: int
    backbone_bytes: int
    method_bytes: int

    @property
    def total(self) -> int:
        return self.backbone_bytes + self.method_bytes


def estimate_batch_bytes(protocol: DiscoveryProtocol, patches: int, batch: int, tokens_extra: int = 5,
                         width: int = 1024) -> MemoryEstimate:
    """The estimate of the module docstring for ``batch`` images of ``patches`` patches.

    Args:
        protocol: the method (LOST or TokenCut) and its knobs.
        patches: N = rows * cols of each image.
        batch: images per forward pass.
        tokens_extra: prefix (and trailing) tokens besides the patches.
        width: the backbone's channel width D (768 for the pixels baseline's features).
    """
    tokens = patches + tokens_extra
    backbone = batch * tokens * width * _BACKBONE_FACTOR + _BACKBONE_FIXED
    method = protocol.spec.memory_bytes(protocol.method_knobs, patches, batch)
    return MemoryEstimate(patches, batch, int(backbone), int(method))


def image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image file after EXIF orientation, from its header (no decoding); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - the read stage reports unreadable files, one by one
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _grid(hw: tuple[int, int], max_size: int | None, patch: int) -> int:
    h, w = downscaled_hw(hw, max_size)
    return math.ceil(h / patch) * math.ceil(w / patch)


def check_fits(
    sizes: Sequence[tuple[str, tuple[int, int] | None]],
    paths_to_probe: Sequence[tuple[str, Path]],
    protocol: DiscoveryProtocol,
    patch_size: int,
    width: int,
    batch_size: int,
    max_size: int | None,
    device: torch.device,
    available: int | None = None,
) -> MemoryEstimate | None:
    """Stop before a run whose largest image cannot fit; return the estimate of that image.

    Args:
        sizes: ``(name, (H, W) or None)`` of every image (from annotations); None = unknown.
        paths_to_probe: ``(name, path)`` of the images whose size is unknown: their headers are read.
        protocol, patch_size, width: the method and the backbone's patch size and channel width.
        batch_size: images per forward pass (the worst case: all of the largest size; images of
            unknown size are batched alone by the read stage, so probed ones count as batches of 1).
        max_size: the run's downscale limit (None: native resolution).
        device: where the run computes.
        available: bytes available (default: what the device reports).

    Raises:
        InsufficientMemoryError: one line naming the image, its size, the estimate, what is available and
            the ``max_size`` that would fit.
    """
    known = [(name, hw, batch_size) for name, hw in sizes if hw is not None]
    if paths_to_probe:
        with ThreadPoolExecutor(max_workers=8) as pool:
            probed = list(pool.map(lambda item: (item[0], image_size(item[1])), paths_to_probe))
        known += [(name, hw, 1) for name, hw in probed if hw is not None]
    if not known:
        return None
    name, hw, batch = max(known, key=lambda item: (_grid(item[1], max_size, patch_size) * item[2]))
    patches = _grid(hw, max_size, patch_size)
    estimate = estimate_batch_bytes(protocol, patches, batch, width=width)
    budget = int((available if available is not None else available_memory_bytes(device)) * USABLE_SHARE)
    if estimate.total <= budget:
        return estimate
    # Another batch size first (it costs nothing), then the largest max_size that fits one image.
    if batch > 1 and estimate_batch_bytes(protocol, patches, 1, width=width).total <= budget:
        hint = "batch_size=1 would fit"
    else:
        fitting = [m for m in range(max(hw), 15, -16) if
                   estimate_batch_bytes(protocol, _grid(hw, m, patch_size), batch, width=width).total <= budget]
        hint = f"max_size={fitting[0]} would fit" if fitting else "no downscale makes it fit"
    raise InsufficientMemoryError(
        f"{name}: {hw[1]}x{hw[0]} px is {patches} patches at p={patch_size}"
        f"{'' if max_size is None else f' (max_size={max_size})'}: a batch of {batch} needs about "
        f"{estimate.total / GIB:.1f} GiB ({protocol.method}), {budget / GIB:.1f} GiB are available on {device}; "
        f"{hint}"
    )
