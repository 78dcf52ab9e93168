"""The discovery protocol, defined once: which features feed the method, and the method's knobs.

Everything that decides a box besides the image, the backbone and its weights is here, as
plain frozen dataclasses whose field defaults are THE defaults of lostreg (the LOST paper's
protocol: raw keys of the last block, k = 100, no Gram bias):

* :class:`FeatureConfig` — what the backbone hands over: ``which`` (q, k or v of the attention's
  qkv projection), ``layer`` (block, negative from the end), ``l2_normalize`` (per patch).
* :class:`LostConfig` — LOST's own knobs: ``k_patches``, ``gram_bias``.
* :class:`TokenCutConfig` — TokenCut's knobs: ``tau``, ``eps``, ``eig`` (the eigen-solver).
* :class:`DiscoveryProtocol` — ``method`` (``lost`` or ``tokencut``) plus the sections above.

The hydra schema (:mod:`lostreg.config`), the argparse flags of every command
(:func:`lostreg.cli.common.protocol_parent_parser`), the run-directory names, the comparison
table and the published-number matching all read these classes; none repeats a default.

This module imports nothing heavy (no torch), so light commands can use it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, NamedTuple

from lostreg.errors import ConfigError

__all__ = [
    "FEATURE_KINDS",
    "METHODS",
    "OUTPUT_NORMS",
    "PRECISIONS",
    "EIG_SOLVERS",
    "DiscoveryProtocol",
    "FeatureConfig",
    "FeatureKey",
    "FeatureKind",
    "LostConfig",
    "ProtocolError",
    "RopeMode",
    "TokenCutConfig",
    "describe_protocol",
]

FeatureKind = Literal["q", "k", "v"]
#: Whether a rotary-embedding backbone's q/k features are taken before or after the rotation.
RopeMode = Literal["pre", "post"]
#: The slices of an attention qkv projection, in channel order.
FEATURE_KINDS: tuple[str, ...] = ("q", "k", "v")
#: Discovery methods lostreg runs (``method=`` in configs, ``--method`` on the command line).
METHODS: tuple[str, ...] = ("lost", "tokencut")
#: The backbone forward's numerics (``precision=``, ``--precision``; :mod:`lostreg.precision`):
#: ``fp32`` exact (default), ``tf32`` and ``bf16`` faster on GPUs. It can change a box, so it is
#: part of a run's identity, but it is not a knob of the method.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
#: TokenCut's eigen-solvers (:mod:`lostreg.tokencut`): the reference call, float64 and float32 torch.
EIG_SOLVERS: tuple[str, ...] = ("scipy", "torch64", "torch32")


class ProtocolError(ConfigError):
    """A protocol value out of its range or choices; ``str(err)`` names the setting and what is allowed."""


class FeatureKey(NamedTuple):
    """One feature set a backbone can return: ``which`` of block ``layer`` (negative from the end)."""

    which: FeatureKind = "k"
    layer: int = -1


#: The norms of the final output patch tokens (after the model's last norm), asked of a backbone
#: beside its features: ``(B, rows*cols, 1)`` float32 (artifact-aware LOST's outlier rule).
OUTPUT_NORMS = FeatureKey("norms", -1)  # type: ignore[arg-type]


def _check_int(value: Any, key: str, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ProtocolError(f"{key} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class FeatureConfig:
    """Which backbone features feed discovery.

    Attributes:
        which: ``q``, ``k`` or ``v`` of block ``layer``'s attention qkv projection (bias included,
            heads concatenated, no scaling).
        layer: block index, negative from the end (-1 = last block). Its range depends on the
            backbone and is checked when the backbone is known (:meth:`Backbone.check_feature_key`).
        l2_normalize: divide each patch feature by its L2 norm first (the Gram matrix becomes
            cosine similarities), as in the public-checkpoint protocol of spec section 6.
    """

    which: str = "k"
    layer: int = -1
    l2_normalize: bool = False

    def validate(self) -> None:
        """Raise :class:`ProtocolError` for a value no backbone accepts."""
        if self.which not in FEATURE_KINDS:
            raise ProtocolError(f"features.which must be one of {', '.join(FEATURE_KINDS)}; got {self.which!r}")
        _check_int(self.layer, "features.layer")
        if not isinstance(self.l2_normalize, bool):
            raise ProtocolError(f"features.l2_normalize must be true or false, got {self.l2_normalize!r}")

    @property
    def key(self) -> FeatureKey:
        """The backbone feature set this config asks for."""
        return FeatureKey(self.which, self.layer)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LostConfig:
    """LOST's knobs (spec section 3).

    Attributes:
        k_patches: how many lowest-degree patches may join the seed's similars (>= 1).
        gram_bias: added to every Gram entry before any threshold; 0 reproduces the reference.
        exclude_outliers: artifact-aware LOST (a lostreg extension): high-norm output tokens
            (:func:`lostreg.artifacts.outlier_mask` on the final tokens' norms) can be neither the
            seed nor a potential; degrees and the expansion still count every patch.
    """

    k_patches: int = 100
    gram_bias: float = 0.0
    exclude_outliers: bool = False

    def validate(self) -> None:
        """Raise :class:`ProtocolError` for a value out of range."""
        _check_int(self.k_patches, "lost.k_patches", minimum=1)
        if isinstance(self.gram_bias, bool) or not isinstance(self.gram_bias, (int, float)) \
                or not math.isfinite(self.gram_bias):
            raise ProtocolError(f"lost.gram_bias must be a finite number, got {self.gram_bias!r}")
        if not isinstance(self.exclude_outliers, bool):
            raise ProtocolError(f"lost.exclude_outliers must be true or false, got {self.exclude_outliers!r}")


@dataclass(frozen=True)
class TokenCutConfig:
    """TokenCut's knobs (spec tokencut.md; Wang et al. 2022 defaults).

    Attributes:
        tau: cosine threshold of the binary graph (``W = 1`` where cosine > tau, else ``eps``).
        eps: weight of the non-edges (> 0: the graph stays connected).
        eig: eigen-solver: ``scipy`` (the reference's call, CPU), ``torch64`` (default, batched on
            the device), ``torch32`` (faster, 98.6% box parity on the spec's graphs).
    """

    tau: float = 0.2
    eps: float = 1e-5
    eig: str = "torch64"

    def validate(self) -> None:
        """Raise :class:`ProtocolError` for a value out of range."""
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau):
            raise ProtocolError(f"tokencut.tau must be a finite number, got {self.tau!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0 \
                or not math.isfinite(self.eps):
            raise ProtocolError(f"tokencut.eps must be a finite number > 0, got {self.eps!r}")
        if self.eig not in EIG_SOLVERS:
            raise ProtocolError(f"tokencut.eig must be one of {', '.join(EIG_SOLVERS)}; got {self.eig!r}")


@dataclass(frozen=True)
class DiscoveryProtocol:
    """Everything that turns backbone features into a box: the method, its features and its knobs.

    Each method reads its own section (``lost`` or ``tokencut``); the other's knobs are kept but
    play no part (and are left out of names and comparisons).
    """

    method: str = "lost"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    lost: LostConfig = field(default_factory=LostConfig)
    tokencut: TokenCutConfig = field(default_factory=TokenCutConfig)

    def validate(self) -> "DiscoveryProtocol":
        """Check every value; return ``self`` so calls chain.

        Raises:
            ProtocolError: one line naming the setting and the allowed values.
        """
        if self.method not in METHODS:
            raise ProtocolError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        self.features.validate()
        self.lost.validate()
        self.tokencut.validate()
        return self

    def knobs(self) -> dict[str, Any]:
        """The chosen method's own knobs, e.g. ``{"k_patches": 100, "gram_bias": 0.0}`` for LOST."""
        return dataclasses.asdict(getattr(self, self.method))

    def identity(self) -> dict[str, Any]:
        """What can change a box: the method, the features and the chosen method's knobs only.

        Knobs at their defaults that earlier versions did not have (``exclude_outliers``) are left
        out, so run directories of those versions keep their identity.
        """
        knobs = self.knobs()
        if self.method == "lost" and not knobs.get("exclude_outliers"):
            knobs.pop("exclude_outliers", None)
        return {"method": self.method, "features": dataclasses.asdict(self.features), self.method: knobs}

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (``{"method", "features": {...}, "lost": {...}}``) for JSON summaries."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DiscoveryProtocol":
        """Build from a mapping shaped like the eval config (``method``, ``features``, ``lost``).

        Missing sections or keys take the defaults (older run directories lack ``method`` and
        ``features.l2_normalize``); unknown keys are an error. Values are not validated here.

        Raises:
            ProtocolError: an unknown key.
        """
        def build(kind: type, section: str) -> Any:
            values = dict(data.get(section) or {})
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(values) - names)
            if unknown:
                raise ProtocolError(f"unknown setting {section}.{unknown[0]} (known: {', '.join(sorted(names))})")
            return kind(**values)

        method = data.get("method", cls.method)
        return cls(method=str(method), features=build(FeatureConfig, "features"), lost=build(LostConfig, "lost"),
                   tokencut=build(TokenCutConfig, "tokencut"))

    @property
    def name(self) -> str:
        """Directory-name form, e.g. ``k_layer-1_k100_bias0.0`` (``_l2`` appended when normalised).

        The LOST method's name keeps the form of earlier lostreg versions, so their run
        directories are found again by the same command.
        """
        f, lost, cut = self.features, self.lost, self.tokencut
        if self.method == "tokencut":
            default = TokenCutConfig()
            text = f"tokencut_{f.which}_layer{f.layer}_tau{float(cut.tau)}"
            text += "" if cut.eps == default.eps else f"_eps{cut.eps:g}"
            text += "" if cut.eig == default.eig else f"_{cut.eig}"
        else:
            text = f"{f.which}_layer{f.layer}_k{lost.k_patches}_bias{float(lost.gram_bias)}"
            text += "_xo" if lost.exclude_outliers else ""
        return text + ("_l2" if f.l2_normalize else "")

    def departures(self) -> list[str]:
        """How this protocol differs from the default one, e.g. ``["which=q", "layer=-2"]``."""
        default = DiscoveryProtocol()
        parts = []
        if self.method != default.method:
            parts.append(f"method={self.method}")
        if self.features.which != default.features.which:
            parts.append(f"which={self.features.which}")
        if self.features.layer != default.features.layer:
            parts.append(f"layer={self.features.layer}")
        if self.method == "lost":
            if self.lost.k_patches != default.lost.k_patches:
                parts.append(f"k={self.lost.k_patches}")
            if self.lost.gram_bias != default.lost.gram_bias:
                parts.append(f"bias={self.lost.gram_bias:g}")
            if self.lost.exclude_outliers:
                parts.append("exclude_outliers")
        else:
            parts += [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                      for name, value in self.knobs().items() if value != getattr(TokenCutConfig(), name)]
        if self.features.l2_normalize != default.features.l2_normalize:
            parts.append("l2")
        return parts


_KIND_WORDS = {"q": "queries", "k": "keys", "v": "values"}


def describe_protocol(protocol: DiscoveryProtocol) -> str:
    """The protocol in words, e.g. ``raw keys of the last layer, k=100, Gram bias 0``."""
    f = protocol.features
    layer = "the last layer" if f.layer == -1 else f"layer {f.layer}"
    text = f"{'L2-normalised' if f.l2_normalize else 'raw'} {_KIND_WORDS.get(f.which, f.which)} of {layer}"
    if protocol.method == "tokencut":
        cut = protocol.tokencut
        return f"TokenCut on {text}, tau={cut.tau:g}, eps={cut.eps:g}, eig={cut.eig}"
    text = f"{text}, k={protocol.lost.k_patches}, Gram bias {protocol.lost.gram_bias:g}"
    return text + (", high-norm outliers excluded" if protocol.lost.exclude_outliers else "")
