"""Weights: official DINO/DINOv2 layouts, timm files, safety, wrong files, offline hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lostreg.backbones import WeightsError, WeightsUnavailableError, build_backbone
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.backbones.weights import hub_weights_file, normalise_key_names


def _random(name: str, seed: int) -> TimmViTBackbone:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone(name, weights="random", device="cpu")
    assert isinstance(backbone, TimmViTBackbone)
    return backbone


def _same_features(a: TimmViTBackbone, b: TimmViTBackbone) -> bool:
    x = torch.randn(1, 3, a.patch_size * 4, a.patch_size * 6)
    return torch.equal(a.extract(x), b.extract(x))


def _official_dinov2_reg_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Write a timm DINOv2+reg model's weights with facebookresearch/dinov2 key names and layout.

    Official: cls_token without its position, pos_embed = [cls position, patch positions],
    register_tokens, mask_token, and blocks grouped in chunks ``blocks.<chunk>.<i>``.
    """
    timm_state = model.state_dict()
    cls_pos = torch.randn(1, 1, timm_state["cls_token"].shape[-1])
    out: dict[str, torch.Tensor] = {
        "cls_token": timm_state["cls_token"] - cls_pos,
        "pos_embed": torch.cat([cls_pos, timm_state["pos_embed"]], dim=1),
        "register_tokens": timm_state["reg_token"],
        "mask_token": torch.zeros(1, timm_state["cls_token"].shape[-1]),
    }
    for key, value in timm_state.items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = key.replace(f"blocks.{index}.", f"blocks.{index // 4}.{index}.", 1)
        if key not in ("cls_token", "pos_embed", "reg_token"):
            out[key] = value.clone()
    return out


def test_official_dinov2_reg_checkpoint_is_converted(tmp_path: Path) -> None:
    source = _random("dinov2_reg", seed=10)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(_official_dinov2_reg_state(source.model), path)
    loaded = build_backbone("dinov2_reg", weights=str(path), device="cpu")
    assert not loaded.is_random
    x = torch.randn(1, 3, 14 * 4, 14 * 6)
    torch.testing.assert_close(loaded.extract(x), source.extract(x), rtol=0, atol=1e-5)


def test_official_dinov2_checkpoint_is_converted(tmp_path: Path) -> None:
    source = _random("dinov2_vits14", seed=11)
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    assert _same_features(build_backbone("dinov2_vits14", weights=str(path), device="cpu"), source)


def test_official_dino_training_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    """A DINO training checkpoint: {'teacher': {'backbone.*', 'head.*'}, 'student': ..., 'epoch': ...}."""
    source = _random("dino_vits16", seed=12)
    teacher = {f"backbone.{k}": v.clone() for k, v in source.model.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(4, 4)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "student": {"module.x": torch.zeros(1)}, "epoch": 100}, path)
    assert _same_features(build_backbone("dino", weights=str(path), device="cpu"), source)


def test_timm_safetensors_file(tmp_path: Path) -> None:
    source = _random("dino_vits16", seed=13)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    assert _same_features(build_backbone("dino", weights=str(path), device="cpu"), source)


def test_key_normalisation() -> None:
    t = torch.zeros(1)
    out = normalise_key_names({
        "module.backbone.blocks.2.11.attn.qkv.weight": t,
        "blocks.3.norm1.weight": t,
        "head.weight": t,
        "norm.bias": t,
    })
    assert set(out) == {"blocks.11.attn.qkv.weight", "blocks.3.norm1.weight", "norm.bias"}


def test_weights_for_another_architecture(tmp_path: Path) -> None:
    source = _random("dinov2_vits14_reg", seed=14)
    path = tmp_path / "small.pth"
    torch.save(source.model.state_dict(), path)
    with pytest.raises(WeightsError) as err:
        build_backbone("dino_vits8", weights=str(path), device="cpu")
    message = str(err.value)
    assert str(path) in message and "different architecture" in message and "dino_vits8" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "cannot read weights"), (b"not a checkpoint at all", "cannot read weights")],
)
def test_unreadable_weights_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=reason) as err:
        build_backbone("dino", weights=str(path), device="cpu")
    assert str(path) in str(err.value)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    path = tmp_path / "evil.pth"
    marker = tmp_path / "executed"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_backbone("dino", weights=str(path), device="cpu")
    assert not marker.exists()


def test_load_failures_give_the_right_advice(tmp_path: Path) -> None:
    """Never torch's "re-run with weights_only=False" (it would run the file's code), never ANSI codes."""
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 8)
    pickled = tmp_path / "model.pth"
    torch.save({"x": _Payload(str(tmp_path / "m"))}, pickled)
    messages = {}
    for path in (noise, pickled, tmp_path):
        with pytest.raises(WeightsError) as err:
            build_backbone("dino", weights=str(path), device="cpu")
        messages[path] = str(err.value)
    for message in messages.values():
        assert "weights_only=False" not in message and "\x1b" not in message and "\n" not in message
    assert "not a PyTorch checkpoint" in messages[noise]
    assert "pickled Python objects" in messages[pickled] and "state_dict()" in messages[pickled]
    assert "is a folder, not a weights file" in messages[tmp_path]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        build_backbone("dino", weights=str(tmp_path / "nope.pth"), device="cpu")


def test_offline_hub_fails_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached weights and no hub: one clear message within seconds, naming the file and --weights."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        hub_weights_file("vit_small_patch14_reg4_dinov2.lvd142m")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "timm/vit_small_patch14_reg4_dinov2.lvd142m/model.safetensors" in message
    assert "--weights" in message and "dinov2_vits14_reg4_pretrain.pth" in message


def test_cached_hub_weights_are_used_offline(tmp_path: Path) -> None:
    """A file in the Hugging Face cache layout is found without any network access."""
    cache = tmp_path / "hf"
    snapshot = cache / "models--timm--vit_small_patch16_224.dino" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--timm--vit_small_patch16_224.dino" / "refs").mkdir()
    (cache / "models--timm--vit_small_patch16_224.dino" / "refs" / "main").write_text("abc123")
    source = _random("dino_vits16", seed=15)
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(snapshot / "model.safetensors"))
    code = (
        "import torch; from lostreg.backbones import build_backbone;"
        "b = build_backbone('dino', device='cpu');"
        "print(b.model.blocks[0].attn.qkv.weight.sum().item())"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = source.model.blocks[0].attn.qkv.weight.sum().item()
    assert float(out.stdout.strip()) == pytest.approx(expected, rel=1e-6)
