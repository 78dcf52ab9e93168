"""Register-neuron files: which MLP units of which blocks a test-time register takes over.

A file is JSON, written by :meth:`RegisterNeurons.save` (``lostreg calibrate`` writes one)::

    {
      "format": "lostreg-register-neurons",
      "version": 1,
      "backbone": "dinov2_vits14",                  # lostreg name of the model calibrated
      "timm_id": "vit_small_patch14_dinov2.lvd142m",
      "architecture": {"depth": 12, "embed_dim": 384, "mlp_hidden_dim": 1536, "mlp": "gelu"},
      "weights_sha256": "9f2c...",                  # weights_sha256(model); null = not checked
      "random_weights": false,
      "calibration": {...},                         # settings and counts; null for hand-made lists
      "selection": {"top_k": 50, "highest_layer": 17, "lowest_layer": null},
      "note": null,                                 # free text, e.g. where a list comes from
      "units": [
        {"layer": 17, "unit": 884, "score": 29.4},  # block index from 0, hidden unit from 0
        ...                                         # highest score first
      ]
    }

``layer`` is a block index from 0 and ``unit`` an index into that block's MLP hidden activation
(the input of ``fc2``, see :mod:`lostreg.backbones.edits`). ``score`` is the calibration score (mean
|activation| over outlier tokens) or null for a list typed in by hand.

A file is tied to one model: :meth:`RegisterNeurons.check_matches` refuses another backbone,
another architecture, or other weights (when the file records a hash), with one line that names
the file and the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from lostreg.errors import LostregError
from lostreg.io.atomic import atomic_write_text
from lostreg.backbones.edits import mlp_hidden_dim, mlp_kind

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones.timm_base import TimmBackbone

FORMAT = "lostreg-register-neurons"
VERSION = 1
#: Significant digits kept for scores in files (float32 carries about 7).
SCORE_DIGITS = 7


class NeuronFileError(LostregError, ValueError):
    """A register-neuron file that cannot be read, is malformed, or belongs to another model.

    Its message is one line that starts with the file's path.
    """


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict: every tensor's name, dtype, shape and raw bytes.

    Tensors are taken in sorted-name order, so the hash does not depend on registration order,
    and each is hashed from its raw bytes (any dtype, bf16 included) without a float
    round-trip. One pass over the bytes (hashlib's SHA-256 runs at about 1 GB/s on a current CPU:
    about a second for ViT-L/14's 1.2 GB in float32); tensors on a GPU are copied one at a time.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0{tensor.numel()}\0"
        digest.update(header.encode())
        if tensor.numel():
            raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw.numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a neuron file is valid for.

    Attributes:
        backbone: lostreg backbone name (``dinov2_vitl14``), or the timm name for ad-hoc ViTs.
        timm_id: tagged timm model name, or None.
        depth: number of blocks.
        embed_dim: token width D.
        mlp_hidden_dim: MLP hidden width H (units are indices below it).
        mlp: ``gelu``, ``glu`` or ``swiglu`` (see :func:`lostreg.backbones.edits.mlp_kind`).
        weights_sha256: :func:`weights_sha256` of the weights, or None when unknown.
        random_weights: the weights were random (a test file).
    """

    backbone: str
    timm_id: str | None
    depth: int
    embed_dim: int
    mlp_hidden_dim: int
    mlp: str
    weights_sha256: str | None = None
    random_weights: bool = False

    @classmethod
    def of(cls, backbone: "TimmBackbone", with_hash: bool = True) -> "ModelIdentity":
        """The identity of ``backbone`` (hashing its weights when ``with_hash``)."""
        blocks = backbone.model.blocks
        return cls(
            backbone=backbone.name,
            timm_id=backbone.spec.timm_name,
            depth=len(blocks),
            embed_dim=int(backbone.model.embed_dim),
            mlp_hidden_dim=mlp_hidden_dim(blocks[0]),
            mlp=mlp_kind(blocks[0]),
            weights_sha256=weights_sha256(backbone.model) if with_hash else None,
            random_weights=backbone.is_random,
        )


@dataclass(frozen=True)
class RegisterUnit:
    """One register neuron: hidden unit ``unit`` of block ``layer`` (both from 0)."""

    layer: int
    unit: int
    score: float | None = None


@dataclass(frozen=True)
class RegisterNeurons:
    """A register-neuron list and what it was made for.

    Attributes:
        model: the model the list belongs to.
        units: the neurons, highest score first (file order).
        selection: ``top_k``, ``highest_layer``, ``lowest_layer`` used to cut the ranking.
        calibration: how the list was found (see :func:`lostreg.ttreg.finder.calibrate`), or
            None for a list made by hand.
        note: free text (e.g. the source of a published list).
    """

    model: ModelIdentity
    units: tuple[RegisterUnit, ...]
    selection: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        _check_units(self.units, self.model, where="register neurons")

    @property
    def layers(self) -> tuple[int, ...]:
        """Blocks with at least one unit, ascending."""
        return tuple(sorted({u.layer for u in self.units}))

    def layer_units(self) -> dict[int, tuple[int, ...]]:
        """``{layer: units ascending}`` for every layer with units, layers ascending."""
        out: dict[int, list[int]] = {}
        for u in self.units:
            out.setdefault(u.layer, []).append(u.unit)
        return {layer: tuple(sorted(out[layer])) for layer in sorted(out)}

    @classmethod
    def from_layer_units(
        cls,
        backbone: "TimmBackbone",
        layer_units: Mapping[int, Sequence[int]],
        note: str | None = None,
        with_hash: bool = False,
    ) -> "RegisterNeurons":
        """A hand-made list ``{layer: [unit, ...]}`` (e.g. a published one) for ``backbone``.

        Units keep the given order (layers in the given order); scores are None. Without
        ``with_hash`` the file carries no weights hash, so it applies to any weights of this
        architecture (a published list belongs to the pretrained weights, which may not be here).
        """
        units = tuple(RegisterUnit(int(layer), int(unit)) for layer, us in layer_units.items() for unit in us)
        return cls(ModelIdentity.of(backbone, with_hash=with_hash), units, note=note)

    # --- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The file's content as plain JSON types (see the module docstring)."""
        m = self.model
        return {
            "format": FORMAT,
            "version": VERSION,
            "backbone": m.backbone,
            "timm_id": m.timm_id,
            "architecture": {"depth": m.depth, "embed_dim": m.embed_dim, "mlp_hidden_dim": m.mlp_hidden_dim,
                             "mlp": m.mlp},
            "weights_sha256": m.weights_sha256,
            "random_weights": m.random_weights,
            "calibration": None if self.calibration is None else dict(self.calibration),
            "selection": dict(self.selection),
            "note": self.note,
            "units": [{"layer": u.layer, "unit": u.unit, "score": _round_score(u.score)} for u in self.units],
        }

    def dumps(self) -> str:
        """The file's text: indented JSON with one line per unit, newline-terminated.

        Deterministic: the same object always gives the same bytes (no timestamps).
        """
        payload = self.to_json()
        units = payload.pop("units")
        head = json.dumps(payload, indent=2, ensure_ascii=False)
        lines = ",\n".join("    " + json.dumps(u) for u in units)
        return head[:-2] + ',\n  "units": [\n' + lines + "\n  ]\n}\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`dumps` to ``path`` atomically (a temporary file, then a rename)."""
        return atomic_write_text(path, self.dumps())

    @classmethod
    def from_json(cls, data: Any, source: str = "<json>") -> "RegisterNeurons":
        """Validate and parse a file's content; ``source`` names it in errors.

        Raises:
            NeuronFileError: one line, ``"<source>: <what is wrong>"``.
        """

        def fail(message: str) -> NeuronFileError:
            return NeuronFileError(f"{source}: {message}")

        if not isinstance(data, dict):
            raise fail("not a register-neuron file (expected a JSON object)")
        if data.get("format") != FORMAT:
            raise fail(f"not a register-neuron file (format is {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != VERSION:
            raise fail(f"unsupported version {data.get('version')!r} (this lostreg reads version {VERSION})")
        arch = data.get("architecture")
        if not isinstance(arch, dict):
            raise fail("'architecture' must be an object")
        try:
            model = ModelIdentity(
                backbone=_typed(data, "backbone", str),
                timm_id=_typed(data, "timm_id", str, optional=True),
                depth=_typed(arch, "depth", int),
                embed_dim=_typed(arch, "embed_dim", int),
                mlp_hidden_dim=_typed(arch, "mlp_hidden_dim", int),
                mlp=_typed(arch, "mlp", str),
                weights_sha256=_typed(data, "weights_sha256", str, optional=True),
                random_weights=_typed(data, "random_weights", bool),
            )
            if model.weights_sha256 is not None and (
                len(model.weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in model.weights_sha256)
            ):
                raise ValueError("'weights_sha256' must be 64 lowercase hex digits or null")
            raw_units = data.get("units")
            if not isinstance(raw_units, list) or not raw_units:
                raise ValueError("'units' must be a non-empty list")
            units = []
            for i, item in enumerate(raw_units):
                if not isinstance(item, dict):
                    raise ValueError(f"units[{i}] must be an object with layer, unit, score")
                score = item.get("score")
                if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                          or not math.isfinite(score)):
                    raise ValueError(f"units[{i}].score must be a finite number or null")
                units.append(RegisterUnit(_typed(item, "layer", int, where=f"units[{i}]"),
                                          _typed(item, "unit", int, where=f"units[{i}]"),
                                          None if score is None else float(score)))
            calibration = data.get("calibration")
            if calibration is not None and not isinstance(calibration, dict):
                raise ValueError("'calibration' must be an object or null")
            selection = data.get("selection", {})
            if not isinstance(selection, dict):
                raise ValueError("'selection' must be an object")
            note = _typed(data, "note", str, optional=True)
            _check_units(units, model, where="units")
        except ValueError as err:
            raise fail(str(err)) from None
        return cls(model, tuple(units), selection=selection, calibration=calibration, note=note)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "RegisterNeurons":
        """Read and validate a file written by :meth:`save`.

        Raises:
            NeuronFileError: missing, not JSON, malformed (one line naming the file).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NeuronFileError(f"{path}: no such register-neuron file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise NeuronFileError(f"{path}: cannot read ({err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise NeuronFileError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_json(data, source=str(path))

    # --- matching a model ---------------------------------------------------------------------

    def check_matches(self, backbone: "TimmBackbone", source: str = "register neurons",
                      check_weights: bool = True) -> None:
        """Refuse to run with a backbone the list was not made for.

        Checked in order: backbone name, architecture (depth, width, MLP type and hidden width),
        then, when the file records a hash and ``check_weights`` is True, the weights' hash.

        Raises:
            NeuronFileError: ``"<source>: <mismatch>"`` on one line.
        """
        mine = self.model
        other = ModelIdentity.of(backbone, with_hash=False)
        if mine.backbone != other.backbone:
            raise NeuronFileError(
                f"{source}: made for backbone {mine.backbone} ({mine.timm_id}), not {other.backbone} "
                f"({other.timm_id}); calibrate this backbone with 'lostreg calibrate'"
            )
        for attr in ("depth", "embed_dim", "mlp", "mlp_hidden_dim"):
            if getattr(mine, attr) != getattr(other, attr):
                raise NeuronFileError(
                    f"{source}: made for a model with {attr}={getattr(mine, attr)}, but {other.backbone} "
                    f"here has {attr}={getattr(other, attr)}"
                )
        if check_weights and mine.weights_sha256 is not None:
            here = weights_sha256(backbone.model)
            if here != mine.weights_sha256:
                kind = "random" if mine.random_weights else "other"
                raise NeuronFileError(
                    f"{source}: calibrated on {kind} weights of {mine.backbone} (sha256 {mine.weights_sha256[:12]}...), "
                    f"these weights have sha256 {here[:12]}...; calibrate again for these weights"
                )


def _round_score(score: float | None) -> float | None:
    return None if score is None else float(f"{score:.{SCORE_DIGITS}g}")


def _typed(data: Mapping[str, Any], key: str, kind: type, optional: bool = False, where: str = "") -> Any:
    """``data[key]`` checked to be of ``kind`` (bool is not an int here)."""
    name = f"{where}.{key}" if where else key
    if key not in data:
        if optional:
            return None
        raise ValueError(f"missing '{name}'")
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"'{name}' must be {kind.__name__}{' or null' if optional else ''}, got {value!r}")
    return value


def _check_units(units: Sequence[RegisterUnit], model: ModelIdentity, where: str) -> None:
    """Units inside the architecture, no duplicates, scores (when present) never increasing."""
    if not units:
        raise ValueError(f"{where}: no units")
    seen: set[tuple[int, int]] = set()
    previous: float | None = None
    for i, u in enumerate(units):
        if not 0 <= u.layer < model.depth:
            raise ValueError(f"{where}[{i}]: layer {u.layer} outside the model's blocks 0..{model.depth - 1}")
        if not 0 <= u.unit < model.mlp_hidden_dim:
            raise ValueError(f"{where}[{i}]: unit {u.unit} outside the MLP hidden units 0..{model.mlp_hidden_dim - 1}")
        if (u.layer, u.unit) in seen:
            raise ValueError(f"{where}[{i}]: (layer {u.layer}, unit {u.unit}) listed twice")
        seen.add((u.layer, u.unit))
        if u.score is not None:
            if previous is not None and u.score > previous:
                raise ValueError(f"{where}[{i}]: scores must be in descending order")
            previous = u.score


__all__ = [
    "FORMAT",
    "VERSION",
    "ModelIdentity",
    "NeuronFileError",
    "RegisterNeurons",
    "RegisterUnit",
    "weights_sha256",
]
