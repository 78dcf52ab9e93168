"""The discovery protocol, defined once: which features feed the method, and the method's knobs.

Everything that decides a box besides the image, the backbone and its weights is here:
``method`` (a registered discovery method, :mod:`lostreg.methods`), ``features``
(:class:`~lostreg.knobs.FeatureConfig`: q, k or v of which block, L2-normalised or not) and one
settings section per registered method (``lost``: :class:`~lostreg.methods.lost.LostConfig`,
``tokencut``: :class:`~lostreg.methods.tokencut.TokenCutConfig`, ...), whose field defaults are
THE defaults of lostreg (the LOST paper's protocol: raw keys of the last block, k = 100, no Gram
bias). Beside ``method`` and the sections, one protocol-level setting: ``objects``, how many
objects per image (1, the published single-object protocol, unless set; see :data:`OBJECTS_HELP`).

The hydra schema (:mod:`lostreg.config`), the argparse flags of every command
(:func:`lostreg.cli.common.protocol_parent_parser`), the sweep axes, the run-directory names, the
comparison table and the published-number matching all read these declarations; none repeats a
default, and none names a method: what differs between methods is in their registrations.

This module imports nothing heavy (no torch), so light commands can use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

from lostreg.knobs import (
    FEATURE_CHOICES,
    FEATURE_KINDS,
    OUTPUT_NORMS,
    OUTPUT_TOKENS,
    PRECISIONS,
    FeatureConfig,
    FeatureKey,
    FeatureKind,
    ProtocolError,
    RopeMode,
    identity_of,
    knob_fields,
    knob_label,
    knobs_from_mapping,
)
from lostreg.methods import DEFAULT_METHOD, MethodSpec, get_method, method_names, registered_methods
from lostreg.methods.lost import LostConfig
from lostreg.methods.tokencut import EIG_SOLVERS, TokenCutConfig

__all__ = [
    "DEFAULT_OBJECTS",
    "EIG_SOLVERS",
    "FEATURE_CHOICES",
    "FEATURE_KINDS",
    "METHODS",
    "OUTPUT_NORMS",
    "OUTPUT_TOKENS",
    "PRECISIONS",
    "DiscoveryProtocol",
    "FeatureConfig",
    "FeatureKey",
    "FeatureKind",
    "LostConfig",
    "OBJECTS_HELP",
    "ProtocolError",
    "RopeMode",
    "TokenCutConfig",
    "describe_protocol",
]

#: Objects per image of the default protocol: one, as every published number (``objects=``, ``--objects``).
DEFAULT_OBJECTS = 1
#: What ``objects`` does, for ``--help`` and docs. A protocol-level setting rather than a knob of each
#: method: setting names are flat (sweep axes, flags) and unique across methods, and both methods
#: share it; it is not a feature setting either (docs/methods.md, "Several objects per image").
OBJECTS_HELP = ("objects per image: after each object the method goes on without its patches (LOST: they no "
                "longer seed or expand; TokenCut: they leave the graph, MaskCut's rule), up to this many or until "
                f"nothing distinct is left (default {DEFAULT_OBJECTS}: the published single-object protocol)")


def __getattr__(name: str) -> Any:
    # METHODS follows the registry (a method registered at run time is listed too).
    if name == "METHODS":
        return method_names()
    raise AttributeError(f"module 'lostreg.protocol' has no attribute {name!r}")


class DiscoveryProtocol:
    """Everything that turns backbone features into a box: the method, its features and its knobs.

    ``DiscoveryProtocol(method="tokencut", features=FeatureConfig("q"), tokencut=TokenCutConfig(tau=0.3))``:
    one keyword per registered method holds that method's settings (missing ones take their
    defaults). Each method reads its own section; the others' are kept but play no part (and are
    left out of names, identities and comparisons). ``objects`` (keyword only) is how many objects
    per image the method looks for. Immutable, hashable, compared by value.
    """

    __slots__ = ("_method", "_features", "_sections", "_objects")

    def __init__(self, method: str = DEFAULT_METHOD, features: FeatureConfig | None = None, *,
                 objects: int = DEFAULT_OBJECTS, **sections: Any) -> None:
        specs = registered_methods()
        unknown = sorted(set(sections) - set(specs))
        if unknown:
            raise TypeError(f"DiscoveryProtocol got settings of unknown method(s) {unknown}; "
                            f"registered: {', '.join(specs)}")
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_features", FeatureConfig() if features is None else features)
        object.__setattr__(self, "_sections", {name: sections.get(name) or spec.config()
                                               for name, spec in specs.items()})
        object.__setattr__(self, "_objects", objects)

    # -- fields --------------------------------------------------------------------------

    @property
    def method(self) -> str:
        """The discovery method's registered name (``lost``, ``tokencut``)."""
        return self._method

    @property
    def features(self) -> FeatureConfig:
        """Which backbone features feed the method."""
        return self._features

    @property
    def objects(self) -> int:
        """The most objects per image (1: the published single-object protocol)."""
        return self._objects

    @property
    def spec(self) -> MethodSpec:
        """The method's registration (raises ``UnknownNameError`` for an unregistered name)."""
        return get_method(self._method)

    @property
    def method_knobs(self) -> Any:
        """The chosen method's settings (e.g. a :class:`LostConfig`)."""
        return self.section(self._method)

    def section(self, name: str) -> Any:
        """The settings of method ``name`` held by this protocol."""
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no settings section {name!r}") from None

    def sections(self) -> Iterator[tuple[str, Any]]:
        """``(method name, its settings)`` for every registered method, registration order."""
        return iter(self._sections.items())

    def __getattr__(self, name: str) -> Any:
        # protocol.lost, protocol.tokencut: a method's section under the method's name.
        if name.startswith("_"):
            raise AttributeError(name)
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        raise AttributeError(f"'DiscoveryProtocol' has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def _key(self) -> tuple[Any, ...]:
        return (self._method, self._features, tuple(sorted(self._sections.items())), self._objects)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiscoveryProtocol) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        sections = ", ".join(f"{name}={config!r}" for name, config in self._sections.items())
        objects = "" if self._objects == DEFAULT_OBJECTS else f", objects={self._objects!r}"
        return f"DiscoveryProtocol(method={self._method!r}, features={self._features!r}{objects}, {sections})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._method, self._features, dict(self._sections), self._objects))

    def replace(self, method: str | None = None, features: FeatureConfig | None = None,
                objects: int | None = None, **sections: Any) -> "DiscoveryProtocol":
        """A copy with some fields replaced (``protocol.replace(features=..., lost=...)``)."""
        merged = {**self._sections, **sections}
        return DiscoveryProtocol(self._method if method is None else method,
                                 self._features if features is None else features,
                                 objects=self._objects if objects is None else objects, **merged)

    def with_knobs(self, features: Mapping[str, Any] | None = None,
                   knobs: Mapping[str, Any] | None = None) -> "DiscoveryProtocol":
        """A copy with some feature settings and some of the chosen method's settings changed, by name."""
        features_new = dataclasses.replace(self._features, **dict(features or {}))
        knobs_new = dataclasses.replace(self.method_knobs, **dict(knobs or {}))
        return self.replace(features=features_new, **{self._method: knobs_new})

    # -- checks and conversions ----------------------------------------------------------

    def validate(self) -> "DiscoveryProtocol":
        """Check every value; return ``self`` so calls chain.

        Raises:
            ProtocolError: one line naming the setting and the allowed values.
        """
        if self._method not in registered_methods():
            raise ProtocolError(f"method must be one of {', '.join(method_names())}; got {self._method!r}")
        self._features.validate()
        for config in self._sections.values():
            config.validate()
        if isinstance(self._objects, bool) or not isinstance(self._objects, int) or self._objects < 1:
            raise ProtocolError(f"objects must be an integer >= 1, got {self._objects!r}")
        if self._objects > 1 and not self.spec.finds_several:
            raise ProtocolError(f"objects={self._objects}: method {self._method} finds one object per image")
        return self

    def knobs(self) -> dict[str, Any]:
        """The chosen method's own knobs, e.g. ``{"k_patches": 100, "gram_bias": 0.0, ...}`` for LOST."""
        return dataclasses.asdict(self.method_knobs)

    def identity(self) -> dict[str, Any]:
        """What can change a box: the method, the features and the chosen method's knobs only.

        Knobs declared ``omit_at_default`` (added after run directories existed, e.g.
        ``exclude_outliers``, ``features.pos_embed_antialias``) are left out at their default, so those
        directories keep their identity; so is ``objects`` at 1.
        """
        identity = {"method": self._method, "features": identity_of(self._features),
                    self._method: identity_of(self.method_knobs)}
        return identity | self._objects_entry()

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (``{"method", "features": {...}, "lost": {...}, ...}``) for JSON summaries
        (``objects`` only when not 1)."""
        # Feature settings newer than run directories stay out at their default, as in identity().
        return {"method": self._method, "features": identity_of(self._features),
                **{name: dataclasses.asdict(config) for name, config in self._sections.items()},
                **self._objects_entry()}

    def _objects_entry(self) -> dict[str, int]:
        # Left out at one object: files and identities of versions before the setting stay as they were.
        return {} if self._objects == DEFAULT_OBJECTS else {"objects": self._objects}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], typed: bool = False) -> "DiscoveryProtocol":
        """Build from a mapping shaped like the eval config (``method``, ``features``, ``lost``, ...).

        Missing sections or keys take the defaults (older run directories lack ``method``,
        ``features.l2_normalize`` and the ``tokencut`` section); unknown keys are an error.
        Values are not range-checked here (:meth:`validate` does).

        Args:
            data: the config (other keys are ignored).
            typed: refuse values of another type than declared (reading a run directory's file).

        Raises:
            ProtocolError: an unknown key, or (``typed``) a mistyped value.
        """
        features = knobs_from_mapping(FeatureConfig, data.get("features"), "features", typed)
        sections = {name: knobs_from_mapping(spec.config, data.get(name), name, typed)
                    for name, spec in registered_methods().items()}
        objects = data.get("objects", DEFAULT_OBJECTS)
        if objects is None:
            objects = DEFAULT_OBJECTS
        if typed and (isinstance(objects, bool) or not isinstance(objects, int)):
            raise ProtocolError(f"'objects' must be int, got {objects!r}")
        return cls(method=str(data.get("method", DEFAULT_METHOD)), features=features, objects=objects, **sections)

    # -- words -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Directory-name form, e.g. ``k_layer-1_k100_bias0.0`` (``_l2`` appended when normalised,
        ``_aa`` with antialiased position embeddings).

        Each method names itself (:attr:`MethodSpec.dir_name`); LOST keeps the form of the first
        lostreg versions, so their run directories are found again by the same command.
        """
        name = (self.spec.dir_name(self._features, self.method_knobs) + ("_l2" if self._features.l2_normalize else "")
                + ("_aa" if self._features.pos_embed_antialias else ""))
        return name + ("" if self._objects == DEFAULT_OBJECTS else f"_obj{self._objects}")

    def departures(self) -> list[str]:
        """How this protocol differs from its method's defaults, e.g. ``["which=q", "layer=-2", "k=50"]``.

        Order: the method (when not the default one), the features' which and layer, the method's
        knobs, then ``l2``, then ``objects=N``. Booleans are named alone (``exclude_outliers``),
        floats with ``:g``.
        """
        parts = [] if self._method == DEFAULT_METHOD else [f"method={self._method}"]
        default_features = FeatureConfig()
        feature_parts = _changed(self._features, default_features)
        parts += [p for p in feature_parts if p != knob_label(_field(FeatureConfig, "l2_normalize"))]
        parts += _changed(self.method_knobs, self.spec.config())
        parts += [p for p in feature_parts if p == knob_label(_field(FeatureConfig, "l2_normalize"))]
        return parts + [f"{key}={value}" for key, value in self._objects_entry().items()]


def _rebuild(method: str, features: FeatureConfig, sections: dict[str, Any],
             objects: int = DEFAULT_OBJECTS) -> DiscoveryProtocol:
    return DiscoveryProtocol(method, features, objects=objects,
                             **{k: v for k, v in sections.items() if k in registered_methods()})


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in knob_fields(cls) if f.name == name)


def _changed(config: Any, default: Any) -> list[str]:
    """``["k=50", "exclude_outliers"]``: the settings of ``config`` that differ from ``default``."""
    parts = []
    for f in knob_fields(config):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        label = knob_label(f)
        if isinstance(value, bool):
            parts.append(label)
        elif isinstance(value, float):
            parts.append(f"{label}={value:g}")
        else:
            parts.append(f"{label}={value}")
    return parts


_KIND_WORDS = {"q": "queries", "k": "keys", "v": "values", OUTPUT_TOKENS: "output tokens"}


def describe_features(features: FeatureConfig) -> str:
    """The features in words, e.g. ``raw keys of the last layer``."""
    layer = "the last layer" if features.layer == -1 else f"layer {features.layer}"
    text = f"{'L2-normalised' if features.l2_normalize else 'raw'} {_KIND_WORDS.get(features.which, features.which)} " \
           f"of {layer}"
    return text + (" (antialiased position embeddings)" if features.pos_embed_antialias else "")


def describe_protocol(protocol: DiscoveryProtocol) -> str:
    """The protocol in words, e.g. ``raw keys of the last layer, k=100, Gram bias 0`` (``, up to 3 objects
    per image`` when it asks for several)."""
    text = protocol.spec.describe(describe_features(protocol.features), protocol.method_knobs)
    return text + ("" if protocol.objects == DEFAULT_OBJECTS else f", up to {protocol.objects} objects per image")
