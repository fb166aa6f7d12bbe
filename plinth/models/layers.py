"""Building blocks shared by model families: Linear, RMSNorm, rotary position embeddings, SwiGLU.

Each matches its Hugging Face Llama counterpart number for number (same op order, same dtype casts), so a model
built from them reproduces `LlamaForCausalLM` logits to fp32 rounding.
"""

from __future__ import annotations

import math
from typing import Any

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


ROPE_SCALING_TYPES = ("linear", "llama3")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) fp32: theta^(-2i/head_dim), then scaled; bit-equal to transformers'.

    `scaling` is None (plain RoPE), {"rope_type": "linear", "factor": f} (every frequency divided by f; Chen et al.
    2023, "position interpolation") or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (Llama 3.1: long wavelengths divided by `factor`, short ones kept, a
    blend between; transformers' `_compute_llama3_parameters`). Neither type rescales attention.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"RoPE scaling {kind!r} is not supported (known: {', '.join(ROPE_SCALING_TYPES)})")


_ROPE_SCALING_KEYS = {"linear": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_scaling_problem(scaling: dict[str, Any] | None) -> str | None:
    """What is wrong with a `rope_scaling` mapping (a phrase for an error message), or None when it is usable."""
    if scaling is None:
        return None
    kind = scaling.get("rope_type")
    if kind not in _ROPE_SCALING_KEYS:
        return f"rope_scaling.rope_type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {kind!r}"
    extra = sorted(set(scaling) - {"rope_type", *_ROPE_SCALING_KEYS[kind]})
    if extra:
        return f"rope_scaling has fields {extra} that {kind!r} scaling does not use"
    for key in _ROPE_SCALING_KEYS[kind]:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return f"rope_scaling.{key} must be a positive number, got {value!r}"
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        return "rope_scaling.high_freq_factor must be greater than low_freq_factor"
    return None


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq  # (head_dim/2,) in positions
    long_scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    # `smooth` goes 0 -> 1 across the band between the two wavelength limits; the operation order is transformers'
    # so that the result is bit-equal to it.
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * long_scaled / factor + smooth * long_scaled
    in_band = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(in_band, blended, long_scaled)


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

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0,
                 scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim, self.max_len, self.theta, self.scaling = head_dim, max_len, theta, scaling
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
        self.cos, self.sin = rope_cos_sin(positions, rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device))

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
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        return rope_cos_sin(positions, inv_freq)

    def extra_repr(self) -> str:
        scaled = f", scaling={self.scaling['rope_type']}" if self.scaling else ""
        return f"head_dim={self.head_dim}, max_len={self.max_len}, theta={self.theta}{scaled}"


_SPLIT_PAYS: dict[int, bool] = {}  # thread count -> whether `Linear` splits few-row products on this machine


def split_pays(threads: int) -> bool:
    """Whether splitting a one-row fp32 product into per-thread blocks (`Linear`) beats the BLAS's own product here.

    It depends on the machine's BLAS: MKL on one AMD EPYC ran a (1, in) x (in, out) fp32 product on one thread
    (splitting was 1.55x faster), while on an Intel Xeon it used both and the split was ~10% slower. So it is
    measured once per process and thread count: the best of 5 timed products each way over a 64 MiB matrix (bigger
    than the caches, as real weights are, ~6 ms per each-way pair on 2 cores), alternating, and the split is used
    only when it is at least 10% faster. The results are equal either way, so the choice changes speed only.
    """
    pays = _SPLIT_PAYS.get(threads)
    if pays is None:
        if threads < 2:
            pays = False
        else:
            import time

            out, inp = 16384, 1024
            w, x = torch.ones(out, inp), torch.ones(1, inp)
            blocks = w.view(threads, out // threads, inp).transpose(1, 2)
            x3 = x.expand(threads, 1, inp)
            best = {"blas": float("inf"), "split": float("inf")}
            with torch.no_grad():
                for _ in range(5):
                    for kind in best:
                        start = time.perf_counter()
                        F.linear(x, w) if kind == "blas" else torch.bmm(x3, blocks)
                        best[kind] = min(best[kind], time.perf_counter() - start)
            pays = best["split"] < 0.9 * best["blas"]
        _SPLIT_PAYS[threads] = pays
    return pays


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, names and results) whose products over a few rows use every CPU thread well.

    Decoding multiplies one row per sequence by each weight matrix. Some BLAS builds run a (1, in) @ (in, out) fp32
    product on one thread (MKL on an AMD EPYC read weights at ~12 GB/s so, half of what two cores reach) and split
    products of a few rows across threads poorly. Viewing the weight as `n` blocks of rows (no copy), one per
    thread, makes it a batched product that runs each block on its own thread; each output is still one dot product
    over the same row, so the values do not change. Measured there on 2 cores (210 SmolLM2-shaped matrices,
    `benchmarks/decode_smollm2.py` explains the decode figures): 1.55x faster at 1 row, 1.47x at 8, 1.32x at 16,
    1.15-1.2x at 64-256, 0.8x at 1024; so it is used for at most `SPLIT_MAX_ROWS` rows, when not recording
    gradients, on fp32 CPU tensors whose rows split evenly, and only where `split_pays` measured it faster.
    Everything else is `nn.Linear.forward`.
    """

    SPLIT_MAX_ROWS = 256

    def splits(self, rows: int, dtype: torch.dtype) -> bool:
        """Whether a product over `rows` rows of `dtype` input takes the per-thread split (else `F.linear`)."""
        w = self.weight
        if rows > self.SPLIT_MAX_ROWS or torch.is_grad_enabled() or w.device.type != "cpu" \
                or w.dtype != torch.float32 or dtype != torch.float32:
            return False
        n = torch.get_num_threads()
        return n > 1 and self.out_features % n == 0 and w.is_contiguous() and split_pays(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        rows = x.numel() // self.in_features
        if self.splits(rows, x.dtype):
            n = torch.get_num_threads()
            blocks = self.weight.view(n, self.out_features // n, self.in_features)  # (n, out/n, in): a view
            x3 = x.reshape(1, rows, self.in_features).expand(n, rows, self.in_features)
            y = torch.bmm(x3, blocks.transpose(1, 2))  # (n, rows, out/n); bmm: fewer dispatches than matmul
            y = (y if rows == 1 else y.transpose(0, 1)).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), no biases (HF `LlamaMLP`)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = Linear(d_model, d_ff, bias=False)
        self.up_proj = Linear(d_model, d_ff, bias=False)
        self.down_proj = Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
