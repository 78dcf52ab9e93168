"""Numerical precision shared by the stages that feed LOST's sign thresholds."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
