"""Decoding as pure functions: sample one token from logits, or stream tokens from a model with a KV cache.

Prompts of different lengths are left-padded into one batch: the model masks the pads and counts each row's RoPE
positions from its first real token, so a prompt decodes the same alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from plinth.common import PlinthError
from plinth.models.gpt import GPT


def _check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise PlinthError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise PlinthError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise PlinthError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row from logits (B, V): argmax at temperature 0, else sample after top-k/top-p."""
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature  # (B, V)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the ones ranked above it already reach top_p; the top token always survives.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def _left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B, T) right-aligned with pad id 0, and the real-token mask (None when nothing is padded)."""
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = True
    padded = any(len(p) != T for p in prompts)
    return ids.to(device), (mask.to(device) if padded else None)


def _check_prompts(model: GPT, prompts: list[list[int]], max_new_tokens: int) -> None:
    if not prompts:
        raise PlinthError("no prompts given: pass at least one list of token ids")
    vocab, limit = model.config.vocab_size, model.config.seq_len
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise PlinthError(f"prompt {i} is empty: give at least one token (e.g. a BOS token)")
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise PlinthError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    if max_new_tokens < 0:
        raise PlinthError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > limit:
        raise PlinthError(
            f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {limit} tokens (seq_len); lower max_new_tokens to at most {max(limit - longest, 0)} "
            f"or shorten the prompt"
        )


def generate_tokens(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> Iterator[list[int | None]]:
    """Yield, per step, each row's new token (None once that row has produced `eos_id`); stops when all are done.

    The left-padded batch is prefilled once, then one token per row per step goes through the KV cache.
    Prompt length + max_new_tokens may not exceed config.seq_len. The same seed gives the same tokens.
    """
    # Checked here, not inside the generator, so bad arguments fail at the call rather than at the first next().
    _check_prompts(model, prompts, max_new_tokens)
    _check_sampling(temperature, top_k, top_p)
    return _decode(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id)


def _decode(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    eos_id: int | None,
) -> Iterator[list[int | None]]:
    """The decoding loop behind `generate_tokens` (arguments already checked)."""
    if max_new_tokens == 0:
        return
    device = model.lm_head.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids, mask = _left_pad(prompts, device)
    done = [False] * len(prompts)
    # Each step's compute runs in its own inference_mode block, never across a `yield`, so the caller's code
    # between steps keeps its own grad mode.
    with torch.inference_mode():
        cache = model.new_cache(len(prompts), ids.shape[1] + max_new_tokens, device)
        logits = model(ids, cache=cache, attention_mask=mask)[:, -1]  # (B, V)
        tokens = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
    for step in range(max_new_tokens):
        row_tokens = tokens.tolist()
        out: list[int | None] = []
        for i, t in enumerate(row_tokens):
            out.append(None if done[i] else t)
            done[i] = done[i] or (eos_id is not None and t == eos_id)
        yield out
        if all(done) or step == max_new_tokens - 1:
            return
        with torch.inference_mode():
            # Finished rows keep decoding (their tokens are dropped) so the batch stays rectangular.
            logits = model(tokens[:, None], cache=cache)[:, -1]  # (B, V)
            tokens = sample_next_token(logits, temperature, top_k, top_p, generator)


def generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt (including a final `eos_id`), collected from `generate_tokens`."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_tokens(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id):
        for row, t in zip(out, step, strict=True):
            if t is not None:
                row.append(t)
    return out
