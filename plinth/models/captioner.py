"""Captioner: an image encoder whose patch states, projected, are the prefix of Plinth's decoder (LLaVA's layout:
`vision_model` → `multi_modal_projector` → `language_model`).

The decoder is GPT: the image's projected tokens go in through `GPT.model(inputs_embeds=...)` ahead of the text's
embeddings, and the LM head scores the text positions only. Captioning predicts a caption after a start token;
visual question answering is the same model conditioned on a question: the text is `question: ... answer:` and only
the answer is trained and generated. Decoding goes through Plinth's one loop (`models.generate.generate_tokens`)
via `ImagePrefixed`, which puts the prefix in front at every prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plinth.config import option, validate
from plinth.models.cache import KVCache
from plinth.models.gpt import GPT, GPTConfig
from plinth.models.vit import ACTIVATIONS, VisionTransformer, ViTConfig, init_vision_weights, vit_flops_per_image


@dataclass
class CaptionerConfig:
    """Captioner hyperparameters: the image encoder's (`vision_*`) and the decoder's (GPT's names)."""

    family: ClassVar[str] = "captioner"

    name: str = option("custom", "preset this config came from (informational)")
    image_size: int = option(32, "input side in pixels", min=1)
    patch_size: int = option(4, "patch side in pixels", min=1)
    vision_n_layer: int = option(4, "image encoder layers", min=1)
    vision_n_head: int = option(4, "image encoder heads", min=1)
    vision_d_model: int = option(128, "image encoder width", min=1)
    vision_d_ff: int = option(0, "image encoder MLP width (0 = 4 x width)", min=0)
    hidden_act: str = option("gelu", "image encoder activation", choices=ACTIVATIONS)
    vocab_size: int = option(1024, "text vocabulary (set from the tokenizer)", min=1)
    n_layer: int = option(2, "decoder layers", min=1)
    n_head: int = option(4, "decoder heads", min=1)
    d_model: int = option(128, "decoder width", min=1)
    d_ff: int = option(0, "decoder SwiGLU width (0 = the Llama rule)", min=0)
    # The rest of GPT's fields, so that any Plinth decoder (e.g. an imported Llama) can be the language model.
    n_kv_head: int = option(0, "decoder key/value heads (0 = n_head)", min=0)
    head_dim: int = option(0, "decoder head width (0 = d_model / n_head)", min=0)
    rope_theta: float = option(10000.0, "decoder RoPE base frequency", gt=0.0)
    norm_eps: float = option(1e-5, "decoder RMSNorm epsilon", gt=0.0)
    tie_embeddings: bool = option(True, "decoder shares its input embedding and output projection")
    attention_bias: bool = option(False, "decoder biases on q, k, v and o")
    qkv_bias: bool = option(False, "decoder biases on q, k and v only")
    seq_len: int = option(48, "text tokens (question + answer, or caption) after the image prefix", min=2)

    def __post_init__(self) -> None:
        validate(self, "model config")

    def check(self) -> None:
        """Cross-field rules of both parts; raises PlinthError."""
        self.vision_config().check()
        self.decoder_config().check()

    @property
    def n_prefix(self) -> int:
        """Image tokens ahead of the text: the class token and one per patch."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def vision_config(self) -> ViTConfig:
        """The image encoder's config."""
        return ViTConfig(name=f"{self.name}-vision", image_size=self.image_size, patch_size=self.patch_size,
                         n_layer=self.vision_n_layer, n_head=self.vision_n_head, d_model=self.vision_d_model,
                         d_ff=self.vision_d_ff, hidden_act=self.hidden_act)

    def decoder_config(self) -> GPTConfig:
        """The decoder's config; its context holds the image prefix and the text."""
        return GPTConfig(name=f"{self.name}-decoder", vocab_size=self.vocab_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_kv_head=self.n_kv_head or self.n_head, d_model=self.d_model,
                         head_dim=self.head_dim, d_ff=self.d_ff, seq_len=self.n_prefix + self.seq_len,
                         rope_theta=self.rope_theta, norm_eps=self.norm_eps, tie_embeddings=self.tie_embeddings,
                         attention_bias=self.attention_bias, qkv_bias=self.qkv_bias)


PRESETS: dict[str, dict] = {
    "captioner-test": dict(image_size=16, patch_size=4, vision_n_layer=2, vision_n_head=2, vision_d_model=32,
                           vocab_size=300, n_layer=2, n_head=2, d_model=32, seq_len=24),
    "captioner-tiny": dict(image_size=32, patch_size=4, vision_n_layer=4, vision_n_head=4, vision_d_model=128,
                           n_layer=2, n_head=4, d_model=128, seq_len=32),
}


class Projector(nn.Module):
    """Image states → decoder embeddings: linear, GELU, linear (LLaVA's `multi_modal_projector`)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.linear_2 = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, d_in) → (B, P, d_out)."""
        return self.linear_2(F.gelu(self.linear_1(x)))


class Captioner(nn.Module):
    """Image encoder + projector + GPT decoder: `forward(pixel_values, input_ids)` → logits (B, T, V) of the text."""

    config_class = CaptionerConfig

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config.vision_config())
        self.multi_modal_projector = Projector(config.vision_d_model, config.d_model)
        self.language_model = GPT(config.decoder_config())
        init_vision_weights(self.vision_model, config.vision_n_layer)
        with torch.no_grad():
            for p in (self.multi_modal_projector.linear_1.weight, self.multi_modal_projector.linear_2.weight):
                nn.init.normal_(p, std=0.02)

    def tie_weights(self) -> None:
        """Re-tie the decoder's embedding and head (after `to_empty`)."""
        self.language_model.tie_weights()

    def image_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → the decoder's image prefix (B, n_prefix, d_model): every token's final, normed state."""
        h = self.vision_model(pixel_values)[0]  # (B, 1+N, d_v)
        return self.multi_modal_projector(self.vision_model.post_layernorm(h))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) in fp32 at the T text positions of ids (B, T), read after the image prefix."""
        prefix = self.image_prefix(pixel_values) if prefix is None else prefix  # (B, P, d)
        text = self.language_model.model.embed_tokens(input_ids)  # (B, T, d)
        h = self.language_model.model(inputs_embeds=torch.cat([prefix, text.to(prefix.dtype)], dim=1))  # (B, P+T, d)
        return self.language_model.lm_head(h[:, prefix.shape[1]:]).float()

    def flops_per_image(self) -> float:
        """Training FLOPs per example: the image encoder plus the decoder over prefix + text (PaLM-style 6N + attn)."""
        c, dec = self.config, self.config.decoder_config()
        from plinth.models.gpt import config_flops_per_token

        return vit_flops_per_image(c.vision_config()) + config_flops_per_token(dec) * dec.seq_len


class _TextBudget:
    """The decoding loop's view of the context: the decoder's, less the image prefix."""

    def __init__(self, seq_len: int, vocab_size: int) -> None:
        self.seq_len, self.vocab_size = seq_len, vocab_size


class ImagePrefixed(nn.Module):
    """A decoder for `generate_tokens` whose every prefill starts with the image prefix of its batch.

    The loop prefills prompts (and re-reads a window when it slides) on an empty cache; at that moment this puts the
    image tokens in front (real tokens, in the mask). Single-token steps go to the decoder as usual.
    """

    def __init__(self, captioner: Captioner, prefix: torch.Tensor) -> None:
        super().__init__()
        self.captioner, self.prefix = captioner, prefix  # prefix (B, P, d)
        c = captioner.config
        self.config = _TextBudget(c.seq_len, c.vocab_size)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None) -> KVCache:
        """A cache for `max_len` text tokens plus the prefix."""
        return self.captioner.language_model.new_cache(batch_size, max_len + self.prefix.shape[1], device,
                                                       self.prefix.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, T', V), as `GPT.forward`."""
        lm = self.captioner.language_model
        if cache is None or cache.length > 0:
            return lm(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        B, P = self.prefix.shape[:2]
        text = lm.model.embed_tokens(input_ids).to(self.prefix.dtype)  # (B, T, d)
        mask = None
        if attention_mask is not None:  # left-padded prompts: pads sit between the prefix and the text, hidden
            mask = torch.cat([torch.ones(B, P, dtype=torch.bool, device=attention_mask.device),
                              attention_mask.bool()], dim=1)
        h = lm.model(inputs_embeds=torch.cat([self.prefix, text], dim=1), cache=cache, attention_mask_bt=mask)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return lm.lm_head(h).float()


def prefix_tokens(image_size: int, patch_size: int) -> int:
    """Image tokens a captioner of this geometry puts ahead of its text."""
    return (image_size // patch_size) ** 2 + 1


