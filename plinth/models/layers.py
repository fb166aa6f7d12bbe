"""Building blocks shared by model families: RMSNorm, rotary position embeddings, SwiGLU.

Each matches its Hugging Face Llama counterpart number for number (same op order, same dtype casts), so a model
built from them reproduces `LlamaForCausalLM` logits to fp32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain, computed in fp32 like HF `LlamaRMSNorm`."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of `x`; the result has `x`'s dtype times the gain's."""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # torch's own op (the same formula as below, equal to fp32 rounding; one fused kernel on GPUs).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        input_dtype = x.dtype
        # fp32 statistics: in bf16 the mean of squares loses enough precision to move the logits.
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the gain, as HF does, so bf16 runs round at the same place.
        return self.weight * h.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/head_dim) for i < head_dim/2, fp32, computed exactly as HF Llama does."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and *signed* sin tables of shape positions.shape + (head_dim,), fp32.

    cos is HF's cat(cos f, cos f); the sin table carries the sign of HF's `rotate_half` in its first half,
    cat(-sin f, sin f), so rotating needs one swap of halves instead of a negation and a concatenation (see
    `apply_rotary`): x*cos + swap(x)*sin_signed == HF's x*cos + rotate_half(x)*sin, exactly (negation is exact).
    """
    freqs = positions[..., None].float() * inv_freq.to(positions.device)  # (..., head_dim/2)
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension (HF Llama's convention, not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, hd) by tables (T, hd) or (B, 1, T, hd) from `rope_cos_sin` (sin signed).

    Three kernels: x*cos, the halves swapped, and one fused multiply-add.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions [0, max_len), cached as buffers; positions beyond are computed on the fly.

    The buffers are non-persistent (not in the state dict: they are a function of the config) and kept in fp32
    even when the model is cast to bf16, because a bf16 table rounded once and then up-cast would differ from
    HF, which computes in fp32 and casts at use.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.reset_buffers()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the cached tables, e.g. after building the model on the meta device."""
        device = device if device is not None else self.cos.device
        if torch.device(device).type == "meta":
            self.cos = torch.empty(self.max_len, self.head_dim, device="meta")
            self.sin = torch.empty(self.max_len, self.head_dim, device="meta")
            return
        positions = torch.arange(self.max_len, device=device)
        self.cos, self.sin = rope_cos_sin(positions, rope_inv_freq(self.head_dim, self.theta).to(device))

    def _apply(self, fn, recurse=True):
        # `.to(bfloat16)` would round the tables and `to_empty()` would leave them uninitialised: recompute them
        # in fp32 on the new device after any conversion (a few thousand cos/sin, negligible).
        super()._apply(fn, recurse)
        self.reset_buffers(self.cos.device)
        return self

    def forward(self, positions: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for `positions` (any shape, all < `length`), or for arange(length) when `positions` is None."""
        if positions is None:
            if length <= self.max_len:
                return self.cos[:length], self.sin[:length]  # (T, hd): broadcasts over batch and heads
            positions = torch.arange(length, device=self.cos.device)
        if length <= self.max_len:
            return self.cos[positions], self.sin[positions]
        inv_freq = rope_inv_freq(self.head_dim, self.theta)
        return rope_cos_sin(positions, inv_freq)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, theta={self.theta}"


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), no biases (HF `LlamaMLP`)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
