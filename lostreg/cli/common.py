"""What the sub-commands share: the error printer, user-error types, the protocol flags, loud builds.

Kept light: importing this module imports neither torch nor timm (``lostreg --help`` must answer
at once); the heavy parts are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lostreg.errors import ConfigError, LostregError, debug_enabled
from lostreg.protocol import (
    EIG_SOLVERS,
    FEATURE_KINDS,
    METHODS,
    PRECISIONS,
    DiscoveryProtocol,
    FeatureConfig,
    LostConfig,
    ProtocolError,
    TokenCutConfig,
)

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones import Backbone

#: Longer-side limit of user images for discover / inspect / export --images (0 = native).
DEFAULT_MAX_SIZE = 1024

_DEFAULT = DiscoveryProtocol()


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


def protocol_parent_parser() -> argparse.ArgumentParser:
    """The discovery-protocol flags, declared once for every command that runs discovery.

    Use as ``parents=[protocol_parent_parser()]``; defaults come from :mod:`lostreg.protocol`.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("discovery protocol (defaults: the LOST paper's)")
    group.add_argument("--method", choices=METHODS, default=_DEFAULT.method,
                       help=f"discovery method (default {_DEFAULT.method})")
    group.add_argument("--which", choices=FEATURE_KINDS, default=FeatureConfig.which,
                       help=f"attention features: q, k or v of the qkv projection (default {FeatureConfig.which})")
    group.add_argument("--layer", type=int, default=FeatureConfig.layer,
                       help=f"block index, negative from the end (default {FeatureConfig.layer})")
    group.add_argument("--l2-normalize", action="store_true", default=FeatureConfig.l2_normalize,
                       help="L2-normalise each patch feature first (cosine Gram matrix)")
    group.add_argument("--k-patches", type=int, default=LostConfig.k_patches,
                       help=f"LOST k: lowest-degree patches that may join the seed (default {LostConfig.k_patches})")
    group.add_argument("--gram-bias", type=float, default=LostConfig.gram_bias,
                       help=f"LOST: added to the Gram matrix (default {LostConfig.gram_bias:g})")
    group.add_argument("--exclude-outliers", action="store_true", default=LostConfig.exclude_outliers,
                       help="LOST: high-norm output tokens (artifacts) can be neither the seed nor a potential")
    group.add_argument("--tau", type=float, default=TokenCutConfig.tau,
                       help=f"TokenCut: cosine threshold of the graph (default {TokenCutConfig.tau:g})")
    group.add_argument("--eps", type=float, default=TokenCutConfig.eps,
                       help=f"TokenCut: weight of non-edges (default {TokenCutConfig.eps:g})")
    group.add_argument("--eig", choices=EIG_SOLVERS, default=TokenCutConfig.eig,
                       help=f"TokenCut: eigen-solver (default {TokenCutConfig.eig}; scipy = the reference's call)")
    return parser


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
    protocol = DiscoveryProtocol(
        method=args.method,
        features=FeatureConfig(which=args.which, layer=args.layer, l2_normalize=args.l2_normalize),
        lost=LostConfig(k_patches=args.k_patches, gram_bias=args.gram_bias, exclude_outliers=args.exclude_outliers),
        tokencut=TokenCutConfig(tau=args.tau, eps=args.eps, eig=args.eig),
    )
    try:
        return protocol.validate()
    except ProtocolError as err:
        raise ProtocolError(as_flag(str(err))) from None


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    """The hydra overrides (``lost.k_patches=50``) of the protocol flags that differ from the defaults."""
    protocol = protocol_from_args(args)
    out = []
    if protocol.method != _DEFAULT.method:
        out.append(f"method={protocol.method}")
    for section in ("features", "lost", "tokencut"):
        ours, default = getattr(protocol, section), getattr(_DEFAULT, section)
        for name, value in vars(ours).items():
            if value != getattr(default, name):
                out.append(f"{section}.{name}={str(value).lower() if isinstance(value, bool) else value}")
    return out


_FLAGS = {"features.which": "--which", "features.layer": "--layer", "features.l2_normalize": "--l2-normalize",
          "lost.k_patches": "--k-patches", "lost.gram_bias": "--gram-bias", "method": "--method",
          "lost.exclude_outliers": "--exclude-outliers",
          "tokencut.tau": "--tau", "tokencut.eps": "--eps", "tokencut.eig": "--eig"}


def as_flag(message: str) -> str:
    """A protocol error message worded with the command-line flag (``--layer ...``, not ``features.layer ...``)."""
    for key, flag in _FLAGS.items():
        if message.startswith(key + " "):
            return flag + message[len(key):]
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
