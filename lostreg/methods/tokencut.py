"""TokenCut as a registered method: its settings, memory and record fields (the algorithm: :mod:`lostreg.tokencut`).

Light (no torch): the run function is :func:`lostreg.tokencut.run_tokencut`, imported on first use.
The eigen-solvers and every default are declared here once; the algorithm module reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lostreg.knobs import FeatureConfig, knob, validate_knobs
from lostreg.methods import MethodSpec, register_method

__all__ = ["EIG_SOLVERS", "EigSolver", "TokenCutConfig"]

EigSolver = Literal["scipy", "torch64", "torch32"]
#: TokenCut's eigen-solvers (:mod:`lostreg.tokencut`): the reference's call (scipy, CPU), float64
#: torch (batched on the device), float32 torch (faster; 98.6% box parity on the spec's graphs).
EIG_SOLVERS: tuple[str, ...] = ("scipy", "torch64", "torch32")
#: The solvers that reproduce the reference's boxes (torch32 does not always).
REFERENCE_SOLVERS: tuple[str, ...] = ("scipy", "torch64")
#: Dense float64 N x N matrices per image at the peak (graph, Laplacian, eigenvectors, workspace).
_DENSE_MATRICES = 6


@dataclass(frozen=True)
class TokenCutConfig:
    """TokenCut's knobs (spec tokencut.md; Wang et al. 2022 defaults).

    Attributes:
        tau: cosine threshold of the binary graph (``W = 1`` where cosine > tau, else ``eps``).
        eps: weight of the non-edges (> 0: the graph stays connected).
        eig: eigen-solver: ``scipy`` (the reference's call, CPU), ``torch64`` (default, batched on
            the device), ``torch32`` (faster, 98.6% box parity on the spec's graphs).
    """

    tau: float = knob(0.2, "TokenCut: cosine threshold of the graph")
    eps: float = knob(1e-5, "TokenCut: weight of non-edges", positive=True)
    eig: str = knob("torch64", "TokenCut: eigen-solver (scipy = the reference's call)", choices=EIG_SOLVERS,
                    reference=REFERENCE_SOLVERS)

    def validate(self) -> None:
        """Raise :class:`~lostreg.knobs.ProtocolError` for a value out of range."""
        validate_knobs(self, "tokencut")


def _memory_bytes(config: TokenCutConfig, patches: int, batch: int) -> int:
    return batch * _DENSE_MATRICES * patches * patches * 8


def _record_fields(result: Any) -> dict[str, Any]:
    # Images whose spectrum has no distinct object get the spec's fixed full-image box.
    return {"degenerate": bool(result.degenerate)}


def _confidence(result: Any) -> float:
    # 1 - λ2, the relaxed normalised-cut value of the split; 0 when degenerate (lostreg.tokencut).
    return float(result.score)


def _dir_name(features: FeatureConfig, config: TokenCutConfig) -> str:
    default = TokenCutConfig()
    name = f"tokencut_{features.which}_layer{features.layer}_tau{float(config.tau)}"
    name += "" if config.eps == default.eps else f"_eps{config.eps:g}"
    return name + ("" if config.eig == default.eig else f"_{config.eig}")


def _describe(features_text: str, config: TokenCutConfig) -> str:
    return f"TokenCut on {features_text}, tau={config.tau:g}, eps={config.eps:g}, eig={config.eig}"


SPEC = register_method(MethodSpec(
    name="tokencut",
    label="TokenCut",
    config=TokenCutConfig,
    run="lostreg.tokencut:run_tokencut",
    memory_bytes=_memory_bytes,
    dir_name=_dir_name,
    describe=_describe,
    table_knobs=("tau",),
    record_fields=_record_fields,
    confidence=_confidence,
    run_objects="lostreg.tokencut:run_tokencut_objects",
    summary="TokenCut (Wang et al., CVPR 2022): a normalised cut of the thresholded patch-similarity graph",
))
