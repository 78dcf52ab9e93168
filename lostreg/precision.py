"""Numerical precision: true fp32 for everything that feeds sign thresholds, and the backbone's options.

* :func:`strict_fp32` — IEEE float32 matrix products (no TF32): LOST's Gram matrix and, by
  default, the backbone.
* :func:`forward_precision` — the backbone forward under ``precision=fp32|tf32|bf16``:
  ``fp32`` (default, exact), ``tf32`` (TF32 tensor cores on NVIDIA GPUs; same as fp32 on CPU),
  ``bf16`` (autocast to bfloat16 on the device). Features leave the backbone as float32 and
  the discovery method always runs in true fp32; only the features themselves change, and the
  benchmark counts how many boxes that moves instead of assuming none.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from lostreg.errors import ConfigError
from lostreg.knobs import PRECISIONS


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Run float32 matrix products in true IEEE fp32 (no TF32, no bf16), then restore.

    LOST thresholds signs of dot products, so a reduced-precision Gram matrix can flip
    degrees and similars; the spec requires true fp32.

    Torch >= 2.9 has per-backend ``fp32_precision`` settings, and mixing them with the
    legacy ``allow_tf32`` flags makes later reads of either raise. Where the new
    settings exist, only they are saved, set to ``"ieee"`` and restored (this round-trips
    the exact previous state, whichever API the caller used); on older torch the legacy
    flags and ``torch.set_float32_matmul_precision`` are used instead.

    Not thread-safe: these are process-wide settings.
    """
    knobs = []
    for parent in (
        getattr(torch.backends.cuda, "matmul", None),
        getattr(getattr(torch.backends, "cudnn", None), "conv", None),
        getattr(getattr(torch.backends, "mkldnn", None), "matmul", None),
    ):
        if parent is not None and hasattr(parent, "fp32_precision"):
            knobs.append(parent)

    if knobs:
        saved = [k.fp32_precision for k in knobs]
        try:
            for k in knobs:
                k.fp32_precision = "ieee"
            yield
        finally:
            # Reverse order so that any coupling between knobs unwinds symmetrically.
            for k, value in reversed(list(zip(knobs, saved))):
                k.fp32_precision = value
        return

    saved_matmul = torch.backends.cuda.matmul.allow_tf32
    saved_cudnn = torch.backends.cudnn.allow_tf32
    saved_precision = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        # The precision setter also writes the matmul TF32 flag, so it goes first.
        torch.set_float32_matmul_precision(saved_precision)
        torch.backends.cuda.matmul.allow_tf32 = saved_matmul
        torch.backends.cudnn.allow_tf32 = saved_cudnn


@contextlib.contextmanager
def allow_tf32() -> Iterator[None]:
    """TF32 for CUDA matrix products and convolutions inside the block, then restore (no effect on CPU)."""
    knobs = [k for k in (getattr(torch.backends.cuda, "matmul", None),
                         getattr(getattr(torch.backends, "cudnn", None), "conv", None))
             if k is not None and hasattr(k, "fp32_precision")]
    if knobs:
        saved = [k.fp32_precision for k in knobs]
        try:
            for k in knobs:
                k.fp32_precision = "tf32"
            yield
        finally:
            for k, value in reversed(list(zip(knobs, saved))):
                k.fp32_precision = value
        return
    saved_matmul, saved_cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_matmul, saved_cudnn


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`; else a one-line ValueError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@contextlib.contextmanager
def forward_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """The numerical mode of a backbone forward pass on ``device`` (see the module docstring)."""
    check_precision(precision)
    device_type = torch.device(device).type
    if precision == "tf32":
        with allow_tf32():
            yield
        return
    with strict_fp32():
        if precision == "bf16":
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                yield
        else:
            yield
