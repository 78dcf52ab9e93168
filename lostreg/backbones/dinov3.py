"""DINOv3 (timm ``Eva`` ``*_patch16_dinov3``) as a LOST feature extractor.

How DINOv3 differs from the DINO / DINOv2 ViTs of :mod:`lostreg.backbones.vit`:

* Tokens are ``[CLS, 4 registers, patches row-major]`` (``num_prefix_tokens == 5``) and there is
  no absolute position table: every block rotates the *patch* tokens' q and k with 2-D rotary
  embeddings (RoPE) inside its attention. The prefix tokens' q/k and all values are never rotated.
* The RoPE table depends on the patch grid (coordinates are normalised per axis to [-1, 1]), so
  it is rebuilt for every input size (the forward's context, see
  :class:`~lostreg.backbones.timm_base.ForwardState`); any size that is a multiple of 16 works.
* q/k/v cannot be read off a ``qkv`` Linear's output: the ``*_qkvb`` layout adds separate
  ``q_bias``/``k_bias``/``v_bias`` through ``F.linear`` (a hook on ``attn.qkv`` never fires), and
  the rotation happens after the projection. So q/k/v are recomputed here from the attention
  module's own weights and biases, exactly as its forward computes them.
* No forward edits (:attr:`~DinoV3Backbone.supports_forward_edits` is False): DINOv3 was trained
  with 4 registers, and a token appended after the patches breaks its RoPE, which rotates every
  token after the prefix (spec B9).

Which keys LOST sees is a build-time option, ``rope``:

* ``"pre"`` (default): q/k as projected (after the module's q/k norms, identities in DINOv3),
  before rotation. LOST compares patch *contents*; rotated keys mix in a cosine of the relative
  offset, which biases degrees towards image geometry (edge and corner patches have more distant
  partners) and changes with resolution and aspect ratio.
* ``"post"``: q/k rotated as the attention rotates them (the tensors its softmax sees), for ablations.

Values are the same in both. The forward loop, tracing and building are
:mod:`lostreg.backbones.timm_base`'s.
"""

from __future__ import annotations

from typing import Any, Collection, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lostreg.errors import ConfigError
from lostreg.backbones.edits import ForwardEdit
from lostreg.backbones.registry import BackboneSpec, register_builder
from lostreg.backbones.timm_base import AttentionTensors, TimmBackbone, create_timm_model
from lostreg.backbones.weights import WeightsError, normalise_key_names
from lostreg.precision import strict_fp32
from lostreg.protocol import RopeMode


class AttentionInputs(NamedTuple):
    """What one block's attention works with, for every token (prefix included).

    Shapes are (B, heads, N, head_dim), float32, tokens in model order
    ``[CLS, registers, patches row-major]``.

    Attributes:
        q: queries before RoPE (after the module's ``q_norm``; identity in DINOv3).
        k: keys before RoPE (after ``k_norm``).
        v: values (never rotated).
        q_rot: queries as the attention's softmax sees them: prefix rows equal to ``q``'s, patch
            rows rotated.
        k_rot: keys likewise.
        rope: the block's RoPE table, (rows*cols, 2*head_dim): sin then cos, timm's layout.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_rot: torch.Tensor
    k_rot: torch.Tensor
    rope: torch.Tensor


class DinoV3Backbone(TimmBackbone):
    """LOST features from a timm DINOv3 ``Eva`` model.

    Args:
        spec: registry entry.
        model: a timm ``Eva`` with RoPE and pre-norm ``EvaBlock``/``EvaAttention`` blocks (the
            DINOv3 layout, fused or ``_qkvb``), built with ``dynamic_img_size=True``.
        device: where the model lives and features are returned.
        random_weights: True when the weights are random (boxes are meaningless).
        rope: ``"pre"`` (default) or ``"post"``: whether q/k features are taken before or after
            the rotary embedding (see the module docstring). Values are unaffected.
        forward_edit: must be None (DINOv3 takes no forward edits).

    Raises:
        ConfigError: a model this extractor cannot read exactly, or an unknown ``rope``.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        device: torch.device,
        random_weights: bool,
        rope: RopeMode = "pre",
        forward_edit: ForwardEdit | None = None,
    ) -> None:
        if rope not in get_args(RopeMode):
            raise ConfigError(f"features.rope must be pre or post, got {rope!r}")
        self._rope: RopeMode = rope
        super().__init__(spec, model, device, random_weights, forward_edit)

    @classmethod
    def _check_model(cls, model: nn.Module, name: str) -> None:
        """Refuse models whose attention inputs this module would not reproduce exactly."""
        from timm.models.eva import Eva, EvaAttention, EvaBlock

        problem = None
        if not isinstance(model, Eva):
            problem = "not a timm Eva model"
        elif getattr(model, "rope", None) is None or getattr(model, "rope_mixed", False):
            problem = "no (or per-layer mixed) rotary embedding"
        elif model.pos_embed is not None:
            problem = "it has an absolute position table (EVA-02 style), which this extractor does not resize"
        elif model.patch_drop is not None:
            problem = "patch dropout is configured"
        elif not model.dynamic_img_size:
            problem = "it was built without dynamic_img_size"
        else:
            for block in model.blocks:
                # Post-norm blocks feed the attention the raw residual (norm1 comes after it), and
                # grouped-query AttentionRope has another q/k/v layout.
                if type(block) is not EvaBlock or not isinstance(block.attn, EvaAttention):
                    problem = "its blocks are not pre-norm EvaBlock with EvaAttention"
                    break
                if block.attn.num_prefix_tokens != model.num_prefix_tokens:
                    problem = "its attention leaves a different number of prefix tokens unrotated"
                    break
        if problem:
            raise ConfigError(f"{name}: not a DINOv3-layout timm model ({problem})")

    @property
    def rope(self) -> RopeMode:
        """``"pre"`` or ``"post"``: whether q/k features are taken before or after RoPE."""
        return self._rope

    def _embed(self, images: torch.Tensor, pos_antialias: bool = False) -> tuple[torch.Tensor, Any]:
        # No position table to resize (RoPE): pos_antialias is refused by check_feature_key.
        model = self.model
        x = model.patch_embed(images)  # (B, rows, cols, D) with dynamic_img_size
        batch, rows, cols, dim = x.shape
        rope = model.rope.get_embed(shape=(rows, cols))
        x = x.reshape(batch, rows * cols, dim)
        prefix = self.prefix_tokens(batch)
        return torch.cat(prefix + [x], dim=1), rope

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # pos_drop is an identity in eval mode and patch_drop is absent (checked); norm_pre is
        # an identity for DINOv3 but applied as timm applies it.
        return self.model.norm_pre(self.model.pos_drop(x))

    def _block_forward(self, block: nn.Module, x: torch.Tensor, context: Any) -> torch.Tensor:
        return block(x, rope=context)

    def _features(self, block: nn.Module, x: torch.Tensor, context: Any,
                  kinds: Collection[str]) -> dict[str, torch.Tensor]:
        """q/k before RoPE unless built with ``rope="post"``; heads concatenated in head order
        (channel ``h * head_dim + j``), no scaling, no normalisation."""
        attn = block.attn
        projected = dict(zip("qkv", project_qkv(attn, block.norm1(x))))
        out = {}
        for kind in kinds:
            heads = projected[kind]
            if self._rope == "post" and kind != "v":
                heads = rotate_patch_tokens(heads, context, self.num_prefix_tokens, attn.rotate_half)
            out[kind] = merge_heads(heads)
        return out

    def _attention(self, block: nn.Module, x: torch.Tensor, context: Any) -> AttentionTensors:
        attn = block.attn
        q, k, v = project_qkv(attn, block.norm1(x))
        npt = self.num_prefix_tokens
        return AttentionTensors(q, k, v, rotate_patch_tokens(q, context, npt, attn.rotate_half),
                                rotate_patch_tokens(k, context, npt, attn.rotate_half))

    # --- the forward in pieces (for tests and experiments) ------------------------------------

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens of the first block, and the RoPE table every block uses for this grid.

        Args:
            images: (B, 3, H, W) float, normalised, H and W multiples of :attr:`patch_size`.

        Returns:
            ``(x, rope)``: x is (B, num_prefix_tokens + rows*cols, D) in the order
            ``[CLS, registers, patches row-major]`` (no position embedding is added: DINOv3 has
            none); rope is (rows*cols, 2*head_dim), sin then cos.
        """
        state = self.begin(images)
        return state.tokens, state.context

    def block_input(self, images: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens entering block ``layer`` (B, num_prefix_tokens + rows*cols, D), and the RoPE table."""
        state = self.advance(self.begin(images), self.layer_index(layer))
        return state.tokens, state.context

    @torch.inference_mode()
    def attention_inputs(self, images: torch.Tensor, layer: int = -1) -> AttentionInputs:
        """q/k/v of block ``layer`` before and after RoPE, all tokens (see :class:`AttentionInputs`)."""
        images = images.to(self.device, torch.float32)
        index = self.layer_index(layer)
        with strict_fp32():
            state = self.advance(self.begin(images), index)
            q, k, v, q_rot, k_rot = self._attention(self.model.blocks[index], state.tokens, state.context)
        return AttentionInputs(q=q, k=k, v=v, q_rot=q_rot, k_rot=k_rot, rope=state.context)


def project_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a timm ``EvaAttention`` from its own weights and biases, before RoPE.

    The same calls as the module's forward, so the results are bit-identical to the tensors it
    rotates: fused ``qkv`` (``qkv.weight`` with ``cat(q_bias, k_bias, v_bias)`` when the ``_qkvb``
    layout has them, added inside ``F.linear`` or separately as the module's
    ``qkv_bias_separate`` says), or separate ``q_proj``/``k_proj``/``v_proj``; then the module's
    ``q_norm``/``k_norm`` (identities in DINOv3).

    Args:
        attn: the block's attention module.
        x: (B, N, D) the block input after ``norm1``.

    Returns:
        q, k, v, each (B, heads, N, head_dim).
    """
    batch, n_tokens, _ = x.shape
    heads = attn.num_heads
    if attn.qkv is not None:
        if attn.q_bias is None:
            qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
        else:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            if attn.qkv_bias_separate:
                qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias) + bias
            else:
                qkv = F.linear(x, attn.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, n_tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (
            proj(x).reshape(batch, n_tokens, heads, -1).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
    return attn.q_norm(q), attn.k_norm(k), v


def rotate_patch_tokens(
    t: torch.Tensor, rope: torch.Tensor, num_prefix_tokens: int, rotate_half: bool
) -> torch.Tensor:
    """Apply RoPE as timm's ``EvaAttention`` does: patch rows rotated, prefix rows untouched.

    Args:
        t: (B, heads, N, head_dim) q or k of all tokens, prefix first.
        rope: (N - num_prefix_tokens, 2*head_dim) table from ``model.rope.get_embed``.
        num_prefix_tokens: rows left as they are (CLS and registers).
        rotate_half: the attention's ``rotate_half`` (True for DINOv3: "half" pairing).

    Returns:
        (B, heads, N, head_dim), same dtype as ``t``.
    """
    return torch.cat([t[:, :, :num_prefix_tokens], _rotate(t[:, :, num_prefix_tokens:], rope, rotate_half)], dim=2)


def _rotate(patches: torch.Tensor, rope: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    # timm's own function, the one EvaAttention calls: post-RoPE features are the very tensors
    # the attention's softmax sees, bit for bit, whatever timm's rotation convention.
    from timm.layers import apply_rot_embed_cat

    return apply_rot_embed_cat(patches, rope, half=rotate_half).type_as(patches)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads*head_dim), heads concatenated in head order."""
    batch, heads, n_tokens, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, n_tokens, heads * head_dim)


def _qkvb_twin(timm_name: str) -> str | None:
    """timm's ``_qkvb`` name carrying the same tag, if timm has one."""
    import timm

    arch, _, tag = timm_name.partition(".")
    twin = f"{arch}_qkvb" + (f".{tag}" if tag else "")
    return twin if timm.models.get_pretrained_cfg(twin) is not None else None


def match_qkv_bias_layout(
    state: dict[str, torch.Tensor], model: nn.Module, source: str, timm_name: str
) -> dict[str, torch.Tensor]:
    """Fit a DINOv3 state dict's q/k/v biases to the model's layout, refusing anything lossy.

    Three layouts exist for the same weights: timm fused (``qkv.weight`` only), timm ``_qkvb``
    (``q_bias``, ``v_bias``; ``k_bias`` is a zero, non-persistent buffer) and Meta's (``qkv.bias``
    of size 3*D whose k third is masked off at run time). The released distilled models have zero
    q/v biases, so any of them may go into either timm layout:

    * model without biases: zero ``q_bias``/``v_bias`` or a ``qkv.bias`` with zero q/v thirds are
      dropped (timm's eva filter would drop ``qkv.bias`` silently, printing an exception per block).
      Non-zero ones are refused: they would change every feature.
    * ``_qkvb`` model, file without any bias: zero biases are added (the same function).

    Meta's ``qkv.bias`` for a ``_qkvb`` model is left to timm's eva filter, which splits it.

    Args:
        state: key-normalised state dict (:func:`normalise_key_names`).
        model: the timm model it will be loaded into.
        source: file name, for messages.
        timm_name: the model's tagged timm name, for messages.

    Returns:
        A new dict.

    Raises:
        WeightsError: non-zero biases for a model without biases (one line, naming the ``_qkvb``
            twin to use instead).
    """
    out = dict(state)
    for index, block in enumerate(model.blocks):
        attn = block.attn
        if getattr(attn, "qkv", None) is None:
            continue  # separate projections: their biases are ordinary Linear biases
        prefix = f"blocks.{index}.attn."
        has_bias = attn.q_bias is not None
        if not has_bias:
            dropped = []
            if prefix + "qkv.bias" in out:
                q_part, _masked_k, v_part = out.pop(prefix + "qkv.bias").chunk(3, dim=-1)
                dropped += [q_part, v_part]
            for part in ("q_bias", "k_bias", "v_bias"):
                if prefix + part in out:
                    dropped.append(out.pop(prefix + part))
            if any(bool(t.count_nonzero()) for t in dropped):
                twin = _qkvb_twin(timm_name)
                use = f"build --backbone {twin} instead" if twin else "use a timm model with q/v biases"
                raise WeightsError(
                    f"{source}: block {index} has non-zero q/v biases but {timm_name} has none; {use}"
                )
        elif not any(prefix + part in out for part in ("q_bias", "v_bias", "qkv.bias")):
            out[prefix + "q_bias"] = torch.zeros_like(attn.q_bias)
            out[prefix + "v_bias"] = torch.zeros_like(attn.v_bias)
    return out


@register_builder("timm_eva")
def build_timm_eva(
    spec: BackboneSpec,
    weights: str | None,
    device: torch.device,
    *,
    rope: RopeMode = "pre",
    model_kwargs: dict[str, object] | None = None,
) -> DinoV3Backbone:
    """Build the DINOv3 ``spec.timm_name`` with ``weights``.

    Args:
        spec: registry entry (``builder="timm_eva"``).
        weights: None/"pretrained" (timm's Hugging Face file, cached), "random" (seeded), or the
            path of a timm-layout file (either q/k/v bias layout) or an official Meta DINOv3
            checkpoint (``storage_tokens``, ``ls1.gamma``, masked ``qkv.bias``; converted by timm's
            eva ``checkpoint_filter_fn``).
        device: where the model lives.
        rope: ``"pre"`` (default) or ``"post"`` RoPE q/k features.
        model_kwargs: extra ``timm.create_model`` arguments (tests shrink ``depth``).

    Raises:
        ConfigError: unknown ``rope``, or a timm too old to know the model.
        WeightsError, WeightsUnavailableError: one-line messages.
    """
    import timm
    from timm.models.eva import checkpoint_filter_fn

    if rope not in get_args(RopeMode):
        raise ConfigError(f"features.rope must be pre or post, got {rope!r}")
    assert spec.timm_name is not None
    timm_name = spec.timm_name
    arch = timm_name.split(".")[0]
    if not timm.is_model(arch):
        raise ConfigError(
            f"{spec.name}: timm {timm.__version__} has no model {arch}; DINOv3 needs a timm release "
            "that ships it (lostreg is tested with timm 1.0.31)"
        )

    def prepare(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
        return match_qkv_bias_layout(normalise_key_names(state), model, source=source, timm_name=timm_name)

    model, random_weights = create_timm_model(spec, weights, model_kwargs=model_kwargs, prepare_state=prepare,
                                              filter_fn=checkpoint_filter_fn)
    return DinoV3Backbone(spec, model, device, random_weights=random_weights, rope=rope)


__all__ = [
    "AttentionInputs",
    "DinoV3Backbone",
    "WeightsError",
    "build_timm_eva",
    "match_qkv_bias_layout",
    "merge_heads",
    "project_qkv",
    "rotate_patch_tokens",
]
