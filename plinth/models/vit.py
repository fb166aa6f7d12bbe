"""ViT: a vision transformer laid out and named like `transformers`' CLIP vision tower.

`ViT.vision_model` is `CLIPVisionTransformer` module for module (embeddings with a class token, `pre_layrnorm`,
pre-norm encoder layers with `q_proj`/`k_proj`/`v_proj`/`out_proj` and `fc1`/`fc2`, `post_layernorm` on the class
token), so its state-dict keys are `CLIPModel`'s `vision_model.*` keys and a CLIP vision checkpoint converts by
copying (tests/test_vision_models.py checks `transformers.CLIPVisionModel` with the same weights to 1e-5). An optional
`classifier` on the pooled output makes it an image classifier; the CLIP and captioner families reuse the tower.

Two implementation choices that keep HF's weights and outputs: the patch embedding (a conv with stride = kernel) runs
as a reshape and one matmul, and q, k, v come from one matmul over the three weights concatenated. Measured against
HF's conv and three projections on a 2-core CPU, a training step is the same speed within noise (both are
matmul-bound: docs/benchmarks.md); they stay because they are short and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plinth.config import PlinthError, option, validate

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")


@dataclass
class ViTConfig:
    """Vision transformer hyperparameters; the `vit` family's config.json fields."""

    family: ClassVar[str] = "vit"

    name: str = option("custom", "preset this config came from (informational)")
    image_size: int = option(32, "input side in pixels (square images)", min=1)
    patch_size: int = option(4, "side of one patch in pixels; image_size must be a multiple", min=1)
    n_channels: int = option(3, "input channels", min=1)
    n_layer: int = option(4, "transformer encoder layers", min=1)
    n_head: int = option(4, "attention heads", min=1)
    d_model: int = option(128, "width of the token stream", min=1)
    d_ff: int = option(0, "MLP hidden width; 0 means 4 x d_model", min=0)
    hidden_act: str = option("gelu", "MLP activation: gelu, quick_gelu (OpenAI CLIP's) or gelu_tanh",
                             choices=ACTIVATIONS)
    norm_eps: float = option(1e-5, "LayerNorm epsilon", gt=0.0)
    n_classes: int = option(0, "classes of the classification head on the pooled output (0 = encoder only)", min=0)

    def __post_init__(self) -> None:
        validate(self, "model config")
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model

    def check(self) -> None:
        """Cross-field rules; raises PlinthError naming the fields."""
        if self.image_size % self.patch_size:
            raise PlinthError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.d_model % self.n_head:
            raise PlinthError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")

    @property
    def n_patches(self) -> int:
        """Patches per image (tokens, not counting the class token)."""
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, dict] = {
    "vit-test": dict(image_size=16, patch_size=4, n_layer=2, n_head=2, d_model=32),
    "vit-tiny": dict(image_size=32, patch_size=4, n_layer=4, n_head=4, d_model=128),
    "vit-small": dict(image_size=64, patch_size=8, n_layer=6, n_head=6, d_model=384),
    # OpenAI CLIP ViT-B/32's vision tower shape.
    "vit-b32": dict(image_size=224, patch_size=32, n_layer=12, n_head=12, d_model=768, hidden_act="quick_gelu"),
}


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP nonlinearity: exact GELU, CLIP's quick GELU x*sigmoid(1.702x), or GELU's tanh approximation."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return x * torch.sigmoid(1.702 * x)


class VisionEmbeddings(nn.Module):
    """Patch embedding + class token + learned positions (HF `CLIPVisionEmbeddings`)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch = config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(config.d_model))
        self.patch_embedding = nn.Conv2d(config.n_channels, config.d_model, config.patch_size, config.patch_size,
                                         bias=False)
        self.position_embedding = nn.Embedding(config.n_patches + 1, config.d_model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, 1 + n_patches, d_model)."""
        B, C, H, W = pixel_values.shape
        p = self.patch
        if H % p or W % p or (H // p) * (W // p) + 1 != self.position_embedding.num_embeddings:
            raise PlinthError(f"images of {H}x{W} do not fit this model's {self.position_embedding.num_embeddings - 1}"
                              f" patches of {p}x{p}")
        # A conv whose stride equals its kernel is a matmul over non-overlapping patches: one GEMM with the conv's
        # weights (same layout: d, C, p, p), so HF checkpoints load unchanged.
        patches = pixel_values.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        patches = patches.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)
        x = F.linear(patches, self.patch_embedding.weight.flatten(1))  # (B, N, d)
        cls = self.class_embedding.to(x.dtype).expand(B, 1, -1)  # (B, 1, d)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.to(x.dtype)  # (B, 1+N, d)


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention with biases (HF `CLIPAttention`)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_head, self.head_dim = config.n_head, d // config.n_head
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        B, T, d = x.shape
        # One GEMM over q, k, v (HF keeps three projections; the weights and the result are the same).
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3d, d)
        b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])  # (3d,)
        qkv = F.linear(x, w, b).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, n_head, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, n_head, T, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, n_head, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))


class VisionMLP(nn.Module):
    """fc1 → activation → fc2 (HF `CLIPMLP`)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.act = config.hidden_act
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        return self.fc2(activation(self.act, self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x)) (HF `CLIPEncoderLayer`)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.self_attn = VisionAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = VisionMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    """The stack of encoder layers (HF `CLIPEncoder`)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(config.n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        for layer in self.layers:
            x = layer(x)
        return x


class VisionTransformer(nn.Module):
    """The tower (HF `CLIPVisionTransformer`): returns (last hidden states (B, 1+N, d), pooled (B, d))."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.d_model, eps=config.norm_eps)  # sic: HF's spelling
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → last_hidden_state (B, 1+N, d) (before the final norm, as HF), pooled (B, d) = normed
        class token."""
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return x, self.post_layernorm(x[:, 0])


def init_vision_weights(module: nn.Module, n_layer: int) -> None:
    """Matrices ~ N(0, 0.02) (out_proj and fc2 scaled by 1/sqrt(2 n_layer), as GPT-2 for residual outputs), biases 0,
    norm gains 1, class token and positions ~ N(0, 0.02)."""
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=residual_std if name.endswith(("out_proj.weight", "fc2.weight")) else 0.02)


class ViT(nn.Module):
    """Vision transformer built from a `ViTConfig`: `forward(pixel_values)` → class logits (B, n_classes), or the
    pooled features (B, d_model) when the config has no classes."""

    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)
        self.classifier = nn.Linear(config.d_model, config.n_classes) if config.n_classes else None
        init_vision_weights(self, config.n_layer)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled image features (B, d_model): the normed class token."""
        return self.vision_model(pixel_values)[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) in fp32, or features (B, d_model) without a classifier."""
        pooled = self.features(pixel_values)
        return self.classifier(pooled).float() if self.classifier is not None else pooled

    def flops_per_image(self) -> float:
        """Training FLOPs per image: 6 x (matmul weights x tokens) + 12 x n_layer x T^2 x d (attention)."""
        return vit_flops_per_image(self.config)


def vit_flops_per_image(c: ViTConfig) -> float:
    """Training FLOPs (forward + backward) of one image through the tower, PaLM-style (6N per token + attention)."""
    T = c.n_patches + 1
    per_layer = 4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff
    matmul = c.n_layer * per_layer * T + c.n_channels * c.patch_size ** 2 * c.d_model * c.n_patches
    attention = 2 * c.n_layer * T * T * c.d_model
    return float(6 * matmul + 6 * attention)
