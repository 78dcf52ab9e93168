"""A third discovery method, as a user would add one: this module plus one ``register_method`` call.

``brightest``: the seed is the patch whose features have the largest L2 norm (first one on ties);
the object is the square of ``radius`` patches around it, clipped to the grid. Not a useful method,
just one whose boxes are easy to predict, so that tests can check every seam a method goes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from lostreg.knobs import FeatureKey, knob, validate_knobs
from lostreg.methods import MethodSpec, register_method, unregister_method

NAME = "brightest"


@dataclass(frozen=True)
class BrightestConfig:
    """The toy's settings: one knob."""

    radius: int = knob(1, "brightest: half side of the square around the seed, in patches", minimum=0)

    def validate(self) -> None:
        validate_knobs(self, NAME)


@dataclass(frozen=True)
class BrightestResult:
    seed: int
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    degenerate: bool

    @property
    def seed_rc(self) -> tuple[int, int]:
        row, col = divmod(self.seed, int(self.mask.shape[1]))
        return int(row), int(col)


def run(config: BrightestConfig, features: torch.Tensor, grid_hw: tuple[int, int],
        extras: Mapping[FeatureKey, torch.Tensor]) -> list[BrightestResult]:
    rows, cols = grid_hw
    seeds = features.float().norm(dim=-1).argmax(dim=1).tolist()  # first maximum on ties
    results = []
    for seed in seeds:
        row, col = divmod(int(seed), cols)
        r = config.radius
        x1, y1, x2, y2 = max(0, col - r), max(0, row - r), min(cols, col + r + 1), min(rows, row + r + 1)
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        mask[y1:y2, x1:x2] = True
        results.append(BrightestResult(int(seed), mask, (x1, y1, x2, y2), degenerate=(x1, y1) == (0, 0)))
    return results


def expected_box(features: torch.Tensor, grid_hw: tuple[int, int], radius: int) -> tuple[int, int, int, int]:
    """The toy's patch box for one image's (rows*cols, D) features, computed independently."""
    rows, cols = grid_hw
    norms = features.float().norm(dim=-1)
    seed = int(torch.nonzero(norms == norms.max())[0, 0])
    row, col = divmod(seed, cols)
    return max(0, col - radius), max(0, row - radius), min(cols, col + radius + 1), min(rows, row + radius + 1)


def register() -> MethodSpec:
    return register_method(MethodSpec(
        name=NAME,
        label="Brightest",
        config=BrightestConfig,
        run=run,
        memory_bytes=lambda config, patches, batch: batch * patches * 8,
        dir_name=lambda features, config: f"brightest_{features.which}_layer{features.layer}_r{config.radius}",
        describe=lambda features_text, config: f"Brightest on {features_text}, radius {config.radius}",
        table_knobs=("radius",),
        record_fields=lambda result: {"touches_corner": bool(result.degenerate)},
        summary="a toy: the square around the patch of largest feature norm",
    ))


def unregister() -> None:
    unregister_method(NAME)


