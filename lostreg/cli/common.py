"""What the sub-commands share: error lines, user-error types, loud random-weights builds."""

from __future__ import annotations

import sys
import warnings

from tqdm import tqdm

from lostreg.backbones import (
    Backbone,
    UnknownBackboneError,
    WeightsError,
    WeightsUnavailableError,
    build_backbone,
)
from lostreg.config import ConfigError
from lostreg.datasets import DatasetLayoutError
from lostreg.evaluation.runner import RunConfigMismatch

#: Longer-side limit of user images for discover / inspect / export --images (0 = native).
DEFAULT_MAX_SIZE = 1024

#: Errors caused by the command line or the files it names: one line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, DatasetLayoutError, RunConfigMismatch, UnknownBackboneError, WeightsError,
    WeightsUnavailableError, ValueError, KeyError,
)


def error(message: object) -> None:
    """Print ``lostreg: error: <message>`` on stderr (through tqdm, so bars stay intact)."""
    tqdm.write(f"lostreg: error: {message}", file=sys.stderr)


def build_backbone_loudly(name: str, weights: str | None, device: str) -> Backbone:
    """:func:`~lostreg.backbones.build_backbone`, with random weights announced on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's warning becomes the louder line below
        backbone = build_backbone(name, weights=weights, device=device)
    if backbone.is_random:
        print(f"WARNING: {backbone.name} has RANDOM weights (--weights random): boxes and maps are "
              "meaningless; use this only to test the pipeline.", file=sys.stderr)
    return backbone
