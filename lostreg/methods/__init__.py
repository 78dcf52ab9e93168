"""The discovery-method registry: every method lostreg runs, with everything the rest of lostreg asks of it.

A method is one :class:`MethodSpec`, registered once (:func:`register_method`):

* ``config``: its frozen settings dataclass, fields made with :func:`lostreg.knobs.knob` (defaults,
  help, ranges). The hydra schema (``lost.k_patches=...``), the command-line flags
  (``--k-patches``), the sweep axes (``sweep.k_patches=[...]``), the run identity and the table
  columns are derived from it.
* ``run``: ``run(config, features, grid_hw, extras) -> results``, the method batched on the
  features' device: features (B, rows*cols, D) float32 row-major, prefix tokens dropped; extras the
  other feature sets it asked for (:attr:`MethodSpec.extra_keys`). Each result has ``seed`` (flat
  row-major patch index), ``seed_rc``, ``mask`` ((rows, cols) bool) and ``box`` (patch units,
  ``(x1, y1, x2, y2)``, max exclusive). Given as a callable, or as ``"module:function"`` imported on
  first use, so that this registry (and ``lostreg --help``) never imports torch.
* ``extra_keys(config)``: feature sets besides the protocol's own (artifact-aware LOST needs
  :data:`~lostreg.knobs.OUTPUT_NORMS`).
* ``memory_bytes(config, patches, batch)``: the method's peak for a batch (:mod:`lostreg.memory`).
* ``record_fields(result)``: what a prediction line adds for this method (TokenCut's ``degenerate``).
* ``confidence(result)``: the method's confidence in a result (a float, higher = more confident),
  or None when the method has none: every box then ties (score 1.0 in exports).
* ``run_objects``: ``run_objects(config, features, grid_hw, extras, objects) -> per image, a list
  of results in discovery order``, the several-object rule (the first result of each image is
  ``run``'s); None when the method finds one object per image (``objects > 1`` is then refused).
* ``dir_name(features, config)`` and ``describe(config)``: its run-directory name and its words.

The built-in methods (:mod:`lostreg.methods.lost`, :mod:`lostreg.methods.tokencut`) register on
first lookup. A third method is one module with its config and a ``register_method`` call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from lostreg.errors import UnknownNameError
from lostreg.knobs import FeatureConfig, FeatureKey, knob_fields

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "BUILTIN_METHOD_MODULES",
    "DEFAULT_METHOD",
    "MethodResult",
    "MethodSpec",
    "find_objects",
    "get_method",
    "method_label",
    "method_names",
    "register_method",
    "registered_methods",
    "run_method",
    "unregister_method",
]

#: Modules whose import registers the built-in methods (loaded on the first lookup).
BUILTIN_METHOD_MODULES = ("lostreg.methods.lost", "lostreg.methods.tokencut")
#: The method of lostreg's default protocol (the LOST paper's).
DEFAULT_METHOD = "lost"

class MethodResult(Protocol):
    """What every method returns per image (e.g. :class:`lostreg.lost.LostResult`); tensors on the CPU.

    Attributes:
        seed: flat row-major index of the seed patch in ``[0, rows*cols)``.
        seed_rc: ``(row, col)`` of the seed.
        mask: (rows, cols) bool, the object's patches.
        box: ``(x1, y1, x2, y2)`` in patch units (columns then rows), max exclusive.
    """

    seed: int
    mask: "torch.Tensor"
    box: tuple[int, int, int, int]

    @property
    def seed_rc(self) -> tuple[int, int]: ...


RunFunction = Callable[[Any, "torch.Tensor", tuple[int, int], Mapping[FeatureKey, "torch.Tensor"]], Sequence[MethodResult]]
#: ``(config, features, grid_hw, extras, objects) -> per image, its results in discovery order``.
RunObjectsFunction = Callable[[Any, "torch.Tensor", tuple[int, int], Mapping[FeatureKey, "torch.Tensor"], int],
                              Sequence[Sequence[MethodResult]]]


def _no_extra_keys(config: Any) -> tuple[FeatureKey, ...]:
    return ()


def _no_record_fields(result: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class MethodSpec:
    """One discovery method (see the module docstring).

    Attributes:
        name: ``method=`` in configs, ``--method`` on the command line, the config section name.
        label: how tables name it (``LOST``).
        config: the settings dataclass (fields made with :func:`lostreg.knobs.knob`).
        run: the batched run function, or ``"module:function"``.
        memory_bytes: ``(config, patches, batch) -> bytes`` of the method's peak.
        dir_name: ``(features, config) -> str``, the run-directory name of a protocol.
        describe: ``(config) -> str``, the knobs in words (``k=100, Gram bias 0``).
        table_knobs: knobs a sweep table always shows, in table (and grid) order; the others get a
            column only when a sweep varies them.
        extra_keys: ``config -> feature keys`` the method needs besides the protocol's features.
        record_fields: ``result -> dict`` added to each prediction line.
        summary: one sentence for ``--help`` and docs.
        confidence: ``result -> float``, the method's confidence in one result (higher = more
            confident); None: the method has none.
        run_objects: the several-object run function (or ``"module:function"``), None when the
            method finds one object per image.
    """

    name: str
    label: str
    config: type
    run: RunFunction | str
    memory_bytes: Callable[[Any, int, int], int]
    dir_name: Callable[[FeatureConfig, Any], str]
    describe: Callable[[Any], str]
    table_knobs: tuple[str, ...] = ()
    extra_keys: Callable[[Any], tuple[FeatureKey, ...]] = _no_extra_keys
    record_fields: Callable[[Any], dict[str, Any]] = _no_record_fields
    summary: str = ""
    confidence: Callable[[Any], float] | None = None
    run_objects: RunObjectsFunction | str | None = None
    _resolved: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def run_function(self) -> RunFunction:
        """:attr:`run`, imported on first use when given as ``"module:function"``."""
        return self._resolve("run")

    def run_objects_function(self) -> RunObjectsFunction:
        """:attr:`run_objects`, imported on first use (ValueError when the method has none)."""
        if self.run_objects is None:
            raise ValueError(f"discovery method {self.name!r} finds one object per image")
        return self._resolve("run_objects")

    @property
    def finds_several(self) -> bool:
        """Whether the method can find several objects per image (:attr:`run_objects`)."""
        return self.run_objects is not None

    def _resolve(self, attribute: str) -> Any:
        target = getattr(self, attribute)
        if callable(target):
            return target
        if attribute not in self._resolved:
            module, _, name = target.partition(":")
            self._resolved[attribute] = getattr(importlib.import_module(module), name)
        return self._resolved[attribute]

    def knob_names(self) -> tuple[str, ...]:
        """The method's settings, in declaration order."""
        return tuple(f.name for f in knob_fields(self.config))


_METHODS: dict[str, MethodSpec] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_METHOD_MODULES:
            importlib.import_module(module)


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method. Its settings' names must be new: sweep axes and flags are flat (``sweep.tau``).

    Raises:
        ValueError: the name, or one of its settings' names, is taken (a programming error).
    """
    if spec.name in _METHODS:
        raise ValueError(f"discovery method {spec.name!r} is already registered")
    taken = {f.name for f in knob_fields(FeatureConfig)} | {"method"}
    for other in _METHODS.values():
        taken |= set(other.knob_names())
    clash = sorted(set(spec.knob_names()) & taken)
    if clash:
        raise ValueError(f"discovery method {spec.name!r}: setting name(s) {clash} already used by another section")
    unknown = sorted(set(spec.table_knobs) - set(spec.knob_names()))
    if unknown:
        raise ValueError(f"discovery method {spec.name!r}: table_knobs {unknown} are not its settings")
    _METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method registered at run time (tests); built-in methods stay."""
    if name in (m.rsplit(".", 1)[-1] for m in BUILTIN_METHOD_MODULES):
        raise ValueError(f"{name!r} is a built-in method")
    _METHODS.pop(name, None)


def registered_methods() -> dict[str, MethodSpec]:
    """Every registered method by name, built-ins first."""
    _load_builtins()
    return dict(_METHODS)


def method_names() -> tuple[str, ...]:
    """Names of the registered methods (``lost``, ``tokencut``, ...)."""
    return tuple(registered_methods())


def method_label(name: str) -> str:
    """How tables and figures name a method (``LOST``, ``TokenCut``); an unregistered name as given."""
    methods = registered_methods()
    return methods[name].label if name in methods else name


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        UnknownNameError: one line listing the known methods.
    """
    methods = registered_methods()
    if name not in methods:
        raise UnknownNameError(f"method must be one of {', '.join(methods)}; got {name!r}")
    return methods[name]


def run_method(protocol: Any, features: "torch.Tensor", grid_hw: tuple[int, int],
               extras: Mapping[FeatureKey, "torch.Tensor"] | "torch.Tensor | None" = None) -> list[MethodResult]:
    """Run ``protocol.method`` on a batch of same-grid images.

    Args:
        protocol: a :class:`~lostreg.protocol.DiscoveryProtocol` (features already selected and
            normalised by the caller).
        features: (B, rows*cols, D) float patch features, row-major, prefix tokens dropped.
        grid_hw: ``(rows, cols)`` shared by the batch.
        extras: the other feature sets the method asked for (:attr:`MethodSpec.extra_keys`), by
            key; a bare tensor is taken as :data:`~lostreg.knobs.OUTPUT_NORMS` ((B, rows*cols, 1)).

    Returns:
        One result per image, in batch order.
    """
    spec = get_method(protocol.method)
    return list(spec.run_function()(protocol.method_knobs, features, grid_hw, _extras(extras)))


def _extras(extras: Mapping[FeatureKey, "torch.Tensor"] | "torch.Tensor | None") -> Mapping[FeatureKey, "torch.Tensor"]:
    """The extra feature sets by key; a bare tensor is :data:`~lostreg.knobs.OUTPUT_NORMS`."""
    from lostreg.knobs import OUTPUT_NORMS

    if extras is None:
        return {}
    if not isinstance(extras, Mapping):
        return {OUTPUT_NORMS: extras}
    return extras


def find_objects(protocol: Any, features: "torch.Tensor", grid_hw: tuple[int, int],
                 extras: Mapping[FeatureKey, "torch.Tensor"] | "torch.Tensor | None" = None
                 ) -> list[list[MethodResult]]:
    """Up to ``protocol.objects`` objects per image of a batch of same-grid images.

    With one object (the default) this is :func:`run_method`, each result alone in its list, so
    the single-object protocol runs exactly the code it always ran. With more, the method's
    :attr:`MethodSpec.run_objects` (its first result per image is :func:`run_method`'s).

    Args:
        protocol, features, grid_hw, extras: as :func:`run_method`.

    Returns:
        Per image, in batch order, its results in discovery order (at least one).
    """
    if protocol.objects == 1:
        return [[result] for result in run_method(protocol, features, grid_hw, extras)]
    spec = get_method(protocol.method)
    return [list(found) for found in spec.run_objects_function()(protocol.method_knobs, features, grid_hw,
                                                                 _extras(extras), protocol.objects)]
