"""Settings that decide a box, declared once as dataclass fields: their checks, flags and names derive from them.

A *knob* is a field of a frozen settings dataclass (:class:`FeatureConfig` here, each discovery
method's config in :mod:`lostreg.methods`) made with :func:`knob`: its default, its type hint and a
little metadata (help text, a short label for tables, its allowed range or choices). From that one
declaration lostreg derives

* the checks (:func:`validate_knobs`, one-line :class:`ProtocolError` naming ``section.name``),
* the command-line flags of every discovering command (``--k-patches``; :mod:`lostreg.cli.common`),
* the hydra schema and the sweep axes (:mod:`lostreg.config`),
* typed reading of a run directory's ``config.yaml`` (:func:`knobs_from_mapping`),
* the words of tables and directory names (:func:`knob_label`).

Also here, because backbones and methods share them: what a backbone can be asked for
(:class:`FeatureKey`, :data:`OUTPUT_NORMS`). This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, NamedTuple

from lostreg.errors import ConfigError

__all__ = [
    "FEATURE_CHOICES",
    "FEATURE_KINDS",
    "OUTPUT_NORMS",
    "OUTPUT_TOKENS",
    "PRECISIONS",
    "FeatureConfig",
    "FeatureKey",
    "FeatureKind",
    "ProtocolError",
    "RopeMode",
    "flag_of",
    "knob",
    "knob_fields",
    "knob_label",
    "knob_type",
    "knobs_from_mapping",
    "omitted_at_default",
    "validate_knobs",
]

FeatureKind = Literal["q", "k", "v", "out"]
#: Whether a rotary-embedding backbone's q/k features are taken before or after the rotation.
RopeMode = Literal["pre", "post"]
#: The slices of an attention qkv projection, in channel order.
FEATURE_KINDS: tuple[str, ...] = ("q", "k", "v")
#: A block's output tokens (after the model's final norm for the last block): the "output features"
#: of the DINOv3 paper's TokenCut protocol (section 6.1.4).
OUTPUT_TOKENS = "out"
#: Every ``features.which``: the attention slices, then the output tokens.
FEATURE_CHOICES: tuple[str, ...] = (*FEATURE_KINDS, OUTPUT_TOKENS)
#: The backbone forward's numerics (``precision=``, ``--precision``; :mod:`lostreg.precision`):
#: ``fp32`` exact (default), ``tf32`` and ``bf16`` faster on GPUs. It can change a box, so it is
#: part of a run's identity, but it is not a knob of the method.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


class ProtocolError(ConfigError):
    """A protocol value out of its range or choices; ``str(err)`` names the setting and what is allowed."""


class FeatureKey(NamedTuple):
    """One feature set a backbone can return: ``which`` of block ``layer`` (negative from the end)."""

    which: FeatureKind = "k"
    layer: int = -1


#: The norms of the final output patch tokens (after the model's last norm), asked of a backbone
#: beside its features: ``(B, rows*cols, 1)`` float32 (artifact-aware LOST's outlier rule).
OUTPUT_NORMS = FeatureKey("norms", -1)  # type: ignore[arg-type]


def knob(default: Any, help: str, *, short: str | None = None, minimum: int | None = None,
         positive: bool = False, choices: tuple[str, ...] | None = None, flag: str | None = None,
         reference: tuple[Any, ...] | None = None, omit_at_default: bool = False) -> Any:
    """A dataclass field that declares one setting.

    Args:
        default: THE default of lostreg (no other module repeats it).
        help: what it does, in a few words (command-line help; ``(default X)`` is appended there).
        short: its label in tables and departures (``k`` for ``k_patches``); default the name.
        minimum: least value of an integer setting.
        positive: a number that must be > 0 (else any finite number).
        choices: the allowed strings.
        flag: the command-line flag, default ``--`` + the name with dashes.
        reference: values that reproduce the published reference implementation (default: only
            the default); a run is comparable with published numbers only with such values.
        omit_at_default: leave the setting out of the run identity while it has its default,
            because run directories of lostreg versions before it existed never had it.
    """
    metadata = {"help": help, "short": short, "minimum": minimum, "positive": positive, "choices": choices,
                "flag": flag, "reference": reference, "omit_at_default": omit_at_default}
    return dataclasses.field(default=default, metadata={"knob": metadata})


def knob_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of a settings dataclass (class or instance), in declaration order."""
    return dataclasses.fields(cls)


def _meta(field: dataclasses.Field) -> dict[str, Any]:
    return dict(field.metadata.get("knob") or {})


def knob_type(cls: type, name: str) -> type:
    """The plain Python type of a setting (``int``, ``float``, ``bool`` or ``str``)."""
    hint = typing.get_type_hints(cls)[name]
    return str if typing.get_origin(hint) is Literal else hint


def knob_label(field: dataclasses.Field) -> str:
    """How tables and departures name a setting (``k`` for ``k_patches``)."""
    return _meta(field).get("short") or field.name


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a setting (``--k-patches``)."""
    return _meta(field).get("flag") or "--" + field.name.replace("_", "-")


def knob_help(field: dataclasses.Field) -> str:
    """The help text of a setting, with its default (``LOST k: ... (default 100)``)."""
    meta = _meta(field)
    text = meta.get("help") or field.name
    if isinstance(field.default, bool):
        return text
    default = f"{field.default:g}" if isinstance(field.default, float) else str(field.default)
    return f"{text} (default {default})"


def knob_choices(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed strings of a setting, if it has a fixed set."""
    return _meta(field).get("choices")


def follows_reference(config: Any, free: tuple[str, ...] = ()) -> bool:
    """Whether every setting of ``config`` (except ``free`` ones) has a value of the reference implementation."""
    for field in knob_fields(config):
        if field.name in free:
            continue
        allowed = _meta(field).get("reference") or (field.default,)
        if getattr(config, field.name) not in allowed:
            return False
    return True


def identity_of(config: Any) -> dict[str, Any]:
    """The settings of ``config`` that name a run: all, except those declared ``omit_at_default`` at their default."""
    values = dataclasses.asdict(config)
    for field in knob_fields(config):
        if _meta(field).get("omit_at_default") and values[field.name] == field.default:
            values.pop(field.name)
    return values


def validate_knobs(config: Any, section: str) -> None:
    """Check every setting of ``config`` against its declared type, range and choices.

    Raises:
        ProtocolError: one line, e.g. ``lost.k_patches must be >= 1, got 0``.
    """
    for field in knob_fields(config):
        meta, value, key = _meta(field), getattr(config, field.name), f"{section}.{field.name}"
        kind = knob_type(type(config), field.name)
        if meta.get("choices") is not None:
            if value not in meta["choices"]:
                raise ProtocolError(f"{key} must be one of {', '.join(meta['choices'])}; got {value!r}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ProtocolError(f"{key} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(f"{key} must be an integer, got {value!r}")
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise ProtocolError(f"{key} must be >= {meta['minimum']}, got {value}")
        elif kind is float:
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if meta.get("positive"):
                if not number or not math.isfinite(value) or not value > 0:
                    raise ProtocolError(f"{key} must be a finite number > 0, got {value!r}")
            elif not number or not math.isfinite(value):
                raise ProtocolError(f"{key} must be a finite number, got {value!r}")
        elif not isinstance(value, kind):
            raise ProtocolError(f"{key} must be {kind.__name__}, got {value!r}")


def knobs_from_mapping(cls: type, values: Mapping[str, Any] | None, section: str, typed: bool = False) -> Any:
    """``cls(**values)``: missing keys take their defaults, unknown keys are an error.

    Args:
        cls: the settings dataclass.
        values: e.g. the ``lost`` section of a config (None = all defaults).
        section: its name in messages.
        typed: also refuse a value of another type than declared (a yaml ``true`` where a number
            belongs); an integer is accepted for a float and converted. Ranges are not checked here.

    Raises:
        ProtocolError: naming ``section.key``.
    """
    values = dict(values or {})
    names = [f.name for f in knob_fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ProtocolError(f"unknown setting {section}.{unknown[0]} (known: {', '.join(sorted(names))})")
    if typed:
        for name, value in values.items():
            kind = knob_type(cls, name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                values[name] = float(value)
            elif isinstance(value, bool) != (kind is bool) or not isinstance(values[name], kind):
                raise ProtocolError(f"'{section}.{name}' must be {kind.__name__}, got {value!r}")
    return cls(**values)


@dataclass(frozen=True)
class FeatureConfig:
    """Which backbone features feed discovery.

    Attributes:
        which: ``q``, ``k`` or ``v`` of block ``layer``'s attention qkv projection (bias included,
            heads concatenated, no scaling), or ``out``: the block's output tokens (the residual
            stream after the block; for the last block, after the model's final norm).
        layer: block index, negative from the end (-1 = last block). Its range depends on the
            backbone and is checked when the backbone is known (:meth:`Backbone.check_feature_key`).
        l2_normalize: divide each patch feature by its L2 norm first (the Gram matrix becomes
            cosine similarities), as in the public-checkpoint protocol of spec section 6.
        pos_embed_antialias: resize the position embeddings to the image's patch grid with
            antialiasing (bicubic to the exact grid size, antialiased: the DINOv2+registers code's
            resize), as the registers paper did for its DINOv2 models (appendix A). Changes DINO
            and plain DINOv2, whose official resize has no antialias; families that already resize
            this way (DINOv2+reg, DeiT-III, CLIP) are unchanged; backbones without a position
            table (DINOv3, pixels) refuse it. Left out of run identities while false.
    """

    which: str = knob("k", "features: q, k or v of the qkv projection, or out (the block's output tokens)",
                      choices=FEATURE_CHOICES)
    layer: int = knob(-1, "block index, negative from the end")
    l2_normalize: bool = knob(False, "L2-normalise each patch feature first (cosine Gram matrix)", short="l2")
    pos_embed_antialias: bool = knob(False, "resize position embeddings with antialiasing (registers paper, "
                                            "appendix A)", short="antialias", omit_at_default=True)

    def validate(self) -> None:
        """Raise :class:`ProtocolError` for a value no backbone accepts."""
        validate_knobs(self, "features")

    @property
    def key(self) -> FeatureKey:
        """The backbone feature set this config asks for."""
        return FeatureKey(self.which, self.layer)  # type: ignore[arg-type]


def omitted_at_default(field: dataclasses.Field) -> bool:
    """Whether a setting is left out of run identities (and sweep columns) while at its default."""
    return bool(_meta(field).get("omit_at_default"))
