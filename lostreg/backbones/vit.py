"""timm Vision Transformers as LOST feature extractors (DINO, DINOv2, DINOv2+reg, any timm ViT).

The forward pass is written out over timm's modules instead of hooking ``model.forward``:
the token sequence is assembled here so that each family's official position-embedding
interpolation can be applied (timm's differs for DINO and plain DINOv2), blocks after the
requested layer are never run, and no hook can be left behind.

Test-time registers (:mod:`lostreg.ttreg`) are an explicit state of the backbone
(:meth:`TimmViTBackbone.with_test_time_registers`): one extra token appended at the END of the
sequence, ``[CLS, registers..., patches..., TTR]``, and an edit of the listed MLP units inside
:meth:`TimmViTBackbone.run_block`. Every forward in this module and in the diagnostics goes
through :meth:`~TimmViTBackbone.tokens` and :meth:`~TimmViTBackbone.run_block`, and patch
features are sliced ``[P : P + rows*cols]``, so the extra token never reaches LOST.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from lostreg.errors import ConfigError
from lostreg.backbones.base import Backbone, FeatureKey, FeatureKind, refuse_rope_option
from lostreg.backbones.pos_embed import resize_patch_pos_embed
from lostreg.backbones.registry import BackboneSpec, register_builder
from lostreg.backbones.weights import WeightsError, hub_weights_file, load_into_model, read_state_dict
from lostreg.precision import forward_precision
from lostreg.protocol import OUTPUT_NORMS

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.ttreg.apply import TestTimeRegisters

log = logging.getLogger(__name__)

#: Position of q, k and v in the qkv projection's output channels.
FEATURE_SLICE = {"q": 0, "k": 1, "v": 2}
#: ``--weights random`` is this seed's initialisation, the same on every run.
RANDOM_WEIGHTS_SEED = 0


class TimmViTBackbone(Backbone):
    """LOST features from a timm ``VisionTransformer``.

    Args:
        spec: registry entry (its ``pos_embed_interp`` picks the official interpolation).
        model: a timm VisionTransformer built with ``dynamic_img_size=True``, in eval mode.
        device: where the model lives and features are returned.
        random_weights: True when the weights are random (boxes are meaningless).
        test_time_registers: None (default), or the test-time register to run with
            (see :meth:`with_test_time_registers`).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        device: torch.device,
        random_weights: bool,
        test_time_registers: "TestTimeRegisters | None" = None,
    ) -> None:
        _check_supported(model, spec.name)
        self.spec = spec
        self.model = model.to(device).eval()
        self.device = device
        self._random = random_weights
        if test_time_registers is not None:
            test_time_registers.check_model(model, spec.name)
        self._ttr = test_time_registers
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self._mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        self._std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))

    @property
    def patch_size(self) -> int:
        ph, pw = self.model.patch_embed.patch_size
        if ph != pw:
            raise ConfigError(f"{self.name}: non-square patches {ph}x{pw} are not supported")
        return int(ph)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def num_registers(self) -> int:
        return int(getattr(self.model, "num_reg_tokens", 0))

    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._mean  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return self._std  # type: ignore[return-value]

    @property
    def is_random(self) -> bool:
        return self._random

    @property
    def test_time_registers(self) -> "TestTimeRegisters | None":
        """The test-time register this backbone runs with, or None (the plain model)."""
        return self._ttr

    @property
    def num_trailing_tokens(self) -> int:
        """Tokens after the patches: 1 with a test-time register, else 0."""
        return 0 if self._ttr is None else self._ttr.num_tokens

    def with_test_time_registers(self, registers: "TestTimeRegisters | None") -> "TimmViTBackbone":
        """A backbone over the same model (shared, not copied) that runs with ``registers``.

        ``None`` gives the plain model back. The model's weights are never modified; see
        :func:`lostreg.ttreg.apply_test_time_registers` for the variant that also checks a neuron
        file against these weights.
        """
        return TimmViTBackbone(self.spec, self.model, self.device, self._random, test_time_registers=registers)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Input tokens of the first block: (B, num_prefix_tokens + rows*cols + num_trailing_tokens, D).

        Order is [CLS, registers, patches row-major, test-time register if any], position
        embeddings added the family's way (the test-time register is a zero vector and gets none).
        """
        model = self.model
        p = self.patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x = model.patch_embed(images)  # (B, rows, cols, D) with dynamic_img_size
        batch, rows, cols, dim = x.shape
        x = x.reshape(batch, rows * cols, dim)

        prefix = []
        if model.cls_token is not None:
            prefix.append(model.cls_token.expand(batch, -1, -1))
        if model.reg_token is not None:
            prefix.append(model.reg_token.expand(batch, -1, -1))

        if model.pos_embed is not None:
            # no_embed_class: position embeddings cover patches only (DINOv2+reg in timm);
            # otherwise the first entries belong to the prefix tokens (DINO, DINOv2).
            n_pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
            pos_prefix = model.pos_embed[:, :n_pos_prefix]
            pos_patch = resize_patch_pos_embed(
                model.pos_embed[:, n_pos_prefix:],
                grid_hw=(rows, cols),
                pretrained_grid_hw=tuple(model.patch_embed.grid_size),
                mode=self.spec.pos_embed_interp,
            )
            if model.no_embed_class:
                x = torch.cat(prefix + [x + pos_patch], dim=1)
            else:
                x = torch.cat(prefix + [x], dim=1) + torch.cat([pos_prefix, pos_patch], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
        if self._ttr is not None:
            # After the position embedding and before norm_pre, as in the paper's CLIP fork.
            x = self._ttr.append_token(x)
        return model.norm_pre(model.patch_drop(x))

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``index`` (0-based) on tokens ``x`` as :meth:`tokens` lays them out; same shape out.

        With a test-time register whose units include this layer, the block runs with its MLP
        hidden activation edited (a hook that exists only during this call).
        """
        block = self.model.blocks[index]
        if self._ttr is None or index not in self._ttr.layers:
            return block(x)
        return self._ttr.run_block(block, index, x, self.num_prefix_tokens)

    def patch_tokens(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The patch part ``[P : P + rows*cols]`` of a token tensor (B, T, C) -> (B, rows*cols, C)."""
        start = self.num_prefix_tokens
        n = grid_hw[0] * grid_hw[1]
        if x.shape[1] != start + n + self.num_trailing_tokens:
            raise ValueError(
                f"{x.shape[1]} tokens != {start} prefix + {n} patches + {self.num_trailing_tokens} trailing"
            )
        return x[:, start:start + n]

    def block_input(self, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Tokens entering block ``layer``: (B, num_prefix_tokens + rows*cols + num_trailing_tokens, D)."""
        index = self.layer_index(layer)
        x = self.tokens(images)
        for i in range(index):
            x = self.run_block(i, x)
        return x

    def qkv(self, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Output of block ``layer``'s attention qkv linear (bias included), all tokens.

        Returns:
            (B, num_prefix_tokens + rows*cols + num_trailing_tokens, 3*D): channels [0:D] = q,
            [D:2D] = k, [2D:3D] = v, heads concatenated in head order within each.
        """
        block = self.model.blocks[self.layer_index(layer)]
        return block.attn.qkv(block.norm1(self.block_input(images, layer)))

    @property
    def has_attention(self) -> bool:
        return True

    @torch.inference_mode()
    def extract_many(self, images: torch.Tensor, keys: Sequence[FeatureKey],
                     precision: str = "fp32") -> dict[FeatureKey, torch.Tensor]:
        keys = [FeatureKey(*key) for key in keys]
        for key in keys:
            self.check_feature_key(key)  # before the forward pass: a bad key costs nothing
        wanted: dict[int, list[FeatureKey]] = {}
        for key in keys:
            # The output norms need every block (and the final norm) after the last one asked.
            index = self.num_layers - 1 if key == OUTPUT_NORMS else self.layer_index(key.layer)
            wanted.setdefault(index, []).append(key)
        images = images.to(self.device, torch.float32)
        grid_hw = self.grid_hw((int(images.shape[-2]), int(images.shape[-1])))
        out: dict[FeatureKey, torch.Tensor] = {}
        # The features feed LOST's sign thresholds: by default no TF32 in the patch-embedding conv or
        # matmuls; precision=tf32|bf16 trades that for speed (the features still leave as float32).
        with forward_precision(precision, self.device):
            x = self.tokens(images)
            last = max(wanted)
            for index in range(last + 1):
                if index in wanted:
                    # The same two calls as qkv(): one qkv output serves every kind of this layer.
                    block = self.model.blocks[index]
                    qkv = block.attn.qkv(block.norm1(x))
                    for key in wanted[index]:
                        if key != OUTPUT_NORMS:
                            out[key] = self.patch_tokens(select_features(qkv, key.which), grid_hw).float()
                if index < last or OUTPUT_NORMS in wanted.get(index, ()):
                    x = self.run_block(index, x)
            if OUTPUT_NORMS in keys:
                final = self.patch_tokens(self.model.norm(x), grid_hw).float()
                out[OUTPUT_NORMS] = final.norm(dim=-1, keepdim=True)
        return {key: out[key] for key in keys}  # in the order asked


def select_features(qkv: torch.Tensor, which: FeatureKind) -> torch.Tensor:
    """The q, k or v channels of a qkv projection output (..., 3*D) -> (..., D), all tokens."""
    if which not in FEATURE_SLICE:
        raise ValueError(f"features.which must be one of q, k, v; got {which!r}")
    dim = qkv.shape[-1] // 3
    start = FEATURE_SLICE[which] * dim
    return qkv[..., start:start + dim]


def _check_supported(model: nn.Module, name: str) -> None:
    needed = ("patch_embed", "blocks", "num_prefix_tokens", "cls_token", "reg_token", "pos_embed")
    if not all(hasattr(model, a) for a in needed) or not all(
        hasattr(b, "norm1") and hasattr(getattr(b, "attn", None), "qkv") for b in model.blocks
    ):
        raise ConfigError(
            f"{name}: not a timm VisionTransformer with a fused qkv projection in every block; "
            "LOST needs blocks[i].attn.qkv"
        )


@register_builder("timm_vit")
def build_timm_vit(
    spec: BackboneSpec, weights: str | None, device: torch.device, *, rope: str = "pre"
) -> TimmViTBackbone:
    """Build ``spec.timm_name`` with ``weights``: None/"pretrained" (hub), "random", or a file path.

    ``rope`` must be ``"pre"``: these ViTs have absolute position embeddings, no rotation.
    """
    refuse_rope_option(rope)
    import timm

    assert spec.timm_name is not None
    weights = weights or "pretrained"
    # Default img_size keeps the pretrained position grid; dynamic_img_size accepts any grid.
    # Random init is seeded (0) without touching the caller's RNG, so "random" runs repeat.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    random_weights = weights == "random"
    if random_weights:
        warnings.warn(
            f"{spec.name}: RANDOM weights (--weights random): boxes are meaningless; "
            "use this only to test the pipeline.",
            stacklevel=2,
        )
    else:
        path = hub_weights_file(spec.timm_name) if weights == "pretrained" else weights
        state = read_state_dict(path)
        load_into_model(model, state, source=str(path), arch=f"{spec.name} ({spec.timm_name})")
    return TimmViTBackbone(spec, model, device, random_weights=random_weights)


__all__ = ["FEATURE_SLICE", "TimmViTBackbone", "WeightsError", "build_timm_vit", "select_features"]
