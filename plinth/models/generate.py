"""Decoding as pure functions: sample one token from logits, or stream tokens from a model with a KV cache.

The one generation loop: `generate_tokens` yields a step at a time (streaming) and `generate` collects it. Prompts
of different lengths are left-padded into one batch: the model masks the pads and counts each row's RoPE positions
from its first real token, so a prompt decodes the same alone or in a batch. Past the model's context the loop slides:
when the cache is full it keeps each row's most recent tokens and re-reads them (see `window_size`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch

from plinth.common import PlinthError, warn
from plinth.config import SamplingConfig, validate


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int = 0, seed: int = 0) -> None:
    """Validate sampling options against `SamplingConfig`'s ranges; one-line PlinthError naming the option."""
    validate(SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed), "sampling")


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (B, V) divided by `temperature` (> 0), with tokens outside the top-k / top-p set at -inf (fp32)."""
    logits = logits.float() / temperature  # (B, V)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the ones ranked above it already reach top_p; the top token always survives.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop_sorted[:, 0] = False  # explicitly: a top_p below float32's range would round to 0 and drop it too
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token id per row from logits (B, V): argmax at temperature 0, else sample after top-k/top-p."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def sample_rows(logits: torch.Tensor, options: list[tuple[float, int, float]],
                generators: list[torch.Generator]) -> torch.Tensor:
    """One token id per row of logits (B, V), each row with its own (temperature, top_k, top_p) and generator.

    Rows are filtered in groups of equal options and drawn one by one from their own generator, so a row gets the
    token `sample_next_token(logits[i:i+1], *options[i], generators[i])` would give, whatever else is in the batch
    (a server's requests each keep their seed). Options are trusted (checked when the request was made).
    """
    out = logits.argmax(dim=-1)  # (B,): the greedy rows' answer; sampled rows are overwritten below
    groups: dict[tuple[float, int, float], list[int]] = {}
    for i, opt in enumerate(options):
        if opt[0] > 0:
            groups.setdefault(opt, []).append(i)
    for (temperature, top_k, top_p), rows in groups.items():
        probs = filter_logits(logits[rows], temperature, top_k, top_p).softmax(dim=-1)  # (G, V)
        for j, i in enumerate(rows):
            out[i] = torch.multinomial(probs[j:j + 1], num_samples=1, generator=generators[i])[0, 0]
    return out


def window_size(context: int) -> int:
    """Tokens kept when generation slides past the context: the most recent 3/4 of it (at least 1).

    Re-reading a window costs one prefill; sliding by a quarter of the context each time amortises it to a few
    tokens of work per generated token, while the model always sees at least 3/4 of a context of history.
    """
    return max(1, context - max(1, context // 4))


def left_pad(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B, T) right-aligned with pad id 0, and the real-token mask (None when nothing is padded)."""
    T = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, p in enumerate(rows):
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = True
    padded = any(len(p) != T for p in rows)
    return ids.to(device), (mask.to(device) if padded else None)


def _check_prompts(vocab: int, prompts: list[list[int]]) -> None:
    if not prompts:
        raise PlinthError("no prompts given: pass at least one list of token ids")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise PlinthError(f"prompt {i} is empty: give at least one token (e.g. a BOS token)")
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise PlinthError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")


def generate_tokens(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.8,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                    eos_id: int | Collection[int] | None = None) -> Iterator[list[int | None]]:
    """Yield, per step, each row's new token (None once that row has produced a stop id); stops when all are done.

    `model` is a decoder with `config.seq_len`, `config.vocab_size`, `new_cache()` and `forward(ids, cache,
    attention_mask, logits_to_keep)`. `eos_id`: one id or several that end a row (the stop id itself is yielded).
    A prompt longer than the context keeps its last `seq_len` tokens; generation longer than the context slides
    (`window_size`); each case warns once. The same seed gives the same tokens. Arguments are checked at the call,
    not at the first `next()`.
    """
    _check_prompts(model.config.vocab_size, prompts)
    check_sampling(temperature, top_k, top_p, max_new_tokens, seed)
    stop = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    context = model.config.seq_len
    long = [i for i, p in enumerate(prompts) if len(p) > context]
    if long:
        warn(f"prompt {long[0]} has {len(prompts[long[0]])} tokens, more than the model's context of {context}: "
             f"only its last {context} are used" + (f" ({len(long)} prompts cut)" if len(long) > 1 else ""))
        prompts = [p[-context:] for p in prompts]
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > context:
        warn(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's context of "
             f"{context}: generation continues with a sliding window of the last {window_size(context)} tokens")
    return _decode(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop)


def _decode(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int,
            top_p: float, seed: int, stop: set[int]) -> Iterator[list[int | None]]:
    """The decoding loop behind `generate_tokens` (arguments already checked)."""
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    context = model.config.seq_len
    histories = [list(p) for p in prompts]  # each row's tokens so far: the source of a window when sliding
    ids, mask = left_pad(histories, device)
    done = [False] * len(prompts)
    # Each step's compute runs in its own inference_mode block, never across a `yield`, so the caller's code
    # between steps keeps its own grad mode.
    with torch.inference_mode():
        cache = model.new_cache(len(prompts), min(context, ids.shape[1] + max_new_tokens), device)
        logits = model(ids, cache=cache, attention_mask=mask, logits_to_keep=1)[:, -1]  # (B, V)
        tokens = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
    for step in range(max_new_tokens):
        out: list[int | None] = []
        for i, t in enumerate(tokens.tolist()):
            out.append(None if done[i] else t)
            done[i] = done[i] or t in stop
            histories[i].append(t)
        yield out
        if all(done) or step == max_new_tokens - 1:
            return
        with torch.inference_mode():
            if cache.length == cache.max_len:  # full: re-read each row's most recent tokens
                cache.reset()
                ids, mask = left_pad([h[-window_size(context):] for h in histories], device)
                logits = model(ids, cache=cache, attention_mask=mask, logits_to_keep=1)[:, -1]
            else:
                # Finished rows keep decoding (their tokens are dropped) so the batch stays rectangular.
                logits = model(tokens[:, None], cache=cache, logits_to_keep=1)[:, -1]  # (B, V)
            tokens = sample_next_token(logits, temperature, top_k, top_p, generator)


def generate(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_id: int | Collection[int] | None = None) -> list[list[int]]:
    """The new tokens of each prompt (including a final stop id), collected from `generate_tokens`."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_tokens(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id):
        for row, t in zip(out, step, strict=True):
            if t is not None:
                row.append(t)
    return out
