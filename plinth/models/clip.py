"""CLIP: an image tower and a text tower projected into one embedding space, with a learned temperature.

Laid out like `transformers.CLIPModel` (`vision_model`, `text_model`, `visual_projection`, `text_projection`,
`logit_scale`). The image tower is Plinth's ViT (HF's CLIP vision tower, module for module). The text tower is either
Plinth's decoder body (GPT's `Decoder`, trained from scratch; a caption is read causally and embedded at its last
token, the end-of-text token, as CLIP's own text transformer does) or a BERT encoder holding a pretrained sentence
encoder such as all-MiniLM-L6-v2, mean-pooled and usually frozen (locked-text tuning, "LiT", Zhai et al. 2022), which
makes CLIP trainable on small compute and lets it name classes it never saw in a caption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plinth.config import PlinthError, option, validate
from plinth.models.bert import Bert, BertConfig
from plinth.models.gpt import Decoder, GPTConfig
from plinth.models.vit import ACTIVATIONS, VisionTransformer, ViTConfig, init_vision_weights, vit_flops_per_image

TEXT_TOWERS = ("gpt", "bert")


@dataclass
class CLIPConfig:
    """CLIP hyperparameters: the image tower's (`vision_*`), the text tower's (`text_*`) and the shared space's."""

    family: ClassVar[str] = "clip"

    name: str = option("custom", "preset this config came from (informational)")
    image_size: int = option(32, "input side in pixels", min=1)
    patch_size: int = option(4, "patch side in pixels", min=1)
    vision_n_layer: int = option(4, "image tower layers", min=1)
    vision_n_head: int = option(4, "image tower heads", min=1)
    vision_d_model: int = option(128, "image tower width", min=1)
    vision_d_ff: int = option(0, "image tower MLP width (0 = 4 x width)", min=0)
    hidden_act: str = option("gelu", "image tower activation", choices=ACTIVATIONS)
    text_tower: str = option("gpt", "gpt (Plinth's decoder body, trained) or bert (a pretrained encoder, e.g. "
                                    "MiniLM)", choices=TEXT_TOWERS)
    vocab_size: int = option(1024, "text vocabulary (set from the tokenizer)", min=1)
    text_n_layer: int = option(2, "text tower layers", min=1)
    text_n_head: int = option(4, "text tower heads", min=1)
    text_d_model: int = option(128, "text tower width", min=1)
    text_d_ff: int = option(0, "text tower MLP width (0 = the tower's rule)", min=0)
    text_seq_len: int = option(32, "longest caption in tokens (longer ones are cut)", min=2)
    text_max_positions: int = option(0, "position table of a BERT tower (0 = text_seq_len; MiniLM: 512)", min=0)
    embed_dim: int = option(128, "width of the shared embedding space", min=1)
    logit_scale_init: float = option(math.log(1 / 0.07), "initial log inverse temperature (CLIP: ln(1/0.07))")
    max_logit_scale: float = option(math.log(100.0), "the log inverse temperature is clamped to this (CLIP: ln 100)")

    def __post_init__(self) -> None:
        validate(self, "model config")

    def check(self) -> None:
        """Cross-field rules (each tower checks its own); raises PlinthError."""
        self.vision_config().check()
        if self.text_tower == "gpt":
            self.text_config().check()
        elif self.text_d_model % self.text_n_head:
            raise PlinthError(f"text_d_model ({self.text_d_model}) must be divisible by text_n_head")

    def vision_config(self) -> ViTConfig:
        """The image tower's config."""
        return ViTConfig(name=f"{self.name}-vision", image_size=self.image_size, patch_size=self.patch_size,
                         n_layer=self.vision_n_layer, n_head=self.vision_n_head, d_model=self.vision_d_model,
                         d_ff=self.vision_d_ff, hidden_act=self.hidden_act)

    def text_config(self) -> GPTConfig | BertConfig:
        """The text tower's config (GPTConfig or BertConfig)."""
        if self.text_tower == "bert":
            return BertConfig(name=f"{self.name}-text", vocab_size=self.vocab_size, n_layer=self.text_n_layer,
                              n_head=self.text_n_head, d_model=self.text_d_model,
                              d_ff=self.text_d_ff or 4 * self.text_d_model,
                              seq_len=max(self.text_max_positions, self.text_seq_len))
        return GPTConfig(name=f"{self.name}-text", vocab_size=self.vocab_size, n_layer=self.text_n_layer,
                         n_head=self.text_n_head, n_kv_head=self.text_n_head, d_model=self.text_d_model,
                         d_ff=self.text_d_ff, seq_len=self.text_seq_len)


# The MiniLM text tower's fields (all-MiniLM-L6-v2), for `--text_encoder minilm`.
MINILM_TEXT = dict(text_tower="bert", vocab_size=30522, text_n_layer=6, text_n_head=12, text_d_model=384,
                   text_d_ff=1536, text_max_positions=512)

PRESETS: dict[str, dict] = {
    "clip-test": dict(image_size=16, patch_size=4, vision_n_layer=2, vision_n_head=2, vision_d_model=32,
                      vocab_size=300, text_n_layer=2, text_n_head=2, text_d_model=32, text_seq_len=16, embed_dim=32),
    "clip-tiny": dict(image_size=32, patch_size=4, vision_n_layer=4, vision_n_head=4, vision_d_model=128,
                      text_n_layer=2, text_n_head=4, text_d_model=128, text_seq_len=32, embed_dim=128),
    "clip-small": dict(image_size=64, patch_size=8, vision_n_layer=6, vision_n_head=6, vision_d_model=384,
                       text_n_layer=4, text_n_head=6, text_d_model=384, text_seq_len=64, embed_dim=256),
}


class CLIP(nn.Module):
    """Image and text towers with projections and a learned temperature (HF `CLIPModel`'s layout).

    `forward(pixel_values, input_ids, attention_mask)` → (image embeddings (B, E), text embeddings (B', E), both
    L2-normalised, and the inverse temperature exp(logit_scale), clamped). Text is right-padded; `attention_mask`
    (B', T) is True for real tokens.
    """

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        vision, text = config.vision_config(), config.text_config()
        self.vision_model = VisionTransformer(vision)
        self.text_model = Bert(text) if config.text_tower == "bert" else Decoder(text)
        self.visual_projection = nn.Linear(vision.d_model, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.text_d_model, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        init_vision_weights(self.vision_model, self.config.vision_n_layer)
        if self.config.text_tower == "gpt":  # GPT's init: N(0, 0.02), residual outputs scaled by depth
            residual_std = 0.02 / math.sqrt(2 * self.config.text_n_layer)
            for name, p in self.text_model.named_parameters():
                if p.dim() == 2:
                    std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                    nn.init.normal_(p, std=std)
                else:
                    nn.init.ones_(p)
        # Projections as CLIP: std = width^-0.5, so the embeddings start at unit scale.
        nn.init.normal_(self.visual_projection.weight, std=self.config.vision_d_model ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=self.config.text_d_model ** -0.5)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, S, S) → image embeddings (B, E), unit length unless `normalize` is False."""
        z = self.visual_projection(self.vision_model(pixel_values)[1])
        return F.normalize(z.float(), dim=-1) if normalize else z

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded ids → the text tower's pooled output (B, text_d_model), before the projection.

        The decoder tower is causal, so right padding never reaches a real token and needs no mask; its pooled output
        is the hidden state at each row's last real token. The BERT tower mean-pools its real tokens.
        """
        if self.config.text_tower == "bert":
            return self.text_model.embed(input_ids, attention_mask)
        h = self.text_model(input_ids)  # (B, T, d)
        last = attention_mask.long().sum(1).clamp(min=1) - 1  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    normalize: bool = True) -> torch.Tensor:
        """(B, T) right-padded ids and mask → text embeddings (B, E), unit length unless `normalize` is False."""
        z = self.text_projection(self.text_features(input_ids, attention_mask))
        return F.normalize(z.float(), dim=-1) if normalize else z

    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale) with logit_scale clamped to [0, max_logit_scale] (CLIP's guard against instability)."""
        return self.logit_scale.clamp(0.0, self.config.max_logit_scale).exp()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings (B, E), text embeddings (B', E), inverse temperature ()); see the class doc."""
        return (self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                self.temperature_scale())

    def flops_per_image(self) -> float:
        """Training FLOPs per image-caption pair: the image tower's, plus the text tower's matmul weights over a
        caption of `text_seq_len` tokens (an upper bound: captions are usually shorter) at 6 FLOPs per weight and
        token when trained, 2 (forward only) when frozen."""
        c = self.config
        text = sum((6.0 if p.requires_grad else 2.0) * p.numel() for n, p in self.text_model.named_parameters()
                   if p.dim() == 2 and "embed" not in n)
        return vit_flops_per_image(self.config.vision_config()) + text * c.text_seq_len
