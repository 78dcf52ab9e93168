"""What the sub-commands share: the error printer, user-error types, the protocol flags, loud builds.

Kept light: importing this module imports neither torch nor timm (``lostreg --help`` must answer
at once); the heavy parts are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lostreg.errors import LostregError, debug_enabled
from lostreg.knobs import FeatureConfig, ProtocolError, flag_of, knob_choices, knob_fields, knob_help, knob_type
from lostreg.methods import DEFAULT_METHOD, registered_methods
from lostreg.protocol import DEFAULT_OBJECTS, OBJECTS_HELP, PRECISIONS, DiscoveryProtocol

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones import Backbone

#: Longer-side limit of user images for discover / inspect / export --images (0 = native).
DEFAULT_MAX_SIZE = 1024

def error(message: object) -> None:
    """Print ``lostreg: error: <message>`` on stderr (through tqdm when loaded, so bars stay intact)."""
    text = f"lostreg: error: {message}"
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        tqdm.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def report_user_error(err: BaseException, text: str | None = None) -> None:
    """A user error as one ``lostreg: error:`` line (``text``, default ``str(err)``); with ``--debug`` /
    ``LOSTREG_DEBUG=1`` its traceback first."""
    if debug_enabled():
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    error(err if text is None else text)


def warning(message: object) -> None:
    """Print ``lostreg: warning: <message>`` on stderr."""
    print(f"lostreg: warning: {message}", file=sys.stderr)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the command line or the files it names: one line, exit code 2.

    Only lostreg's own error types (:class:`lostreg.errors.LostregError`); anything else is a bug
    and surfaces with its traceback (exit code 1).
    """
    return (LostregError,)


def _protocol_sections() -> list[tuple[str, type]]:
    """``(config section, settings dataclass)``: the features, then every registered method's."""
    return [("features", FeatureConfig), *((name, spec.config) for name, spec in registered_methods().items())]


def protocol_parent_parser() -> argparse.ArgumentParser:
    """The discovery-protocol flags, declared once for every command that runs discovery.

    Use as ``parents=[protocol_parent_parser()]``. Every flag is derived from a settings field
    (:mod:`lostreg.knobs`): ``--which``, ``--layer``, ``--l2-normalize``, then each registered
    method's (``--k-patches``, ``--tau``, ...), with the field's default, help and choices.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("discovery protocol (defaults: the LOST paper's)")
    methods = registered_methods()
    group.add_argument("--method", choices=tuple(methods), default=DEFAULT_METHOD,
                       help=f"discovery method (default {DEFAULT_METHOD}): "
                            + "; ".join(f"{name}: {spec.summary}" for name, spec in methods.items() if spec.summary))
    for section, cls in _protocol_sections():
        label = "" if section == "features" else f"{methods[section].label}: "
        for field in knob_fields(cls):
            flag, default, help_text = flag_of(field), field.default, knob_help(field)
            if not help_text.startswith(label):
                help_text = label + help_text
            if isinstance(default, bool):
                action = argparse.BooleanOptionalAction if default else "store_true"
                group.add_argument(flag, dest=field.name, action=action, default=default, help=help_text)
            else:
                group.add_argument(flag, dest=field.name, type=knob_type(cls, field.name), default=default,
                                   choices=knob_choices(field), help=help_text)
    return parser


def add_objects_argument(parser: argparse.ArgumentParser) -> None:
    """``--objects N`` for commands that run discovery (``objects=`` in hydra commands).

    A protocol-level setting, not a method's knob, so it is not among :func:`protocol_parent_parser`'s
    flags (those are exactly the declared knobs); :func:`protocol_from_args` reads it when given.
    """
    parser.add_argument("--objects", type=int, default=DEFAULT_OBJECTS, metavar="N", help=OBJECTS_HELP)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|tf32|bf16`` for commands that run a backbone over many images."""
    parser.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                        help="backbone forward: fp32 (exact, default), tf32 or bf16 (faster on GPUs; boxes may "
                             "differ); discovery itself always runs in fp32")


def protocol_from_args(args: argparse.Namespace) -> DiscoveryProtocol:
    """The validated protocol of a command's parsed :func:`protocol_parent_parser` flags.

    Raises:
        ProtocolError: a value out of range, named as its command-line flag.
    """
    values = {section: {f.name: getattr(args, f.name) for f in knob_fields(cls)}
              for section, cls in _protocol_sections()}
    objects = getattr(args, "objects", DEFAULT_OBJECTS)  # commands without --objects: one object
    try:
        return DiscoveryProtocol.from_mapping({"method": args.method, "objects": objects, **values}).validate()
    except ProtocolError as err:
        raise ProtocolError(as_flag(str(err))) from None


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    """The hydra overrides (``lost.k_patches=50``) of the protocol flags that differ from the defaults."""
    protocol = protocol_from_args(args)
    default = DiscoveryProtocol()
    out = [] if protocol.method == default.method else [f"method={protocol.method}"]
    if protocol.objects != default.objects:
        out.append(f"objects={protocol.objects}")
    for section, cls in _protocol_sections():
        ours = protocol.features if section == "features" else protocol.section(section)
        for field in knob_fields(cls):
            value = getattr(ours, field.name)
            if value != field.default:
                out.append(f"{section}.{field.name}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def as_flag(message: str) -> str:
    """A protocol error message worded with the command-line flag (``--layer ...``, not ``features.layer ...``)."""
    for section, cls in _protocol_sections():
        for field in knob_fields(cls):
            key = f"{section}.{field.name}"
            if message.startswith(key + " "):
                return flag_of(field) + message[len(key):]
    if message.startswith("method "):
        return "--method" + message[len("method"):]
    if message.startswith("objects"):
        return "--objects" + message[len("objects"):]
    return message


def build_backbone_loudly(name: str, weights: str | None, device: str, random_hint: str = "--weights random") -> "Backbone":
    """:func:`~lostreg.backbones.build_backbone`, with random weights announced on stderr.

    Only the library's :class:`~lostreg.backbones.weights.RandomWeightsWarning` is silenced (it
    becomes the louder line below); every other warning of the build passes through.

    Args:
        random_hint: how the user asked for random weights (``--weights random`` or
            ``weights=random``), quoted in the warning.
    """
    import warnings

    from lostreg.backbones import build_backbone
    from lostreg.backbones.weights import RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        backbone = build_backbone(name, weights=weights, device=device)
    if backbone.is_random:
        print(f"WARNING: {backbone.name} has RANDOM weights ({random_hint}): boxes, maps and CorLoc are "
              "meaningless; use this only to test the pipeline.", file=sys.stderr)
    return backbone
