"""What every timm backbone shares: construction, checks, the forward loop, tracing, edits, building.

:class:`TimmBackbone` runs a timm model block by block over its own modules instead of hooking
``model.forward``: the token sequence is assembled by the family (so each family's official
position handling applies), blocks after the deepest requested layer are never run, and the only
hooks are the scoped ones of :mod:`lostreg.backbones.edits`, which cannot be left behind.

A family joins with a small subclass that supplies four steps:

* :meth:`TimmBackbone._check_model`: refuse a model the steps below would not read exactly.
* :meth:`TimmBackbone._embed`: patch tokens, prefix tokens and position information, before
  ``norm_pre``; returns the per-forward context every block needs (DINOv3: its RoPE table).
* :meth:`TimmBackbone._pre_blocks` / :meth:`TimmBackbone._block_forward`: what runs between
  the embedding and block 0, and one block.
* :meth:`TimmBackbone._features` / :meth:`TimmBackbone._attention`: the q/k/v feature channels
  of a block, and its q/k/v per head as its softmax sees them.

Features are always the patch rows ``[P : P + rows*cols]``, so tokens a forward edit appends after
the patches (a test-time register) never reach the discovery methods.
"""

from __future__ import annotations

import abc
import copy
import warnings
from typing import Any, Callable, Collection, NamedTuple, Sequence

import torch
from torch import nn

from lostreg.backbones.base import Backbone
from lostreg.backbones.edits import ForwardEdit, run_with_hidden
from lostreg.backbones.registry import BackboneSpec
from lostreg.backbones.trace import Trace
from lostreg.backbones.weights import RandomWeightsWarning, hub_weights_file, load_into_model, read_state_dict
from lostreg.errors import ConfigError
from lostreg.precision import forward_precision
from lostreg.protocol import FEATURE_KINDS, OUTPUT_NORMS, OUTPUT_TOKENS, FeatureKey

__all__ = [
    "RANDOM_WEIGHTS_SEED",
    "AttentionTensors",
    "ForwardState",
    "TimmBackbone",
    "attention_scale",
    "create_timm_model",
]

#: ``--weights random`` is this seed's initialisation, the same on every run and every family.
RANDOM_WEIGHTS_SEED = 0

#: ``fn(layer, hidden)``: reads block ``layer``'s MLP hidden activation (B, T, H); returns None.
HiddenReader = Callable[[int, torch.Tensor], None]


class ForwardState(NamedTuple):
    """Tokens between two blocks of one forward pass.

    Attributes:
        tokens: (B, T, D) the tokens entering block ``next_block`` (T as in :class:`Trace`).
        context: what every block needs besides the tokens, computed once per forward by the
            family's :meth:`TimmBackbone._embed` (DINOv3: the RoPE table (rows*cols, 2*head_dim);
            None for ViTs with absolute position embeddings).
        grid_hw: (rows, cols) of the patch grid.
        next_block: index of the next block to run (``num_layers`` after the last one).
    """

    tokens: torch.Tensor
    context: Any
    grid_hw: tuple[int, int]
    next_block: int


class AttentionTensors(NamedTuple):
    """One block's attention inputs for every token, each (B, heads, T, head_dim).

    Attributes:
        q, k: as projected, after the block's ``q_norm``/``k_norm``, before any rotation.
        v: values.
        q_attn, k_attn: what the softmax sees (rotated patch rows for RoPE families; ``q``/``k`` otherwise).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_attn: torch.Tensor
    k_attn: torch.Tensor


def attention_scale(attn: nn.Module, head_dim: int) -> float:
    """The factor a timm attention module multiplies ``q @ kᵀ`` by.

    timm's fused path calls ``scaled_dot_product_attention`` without a scale, i.e.
    ``1/sqrt(head_dim)`` whatever ``attn.scale`` says; the unfused path uses ``attn.scale``.
    """
    if getattr(attn, "fused_attn", False) or not hasattr(attn, "scale"):
        return float(head_dim ** -0.5)
    return float(attn.scale)


class TimmBackbone(Backbone):
    """Patch features, traces and forward edits of a timm transformer (see the module docstring).

    Args:
        spec: registry entry.
        model: the timm model, built with ``dynamic_img_size=True``; put in eval mode on ``device``.
        device: where the model lives and features are returned.
        random_weights: True when the weights are random (boxes are meaningless).
        forward_edit: None (the plain model), or an edit to run with (see
            :meth:`~lostreg.backbones.base.Backbone.with_forward_edit`).

    Raises:
        ConfigError: a model this family cannot read exactly, non-square patches, or an edit on
            a family that does not support edits.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        device: torch.device,
        random_weights: bool,
        forward_edit: ForwardEdit | None = None,
    ) -> None:
        self._check_model(model, spec.name)
        ph, pw = model.patch_embed.patch_size
        if ph != pw:
            raise ConfigError(f"{spec.name}: non-square patches {ph}x{pw} are not supported")
        self.spec = spec
        self.model = model.to(device).eval()
        self.device = device
        self._random = random_weights
        self._edit: ForwardEdit | None = None
        if forward_edit is not None:
            self._check_edit(forward_edit)
            self._edit = forward_edit
        # timm's pretrained config of the *tagged* name carries the normalisation (DINOv3's
        # .sat493m has its own); it is set on the model even when no weights are downloaded.
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self._mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        self._std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))

    # --- family steps -----------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def _check_model(cls, model: nn.Module, name: str) -> None:
        """Raise :class:`ConfigError` (one line, naming ``name``) for a model the steps cannot read."""

    @abc.abstractmethod
    def _embed(self, images: torch.Tensor, pos_antialias: bool = False) -> tuple[torch.Tensor, Any]:
        """(B, 3, H, W) checked images -> ``(tokens, context)``; ``pos_antialias``: see :meth:`begin`.

        tokens: (B, P + rows*cols, D) ``[prefix, patches row-major]`` with the family's position
        information, before ``patch_drop``/``norm_pre``; context: see :class:`ForwardState`.
        """

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """What the model runs between the embedding and block 0 (identities at eval for DINO*)."""
        return self.model.norm_pre(self.model.patch_drop(x))

    def _block_forward(self, block: nn.Module, x: torch.Tensor, context: Any) -> torch.Tensor:
        """One block on (B, T, D) tokens."""
        return block(x)

    @abc.abstractmethod
    def _features(self, block: nn.Module, x: torch.Tensor, context: Any,
                  kinds: Collection[str]) -> dict[str, torch.Tensor]:
        """``{kind: (B, T, C)}`` feature channels of every token for ``kinds`` (a subset of q, k, v),
        from the tokens ``x`` entering ``block``. Only what is asked is computed."""

    @abc.abstractmethod
    def _attention(self, block: nn.Module, x: torch.Tensor, context: Any) -> AttentionTensors:
        """The attention inputs of ``block`` for the tokens ``x`` entering it."""

    # --- properties ---------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def num_registers(self) -> int:
        reg = getattr(self.model, "reg_token", None)
        return 0 if reg is None else int(reg.shape[1])

    @property
    def has_class_token(self) -> bool:
        return getattr(self.model, "cls_token", None) is not None

    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def has_attention(self) -> bool:
        return True

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
    def forward_edit(self) -> ForwardEdit | None:
        return self._edit

    @property
    def num_trailing_tokens(self) -> int:
        return 0 if self._edit is None else int(self._edit.num_tokens)

    # --- forward edits ------------------------------------------------------------------------

    def _check_edit(self, edit: ForwardEdit) -> None:
        if not self.supports_forward_edits:
            raise ConfigError(f"{self.name} cannot run forward edits (extra tokens, edited MLP units)")
        edit.check_model(self.model, self.name)

    def with_forward_edit(self, edit: ForwardEdit | None) -> "TimmBackbone":
        """A view of this backbone over the same model (shared, never modified) that runs ``edit``;
        None gives the plain model back."""
        if edit is not None:
            self._check_edit(edit)
        view = copy.copy(self)
        view._edit = edit
        return view

    # --- the forward pass ---------------------------------------------------------------------

    def begin(self, images: torch.Tensor, *, pos_antialias: bool = False) -> ForwardState:
        """The tokens entering block 0, with the edit's tokens appended after the patches.

        Args:
            images: (B, 3, H, W) float, normalised, H and W multiples of :attr:`patch_size`.
            pos_antialias: resize the position table with antialiasing instead of the family's
                official resize (:attr:`~lostreg.knobs.FeatureConfig.pos_embed_antialias`).

        Raises:
            ValueError: wrong shape, or a side that is not a multiple of the patch size (timm
                would raise a bare AssertionError; preprocessing pads to a multiple already, so
                this is a bug, not a user error).
        """
        p = self.patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x, context = self._embed(images, pos_antialias)
        if self._edit is not None:
            # After the position information and before norm_pre, as in the registers paper's
            # CLIP fork: the extra tokens get no position embedding.
            x = self._edit.append_tokens(x)
        grid_hw = self.grid_hw((int(images.shape[-2]), int(images.shape[-1])))
        return ForwardState(self._pre_blocks(x), context, grid_hw, 0)

    def run_block(self, index: int, x: torch.Tensor, context: Any = None,
                  read_hidden: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Block ``index`` (0-based) on tokens ``x`` laid out as :meth:`begin` lays them out.

        With a forward edit listing this block, the block runs with its MLP hidden activation
        edited; ``read_hidden`` sees that activation (after the edit). Either is a hook that
        exists only during this call and must fire exactly once.
        """
        block = self.model.blocks[index]
        edit = self._edit if self._edit is not None and index in self._edit.layers else None
        if edit is None and read_hidden is None:
            return self._block_forward(block, x, context)
        prefix = self.num_prefix_tokens

        def on_hidden(hidden: torch.Tensor) -> torch.Tensor:
            if edit is not None:
                hidden = edit.edit_hidden(hidden, index, prefix)
            if read_hidden is not None:
                read_hidden(hidden)
            return hidden

        return run_with_hidden(block, on_hidden, lambda: self._block_forward(block, x, context),
                               f"{self.name} block {index}")

    def advance(self, state: ForwardState, stop: int, *, read_hidden: HiddenReader | None = None,
                hidden_layers: Collection[int] = ()) -> ForwardState:
        """Run blocks ``state.next_block .. stop - 1``; the state entering block ``stop``.

        Args:
            state: from :meth:`begin` or an earlier :meth:`advance` (reusable: never modified).
            stop: block index to stop before (``num_layers`` = through the last block).
            read_hidden: called as ``read_hidden(layer, hidden)`` with the MLP hidden activation
                (B, T, H) of every block in ``hidden_layers`` that runs.
            hidden_layers: blocks whose hidden activation ``read_hidden`` reads.
        """
        if not state.next_block <= stop <= self.num_layers:
            raise ValueError(f"cannot advance from block {state.next_block} to {stop} of {self.num_layers}")
        x = state.tokens
        for index in range(state.next_block, stop):
            reader = None
            if read_hidden is not None and index in hidden_layers:
                reader = (lambda i: lambda hidden: read_hidden(i, hidden))(index)
            x = self.run_block(index, x, state.context, reader)
        return state._replace(tokens=x, next_block=stop)

    def prefix_tokens(self, batch: int) -> list["torch.Tensor"]:
        """The model's prefix tokens, each expanded to the batch, in timm's order: CLS (B, 1, D), then the
        trained registers (B, R, D); only those the model has."""
        model = self.model
        return [token.expand(batch, -1, -1) for token in (model.cls_token, model.reg_token) if token is not None]

    def patch_tokens(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The patch part ``[P : P + rows*cols]`` of a token tensor (B, T, C) -> (B, rows*cols, C)."""
        start = self.num_prefix_tokens
        n = grid_hw[0] * grid_hw[1]
        if x.shape[1] != start + n + self.num_trailing_tokens:
            raise ValueError(
                f"{x.shape[1]} tokens != {start} prefix + {n} patches + {self.num_trailing_tokens} trailing"
            )
        return x[:, start:start + n]

    @torch.inference_mode()
    def extract_many(self, images: torch.Tensor, keys: Sequence[FeatureKey],
                     precision: str = "fp32", *, pos_antialias: bool = False) -> dict[FeatureKey, torch.Tensor]:
        keys = [FeatureKey(*key) for key in keys]
        for key in keys:
            self.check_feature_key(key, pos_antialias)  # before the forward pass: a bad key costs nothing
        wanted: dict[int, list[FeatureKey]] = {}
        for key in keys:
            # The output norms need every block (and the final norm) after the last one asked.
            index = self.num_layers - 1 if key == OUTPUT_NORMS else self.layer_index(key.layer)
            wanted.setdefault(index, []).append(key)
        images = images.to(self.device, torch.float32)
        out: dict[FeatureKey, torch.Tensor] = {}
        # The features feed LOST's sign thresholds: by default no TF32 in the patch-embedding conv or
        # matmuls; precision=tf32|bf16 trades that for speed (the features still leave as float32).
        with forward_precision(precision, self.device):
            state = self.begin(images, pos_antialias=pos_antialias)
            last = max(wanted)
            for index in range(last + 1):
                here = wanted.get(index, [])
                kinds = {key.which for key in here if key.which in FEATURE_KINDS}
                if kinds:
                    # One projection serves every kind asked of this layer.
                    channels = self._features(self.model.blocks[index], state.tokens, state.context, kinds)
                    for key in here:
                        if key.which in FEATURE_KINDS:
                            out[key] = self.patch_tokens(channels[key.which], state.grid_hw).float()
                # Output tokens and output norms are read after the block has run.
                after = [key for key in here if key.which not in FEATURE_KINDS]
                if index < last or after:
                    state = self.advance(state, index + 1)
                outputs = [key for key in after if key.which == OUTPUT_TOKENS]
                if outputs:
                    tokens = self.patch_tokens(self.output_tokens(state), state.grid_hw).float()
                    out.update((key, tokens) for key in outputs)
            if OUTPUT_NORMS in keys:
                final = self.patch_tokens(self.model.norm(state.tokens), state.grid_hw).float()
                out[OUTPUT_NORMS] = final.norm(dim=-1, keepdim=True)
        return {key: out[key] for key in keys}  # in the order asked

    def output_tokens(self, state: ForwardState) -> torch.Tensor:
        """The output tokens (B, T, D) of the block before ``state.next_block``: the residual stream,
        after the model's final norm when it is the last block (``features.which=out``)."""
        return self.model.norm(state.tokens) if state.next_block == self.num_layers else state.tokens

    @torch.inference_mode()
    def trace(self, images: torch.Tensor, layer: int = -1, *, keep_layers: bool = False,
              precision: str = "fp32", pos_antialias: bool = False) -> Trace:
        index = self.layer_index(layer)
        self.check_feature_key(FeatureKey("k", layer), pos_antialias)
        images = images.to(self.device, torch.float32)
        kept: list[torch.Tensor] = []
        with forward_precision(precision, self.device):
            state = self.begin(images, pos_antialias=pos_antialias)
            for i in range(self.num_layers):
                if i == index:
                    block = self.model.blocks[i]
                    channels = self._features(block, state.tokens, state.context, FEATURE_KINDS)
                    attention = self._attention(block, state.tokens, state.context)
                state = self.advance(state, i + 1)
                if i == index:
                    channels[OUTPUT_TOKENS] = self.output_tokens(state)
                if keep_layers:
                    kept.append(state.tokens.float())
            final = self.model.norm(state.tokens)
        q, k, v, q_attn, k_attn = (t.float() for t in attention)
        return Trace(
            final=final.float(),
            prenorm=state.tokens.float(),
            feature_tokens={kind: t.float() for kind, t in channels.items()},
            layer=index,
            num_prefix_tokens=self.num_prefix_tokens,
            num_registers=self.num_registers,
            has_class_token=self.has_class_token,
            grid_hw=state.grid_hw,
            num_trailing_tokens=self.num_trailing_tokens,
            q=q, k=k, v=v, q_attn=q_attn, k_attn=k_attn,
            scale=attention_scale(self.model.blocks[index].attn, q.shape[-1]),
            layers=tuple(kept) if keep_layers else None,
        )


def create_timm_model(
    spec: BackboneSpec,
    weights: str | None,
    *,
    model_kwargs: dict[str, object] | None = None,
    prepare_state: Callable[[dict[str, torch.Tensor], nn.Module, str], dict[str, torch.Tensor]] | None = None,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
) -> tuple[nn.Module, bool]:
    """Build ``spec.timm_name`` and fill its weights; for the families' builders.

    The model is always created from a seeded random init (:data:`RANDOM_WEIGHTS_SEED`, without
    touching the caller's RNG), so ``weights="random"`` gives the same model on every run. Default
    ``img_size`` keeps the pretrained position grid; ``dynamic_img_size`` accepts any grid.

    Args:
        spec: registry entry with a ``timm_name``.
        weights: None/"pretrained" (timm's hub file, cached as timm caches it), "random", or the
            path of a checkpoint file.
        model_kwargs: extra ``timm.create_model`` arguments (tests shrink ``depth``).
        prepare_state: ``(state, model, source) -> state`` run on the file's tensors before
            loading (a family's own layout fixes).
        filter_fn: timm's ``checkpoint_filter_fn`` of the family (None = VisionTransformer's).

    Returns:
        ``(model, random_weights)``.

    Warns:
        RandomWeightsWarning: for ``weights="random"``.

    Raises:
        WeightsError, WeightsUnavailableError: one-line messages.
    """
    import timm

    assert spec.timm_name is not None
    weights = weights or "pretrained"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = timm.create_model(
            spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, **(model_kwargs or {})
        )
    random_weights = weights == "random"
    if random_weights:
        warnings.warn(
            f"{spec.name}: RANDOM weights (--weights random): boxes are meaningless; "
            "use this only to test the pipeline.",
            RandomWeightsWarning,
            stacklevel=3,  # the caller of the family's builder (build_backbone)
        )
    else:
        path = hub_weights_file(spec.timm_name) if weights == "pretrained" else weights
        state = read_state_dict(path)
        if prepare_state is not None:
            state = prepare_state(state, model, str(path))
        load_into_model(model, state, source=str(path), arch=f"{spec.name} ({spec.timm_name})", filter_fn=filter_fn)
    return model, random_weights
