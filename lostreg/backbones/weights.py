"""Loading backbone weights: timm's hub cache, a local file (timm or official layout), or random.

Local files are read without executing pickled code (``torch.load(weights_only=True)`` or
safetensors). Official facebookresearch layouts are converted to timm's key names:

* DINO v1 ``*_pretrain.pth``: already timm's names; a full training checkpoint
  (``{"teacher": {"backbone.blocks.0...": ...}}``) is unwrapped and its ``head`` dropped.
* DINOv2 / DINOv2-reg ``*_pretrain.pth``: ``register_tokens``, ``mask_token``, chunked blocks
  (``blocks.<chunk>.<i>.``), SwiGLU ``w12``/``w3`` and the class token's position embedding,
  folded by :func:`timm.models.vision_transformer.checkpoint_filter_fn`.
* DINOv3 ``dinov3_*_pretrain_*.pth``: ``storage_tokens``, ``ls1``/``ls2.gamma``, the masked
  ``qkv.bias``, SwiGLU ``w1``/``w2``/``w3``, converted by :func:`timm.models.eva.checkpoint_filter_fn`
  after :mod:`lostreg.backbones.dinov3` has matched the q/k/v bias layout (see there).
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from lostreg.errors import LostregError


class WeightsError(LostregError, RuntimeError):
    """A weights file that cannot be read, or does not fit the architecture. One-line message."""


class WeightsUnavailableError(LostregError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class RandomWeightsWarning(UserWarning):
    """A backbone was built with random weights (``weights="random"``): its boxes are meaningless.

    Its own category, so that a caller that announces random weights its own way (the command
    line prints a louder line) can silence exactly this warning and let every other one through.
    """


#: Terminal colour codes (torch puts some in its messages): never in a one-line error.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPER_KEYS = ("teacher", "model", "state_dict", "module")
_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
# Keys that belong to heads or training-only parts, never to the feature extractor.
_DROP_PATTERNS = (r"^head\.", r"^fc_norm\.", r"^dino_head\.", r"^ibot_head\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, safely.

    Raises:
        WeightsError: missing, unreadable, pickled code, or no tensors inside.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file; pass the .pth / .safetensors file itself")
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/pickle/safetensors raise many types; report one line
        raise WeightsError(f"{path}: {_load_failure(path, err)}") from None
    state = _unwrap(obj)
    if not state:
        raise WeightsError(f"{path}: contains no tensors")
    return state


_EXPECTED = ("expected a PyTorch state dict (.pth/.pt, loadable with weights_only=True) or a .safetensors "
             "file")


def _load_failure(path: Path, err: Exception) -> str:
    """Why a file did not load, in one line, and what to do (not torch's advice to unpickle it).

    torch's ``weights_only`` errors suggest ``weights_only=False``: the wrong fix here, since that
    runs whatever code the file carries. A file that is a real PyTorch archive or pickle but
    holds other objects than tensors gets its own reason; anything else is not a checkpoint.
    """
    with open(path, "rb") as f:
        head = f.read(2)
    is_torch_file = zipfile.is_zipfile(path) or head[:1] == b"\x80"  # torch.save's zip, or a raw pickle
    if path.suffix != ".safetensors" and is_torch_file and isinstance(err, pickle.UnpicklingError):
        return ("cannot read weights: the file holds pickled Python objects besides tensors (a whole model "
                "or training state?) and lostreg never runs pickled code; save model.state_dict() (or use "
                "safetensors) and pass that file")
    if path.suffix != ".safetensors" and not is_torch_file:
        return f"cannot read weights (not a PyTorch checkpoint: corrupt, or another format); {_EXPECTED}"
    text = _ANSI.sub("", str(err)).strip()
    reason = text.splitlines()[0] if text else type(err).__name__
    return f"cannot read weights ({reason[:200]}); {_EXPECTED}"


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """Find the backbone's tensors inside common checkpoint wrappers."""
    while isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return tensors
        obj = inner
    return {}


def normalise_key_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official DINO/DINOv2 key names to timm's (before timm's own DINOv2 filter).

    Strips ``module.``/``backbone.`` prefixes, flattens DINOv2's chunked blocks
    (``blocks.1.4.norm1`` -> ``blocks.4.norm1``; chunks keep global block indices) and drops
    head weights.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        if any(re.match(p, key) for p in _DROP_PATTERNS):
            continue
        out[key] = value
    return out


def load_into_model(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    arch: str,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Convert ``state`` to timm's layout and load it strictly into ``model``.

    Args:
        model: the timm model to fill.
        state: flat ``{name: tensor}`` (timm or official layout).
        source: where ``state`` came from (for messages).
        arch: the architecture's name (for messages).
        filter_fn: timm's ``checkpoint_filter_fn`` of the model's family; None = the
            VisionTransformer one (DINO, DINOv2).

    Raises:
        WeightsError: naming ``source``, the architecture and the first mismatches.
    """
    if filter_fn is None:
        from timm.models.vision_transformer import checkpoint_filter_fn as filter_fn

    state = normalise_key_names(state)
    try:
        state = filter_fn(state, model)
    except Exception as err:  # a wrong-architecture file can break the filter's reshapes
        raise WeightsError(f"{source}: weights for a different architecture than {arch} ({err})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (file vs model), e.g. {mismatched[0]}")
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise WeightsError(f"{source}: weights for a different architecture than {arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def hub_weights_file(timm_name: str, connect_timeout_s: float = 3.0) -> Path:
    """Path of timm's pretrained weights for ``timm_name``: from the HF cache, else downloaded.

    huggingface_hub retries for about 47 s when the hub is unreachable; a short TCP probe first
    turns "offline" into one clear error within seconds.

    Raises:
        WeightsUnavailableError: naming the file timm wanted and how to pass ``--weights``.
    """
    import timm
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hf_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hf_id:
        raise WeightsUnavailableError(f"timm has no hub weights for {timm_name}; pass --weights PATH")
    filenames = ("model.safetensors", "pytorch_model.bin")
    for filename in filenames:
        cached = try_to_load_from_cache(hf_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    wanted = f"{hf_id}/{filenames[0]}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "") or not _hub_reachable(
        connect_timeout_s
    ):
        official = getattr(cfg, "url", None)
        raise WeightsUnavailableError(
            f"pretrained weights for {timm_name} are not cached and the Hugging Face hub cannot be "
            f"reached (timm wanted {wanted}). On a machine with internet, download that file "
            + (f"or the official checkpoint {official} " if official else "")
            + "and pass it as the weights (--weights PATH; for lostreg eval: weights=PATH), or use random "
            "weights to try the pipeline (--weights random / weights=random; boxes are then meaningless)."
        )
    last_error: Exception | None = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(hf_id, filename))
        except Exception as err:  # EntryNotFound for .safetensors -> try the .bin
            last_error = err
    raise WeightsUnavailableError(f"could not download {wanted}: {last_error}")


def _hub_reachable(timeout_s: float) -> bool:
    """Whether a TCP connection to the hub endpoint opens (a proxy is trusted to work)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout_s):
            return True
    except OSError:
        return False
