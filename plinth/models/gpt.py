"""GPT: a decoder-only transformer in the Llama layout (RoPE, RMSNorm, SwiGLU, grouped-query attention).

Submodule names equal Hugging Face `LlamaForCausalLM`'s, so `state_dict()` keys are HF keys and converting a
checkpoint either way is a file copy (see `io.py`). `forward` returns logits, never a loss: training and
evaluation share it and put their own loss beside their loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plinth.common import PlinthError
from plinth.config import PRESETS, ModelConfig, preset
from plinth.models.layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary


class KVCache:
    """Preallocated keys/values for every layer, plus which slots hold real tokens and each row's next position.

    Every row advances by the same number of slots per forward call (left padding fills slots too), so one
    integer `length` says where the next keys go; `key_mask` hides the pad slots and `next_pos` keeps RoPE
    positions counted from each row's first real token.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # True = real token
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # slots filled, the same for every row
        self.has_padding = False  # any pad slot so far; without one, attention can skip the explicit mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values (B, n_kv_head, T, hd) at the current length; return all held so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, n_kv_head, end, hd)

    def reset(self) -> None:
        """Empty the cache for reuse with a new batch of the same size."""
        self.length, self.has_padding = 0, False
        self.key_mask.zero_()
        self.next_pos.zero_()


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query key/value heads (HF `LlamaAttention`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model); `mask` (B, 1, T, S) bool, or None for plain causal attention."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, n_kv_head, S, hd), S = cached + T
        # SDPA's native GQA beats repeating k/v heads on CPU (1.2x training, 8x one-token decode over a cache,
        # identical output); is_causal is only right when queries and keys start together (no cache prefix).
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and k.shape[2] == T and T > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, n_head, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, n_head * hd)
        return self.o_proj(y)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) (HF `LlamaDecoderLayer`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Declared in HF's order so state_dict() lists keys exactly as LlamaForCausalLM does.
        self.self_attn = Attention(config)
        self.mlp = SwiGLU(config.d_model, config.d_ff)
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm: the part HF calls `model` (`LlamaModel`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.seq_len, config.rope_theta)


class GPT(nn.Module):
    """Decoder-only language model built from a `ModelConfig`; `forward(input_ids) -> logits`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """Make lm_head share the embedding matrix when the config asks for it (again after `to_empty`)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Matrices ~ N(0, 0.02), norm gains 1; residual output projections scaled down (GPT-2 init)."""
        # o_proj and down_proj each add into the residual stream, 2 per block; scaling their std by
        # 1/sqrt(2 * n_layer) keeps the stream's variance at init independent of depth (GPT-2 paper, sec. 2.3).
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # tied weights appear once
            if p.dim() == 2:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            else:
                nn.init.ones_(p)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of (unique) parameters; `non_embedding` leaves out the embedding and an untied lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
            if self.lm_head.weight is not self.model.embed_tokens.weight:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6*N + 6*d_model*vocab + 12*n_layer*d_model*seq_len.

        N counts the block matrices (q, k, v, o, gate, up, down; norms and the embedding lookup do no matmuls),
        6 = 2 FLOPs per multiply-add x (1 forward + 2 backward); the lm_head is a d_model x vocab matmul whether
        tied or not; the last term is QK^T and attention-times-V over the full `seq_len` context (default
        config.seq_len), without discounting the causal mask, as in PaLM (Chowdhery et al. 2022, appendix B) and
        Chinchilla (Hoffmann et al. 2022, appendix F).
        """
        return config_flops_per_token(self.config, seq_len)

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` tokens (default: the weights' device/dtype)."""
        w = self.lm_head.weight
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim, device or w.device, dtype or w.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) in fp32 for token ids (B, T).

        `cache`: keys/values of earlier tokens; this call's are appended to it. `attention_mask` (B, T), True
        (or 1) for real tokens and False for left padding: pad tokens are hidden from attention and RoPE
        positions count from each row's first real token. Logits at pad positions are meaningless.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {(B, T)}")
            attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        start = 0
        if cache is not None:
            start = cache.length
            if B != cache.batch_size or start + T > cache.max_len:
                raise PlinthError(
                    f"KV cache holds {cache.batch_size} rows of {cache.max_len} tokens; cannot add a "
                    f"({B}, {T}) batch after {start} tokens"
                )
            positions, mask = self._cached_positions_and_mask(cache, attention_mask, T)
        elif attention_mask is not None:
            positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
            mask = _attention_mask(attention_mask, 0, T)
        else:
            positions, mask = None, None  # the training path: positions 0..T-1, causal attention
        cos, sin = self.model.rotary_emb(positions, start + T)
        if positions is not None:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): one table per row, shared by heads
        x = self.model.embed_tokens(input_ids)  # (B, T, d_model)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length = start + T
        # fp32 logits even under bf16 autocast: the softmax/cross-entropy over a large vocabulary needs them.
        return self.lm_head(self.model.norm(x)).float()

    def _cached_positions_and_mask(
        self, cache: KVCache, attention_mask: torch.Tensor | None, T: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RoPE positions (B, T) for the new tokens and the attention mask over the cache; updates the cache."""
        start = cache.length
        real = attention_mask
        if real is None:
            real = torch.ones(cache.batch_size, T, dtype=torch.bool, device=cache.key_mask.device)
        elif not cache.has_padding:
            cache.has_padding = not bool(real.all())  # one host sync per masked call, none per decode step
        # Pads before a row's first real token get position -1 -> clamped to 0; they are never attended to.
        positions = (cache.next_pos[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        cache.key_mask[:, start : start + T] = real
        cache.next_pos += real.long().sum(1)
        if not cache.has_padding and (start == 0 or T == 1):
            return positions, None  # plain causal prefill, or one new token that may see everything
        return positions, _attention_mask(cache.key_mask[:, : start + T], start, T)


def _attention_mask(key_mask: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Bool (B, 1, T, S) mask: query i (at slot start+i) sees real keys j <= start+i, and always itself.

    Letting a pad query see itself keeps every row of the mask non-empty, so softmax never divides by zero
    (a fully masked row gives NaN in some SDPA kernels); pad outputs are discarded anyway.
    """
    S = key_mask.shape[1]
    q_slot = torch.arange(start, start + T, device=key_mask.device)[:, None]  # (T, 1)
    k_slot = torch.arange(S, device=key_mask.device)[None, :]  # (1, S)
    allowed = (k_slot <= q_slot) & key_mask[:, None, :]  # (B, T, S)
    allowed = allowed | (k_slot == q_slot)
    return allowed[:, None]  # (B, 1, T, S): broadcast over heads


# ----------------------------------------------------------------------------------------------------------------------
# Size and cost arithmetic (no model needed, so the 1b preset can be tabled without allocating it)


def _matmul_params(config: ModelConfig) -> int:
    """Weights of the linear layers inside the blocks (attention and MLP), the ones each token multiplies."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.n_head * hd + 2 * d * config.n_kv_head * hd + config.n_head * hd * d  # q, k+v, o
    mlp = 3 * d * config.d_ff  # gate, up, down
    return config.n_layer * (attn + mlp)


def config_params(config: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count of `GPT(config)`, computed arithmetically; equals `GPT(config).num_params(...)`."""
    norms = (2 * config.n_layer + 1) * config.d_model
    body = _matmul_params(config) + norms
    if non_embedding:
        return body
    embeddings = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
    return body + embeddings


def config_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) of `GPT(config)`; see `GPT.flops_per_token`."""
    seq_len = config.seq_len if seq_len is None else seq_len
    matmul = 6 * _matmul_params(config)
    lm_head = 6 * config.d_model * config.vocab_size
    attention = 12 * config.n_layer * config.d_model * seq_len
    return float(matmul + lm_head + attention)


def preset_table(vocab_size: int | None = None) -> list[dict]:
    """One row per size preset: shape, parameter count and training FLOPs per token (nothing is allocated)."""
    rows = []
    for name in PRESETS:
        cfg = preset(name, vocab_size=vocab_size)
        rows.append({
            "name": name, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head,
            "d_model": cfg.d_model, "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
            "params": config_params(cfg), "flops_per_token": config_flops_per_token(cfg),
        })
    return rows
