"""GPT: a decoder-only transformer in the Llama layout (RoPE, RMSNorm, SwiGLU, grouped-query attention).

Submodule names equal Hugging Face `LlamaForCausalLM`'s, so `state_dict()` keys are HF keys and converting a
checkpoint either way is a file copy (see `io.py`). The body (`GPT.model`, HF's `LlamaModel`) returns hidden states
(B, T, d_model); `GPT.forward` applies the LM head on top, for all positions or only the last few
(`logits_to_keep`), and never computes a loss: each objective puts its own beside its loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from plinth.config import PlinthError, option, validate
from plinth.models.cache import KVCache, attention_mask, padded_positions, segment_positions_and_mask
from plinth.models.layers import Linear, RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary, rope_scaling_problem


@dataclass
class GPTConfig:
    """Decoder-only transformer hyperparameters (Llama layout); the `gpt` family's config.json fields."""

    family: ClassVar[str] = "gpt"

    name: str = option("custom", "preset this config came from (informational)")
    vocab_size: int = option(4096, "vocabulary size; pretrain sets it from the tokenizer", min=1)
    n_layer: int = option(4, "number of transformer blocks", min=1)
    n_head: int = option(4, "attention (query) heads", min=1)
    n_kv_head: int = option(4, "key/value heads; fewer than n_head gives grouped-query attention", min=1)
    d_model: int = option(128, "residual stream width", min=1)
    head_dim: int = option(0, "width of one attention head; 0 means d_model / n_head", min=0)
    d_ff: int = option(0, "SwiGLU hidden width; 0 means the Llama rule (8/3 d_model, rounded up to 32)", min=0)
    seq_len: int = option(256, "context length in tokens", min=1)
    rope_theta: float = option(10000.0, "RoPE base frequency", gt=0.0)
    rope_scaling: dict[str, Any] | None = option(None, "RoPE frequency scaling: null, {rope_type: linear, factor} or "
                                                       "{rope_type: llama3, factor, low_freq_factor, high_freq_factor, "
                                                       "original_max_position_embeddings} (HF's rope_scaling)")
    norm_eps: float = option(1e-5, "RMSNorm epsilon", gt=0.0)
    tie_embeddings: bool = option(True, "share the input embedding and output projection weights")
    attention_bias: bool = option(False, "biases on the q, k, v and o projections (HF Llama's attention_bias)")
    qkv_bias: bool = option(False, "biases on the q, k and v projections only (the Qwen2 layout)")

    def __post_init__(self) -> None:
        validate(self, "model config")
        if self.d_ff == 0:
            self.d_ff = 32 * -(-int(8 * self.d_model / 3) // 32)
        if self.head_dim == 0:
            self.head_dim = self.d_model // self.n_head

    def check(self) -> None:
        """Cross-field rules; raises PlinthError naming the fields."""
        if self.head_dim == 0 and self.d_model % self.n_head:
            raise PlinthError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}), or set head_dim")
        head_dim = self.head_dim or self.d_model // self.n_head
        if head_dim % 2:
            raise PlinthError(f"head size ({head_dim}) must be even for RoPE")
        if self.n_head % self.n_kv_head:
            raise PlinthError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        problem = rope_scaling_problem(self.rope_scaling)
        if problem:
            raise PlinthError(problem)


# Named sizes, as keyword arguments of GPTConfig. The smallest is what tests use; `quickstart` trains `tiny`.
PRESETS: dict[str, dict] = {
    "test": dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64, seq_len=64, vocab_size=4096),
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=4, d_model=128, seq_len=256, vocab_size=4096),
    "small": dict(n_layer=6, n_head=6, n_kv_head=6, d_model=384, seq_len=512, vocab_size=32000),
    "base": dict(n_layer=12, n_head=12, n_kv_head=4, d_model=768, seq_len=1024, vocab_size=32000),
    "medium": dict(n_layer=24, n_head=16, n_kv_head=8, d_model=1024, seq_len=2048, vocab_size=32000),
    "large": dict(n_layer=24, n_head=16, n_kv_head=8, d_model=1536, seq_len=2048, vocab_size=32000),
    # TinyLlama-1.1B's shape.
    "1b": dict(n_layer=22, n_head=32, n_kv_head=4, d_model=2048, d_ff=5632, seq_len=2048, vocab_size=32000),
}


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query key/value heads (HF `LlamaAttention`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        bias = config.attention_bias or config.qkv_bias
        self.q_proj = Linear(config.d_model, self.n_head * self.head_dim, bias=bias)
        self.k_proj = Linear(config.d_model, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = Linear(config.d_model, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = Linear(self.n_head * self.head_dim, config.d_model, bias=config.attention_bias)

    def _projections(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rotated queries (B, n_head, T, hd), rotated keys and values (B, n_kv_head, T, hd).

        Three matmuls, not one on concatenated weights: measured no faster for training on a CPU, and a copy of the
        weights per decoded token would cost more than the matmul it replaces.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model); `mask` (B, 1, T, S) bool, or None for plain causal attention."""
        B, T, _ = x.shape
        q, k, v = self._projections(x, cos, sin)
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

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # Declared in HF's order so state_dict() lists keys exactly as LlamaForCausalLM does.
        self.self_attn = Attention(config)
        self.mlp = SwiGLU(config.d_model, config.d_ff)
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm: the body HF calls `model` (`LlamaModel`); returns hidden states."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.seq_len, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask_bt: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states (B, T, d_model) for token ids (B, T) or embeddings (B, T, d_model).

        `cache`: keys/values of earlier tokens; this call's are appended to it. `attention_mask_bt` (B, T), True
        (or 1) for real tokens and False for left padding: pads are hidden from attention and RoPE positions count
        from each row's first real token. Hidden states at pad positions are meaningless. `segment_ids` (B, T) (training
        on packed examples, no cache or attention mask): attention stays inside each run of equal ids and RoPE
        positions restart at each, so packed examples do not see each other.
        """
        if (cache is not None and inputs_embeds is None and attention_mask_bt is None and segment_ids is None
                and input_ids.shape[1] == 1 and type(cache) is KVCache and not cache.has_padding
                and not torch.is_grad_enabled() and self._decode_plan(cache)):
            return self._decode_one(input_ids, cache)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, d_model)
        B, T = x.shape[:2]
        real = attention_mask_bt
        if real is not None:
            if real.shape != (B, T):
                raise ValueError(f"attention_mask shape {tuple(real.shape)} != input shape {(B, T)}")
            real = real.to(device=x.device, dtype=torch.bool)
        start = cache.length if cache is not None else 0
        if cache is not None:
            if B != cache.batch_size:
                raise PlinthError(f"KV cache holds {cache.batch_size} rows; got a batch of {B}")
            positions, mask = cache.begin(real, T)
        elif segment_ids is not None:
            if real is not None:
                raise ValueError("segment_ids and attention_mask cannot be combined; give padding its own segment")
            positions, mask = segment_positions_and_mask(segment_ids.to(x.device))
        elif real is not None:
            positions, mask = padded_positions(real), attention_mask(real, 0, T)
        else:
            positions, mask = None, None  # the training path: positions 0..T-1, causal attention
        cos, sin = self.rotary_emb(positions, start + T)
        if positions is None and start:
            cos, sin = cos[start:], sin[start:]  # (T, hd): a cache with no padding continues at `start` in every row
        elif positions is not None:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): one table per row, shared by heads
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.end(T)
        return self.norm(x)

    def _plain(self) -> bool:
        """Whether every block is made of this module's own classes with no hooks: not wrapped (LoRA, quantized
        layers), not observed. Only then may `_decode_one` call the blocks' parts directly."""
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            parts = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if (type(layer) is not DecoderLayer or type(attn) is not Attention or type(mlp) is not SwiGLU
                    or type(layer.input_layernorm) is not RMSNorm or type(layer.post_attention_layernorm) is not RMSNorm
                    or any(type(p) is not Linear for p in parts)):
                return False
            for mod in (layer, attn, mlp, layer.input_layernorm, layer.post_attention_layernorm, *parts):
                if mod._forward_hooks or mod._forward_pre_hooks:
                    return False
        return True

    def _decode_plan(self, cache: KVCache) -> list[tuple] | None:
        """Each block's parts as bound `forward` methods for `_decode_one`, or None when a block is not plain.

        Worked out once per cache (one generation) and kept on it: looking the parts up through `nn.Module`
        attributes every step costs ~0.3 ms of a SmolLM2 step. A model changed in the middle of a generation
        (a hook added, a layer wrapped) is not seen until the next cache.
        """
        owner, plan = cache.decode_plan if cache.decode_plan is not None else (None, None)
        if owner is not self:
            plan = None
            if self._plain():
                dtype = self.embed_tokens.weight.dtype

                def product(lin: Linear):  # the Linear's own forward, or F.linear straight away when it would call it
                    if lin.splits(cache.batch_size, dtype):
                        return lin.forward
                    return lambda h, w=lin.weight, b=lin.bias: F.linear(h, w, b)

                plan = []
                for layer in self.layers:
                    attn, mlp = layer.self_attn, layer.mlp
                    plan.append((layer.input_layernorm.forward, product(attn.q_proj), product(attn.k_proj),
                                 product(attn.v_proj), product(attn.o_proj), layer.post_attention_layernorm.forward,
                                 product(mlp.gate_proj), product(mlp.up_proj), product(mlp.down_proj),
                                 attn.n_head, attn.n_kv_head, attn.head_dim))
            cache.decode_plan = (self, plan)
        return plan

    def _decode_one(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`forward` for one new token per row (B, 1) over a KV cache with no padding: the same operations in the
        same order, on the same modules, with the module calls unrolled into one loop (`_decode_plan`).

        A decode step of a small model is mostly per-call overhead between its weight reads (SmolLM2-135M on 2
        cores: ~7 ms of a ~42 ms step outside the matrix products, through 13 module calls and their views per
        block); this path cuts that to ~4 ms (`benchmarks/decode_smollm2.py`). Results equal `forward`'s bit for
        bit (`tests/test_models.py::test_decode_fast_path_equals_the_general_forward`).
        """
        x = self.embed_tokens(input_ids)  # (B, 1, d_model)
        B = x.shape[0]
        start = cache.length
        cache.begin(None, 1)  # key mask and next positions; no padding, so positions are `start` in every row
        cos, sin = self.rotary_emb(None, start + 1)
        cos, sin = cos[start:], sin[start:]  # (1, head_dim): broadcast over rows and heads
        for i, (norm1, q_proj, k_proj, v_proj, o_proj, norm2, gate_proj, up_proj, down_proj,
                n_head, n_kv_head, hd) in enumerate(cache.decode_plan[1]):
            h = norm1(x)
            # With T = 1, (B, 1, heads * hd) viewed as (B, heads, 1, hd) is the transpose `forward` takes.
            q = apply_rotary(q_proj(h).view(B, n_head, 1, hd), cos, sin)
            k = apply_rotary(k_proj(h).view(B, n_kv_head, 1, hd), cos, sin)
            k, v = cache.update(i, k, v_proj(h).view(B, n_kv_head, 1, hd))  # (B, n_kv_head, S, hd)
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=n_kv_head != n_head)  # (B, n_head, 1, hd)
            x = x + o_proj(y.reshape(B, 1, n_head * hd))
            h = norm2(x)
            x = x + down_proj(F.silu(gate_proj(h)) * up_proj(h))
        cache.end(1)
        return self.norm(x)


class GPT(nn.Module):
    """Decoder-only language model built from a `GPTConfig`; `forward(input_ids) -> logits`."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """Make lm_head share the embedding matrix when the config asks for it (again after `to_empty`)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Matrices ~ N(0, 0.02), norm gains 1, biases 0; residual output projections scaled down (GPT-2 init)."""
        # o_proj and down_proj each add into the residual stream, 2 per block; scaling their std by
        # 1/sqrt(2 * n_layer) keeps the stream's variance at init independent of depth (GPT-2 paper, sec. 2.3).
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # tied weights appear once
            if p.dim() == 2:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
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
        """Training FLOPs per token: 6*N + 6*d_model*vocab + 12*n_layer*n_head*head_dim*seq_len.

        N counts the block matrices (q, k, v, o, gate, up, down; norms and the embedding lookup do no matmuls),
        6 = 2 FLOPs per multiply-add x (1 forward + 2 backward); the lm_head is a d_model x vocab matmul whether
        tied or not; the last term is QK^T and attention-times-V over the full `seq_len` context (default
        config.seq_len), without discounting the causal mask, as in PaLM (Chowdhery et al. 2022, appendix B) and
        Chinchilla (Hoffmann et al. 2022, appendix F).
        """
        return config_flops_per_token(self.config, seq_len)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` tokens (default: the weights' device/dtype)."""
        w = self.lm_head.weight
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim, device or w.device, dtype or w.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                segment_ids: torch.Tensor | None = None, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T', vocab) in fp32 for token ids (B, T); T' = T, or the last `logits_to_keep` positions.

        Decoding asks for the last position only, so the vocabulary projection (the largest matmul of a small model)
        runs on one row per sequence instead of all T. `logits_at` (B, T) bool instead returns (N, vocab) logits for
        its N True positions, in row-major order: a loss that scores some positions only (SFT's assistant tokens)
        then skips the projection, its softmax and their gradients everywhere else. See `Decoder.forward` for
        `cache`, `attention_mask` and `segment_ids` (packed training examples).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        h = self.model(input_ids, cache=cache, attention_mask_bt=attention_mask, segment_ids=segment_ids)  # (B, T, d)
        if logits_at is not None:
            h = h[logits_at]  # (N, d_model)
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]  # (B, logits_to_keep, d_model)
        # fp32 logits even under bf16 autocast: the softmax/cross-entropy over a large vocabulary needs them.
        return self.lm_head(h).float()


# ----------------------------------------------------------------------------------------------------------------------
# Size and cost arithmetic (no model needed, so the 1b preset can be tabled without allocating it)


def _matmul_params(config: GPTConfig) -> int:
    """Weights of the linear layers inside the blocks (attention and MLP), the ones each token multiplies."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.n_head * hd + 2 * d * config.n_kv_head * hd + config.n_head * hd * d  # q, k+v, o
    mlp = 3 * d * config.d_ff  # gate, up, down
    return config.n_layer * (attn + mlp)


def config_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """Parameter count of `GPT(config)`, computed arithmetically; equals `GPT(config).num_params(...)`."""
    norms = (2 * config.n_layer + 1) * config.d_model
    qkv = (config.n_head + 2 * config.n_kv_head) * config.head_dim if config.attention_bias or config.qkv_bias else 0
    biases = config.n_layer * (qkv + (config.d_model if config.attention_bias else 0))
    body = _matmul_params(config) + norms + biases
    if non_embedding:
        return body
    embeddings = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
    return body + embeddings


def config_flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) of `GPT(config)`; see `GPT.flops_per_token`."""
    seq_len = config.seq_len if seq_len is None else seq_len
    matmul = 6 * _matmul_params(config)
    lm_head = 6 * config.d_model * config.vocab_size
    attention = 12 * config.n_layer * config.n_head * config.head_dim * seq_len
    return float(matmul + lm_head + attention)
