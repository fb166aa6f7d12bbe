"""Language-model metrics: cross-entropy, perplexity and bits per byte.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so models with different
tokenizers can be compared on the same text. Special tokens (byte length 0) count in loss and perplexity but not in
bits per byte, whose numerator and denominator both skip them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from plinth.common import PlinthError, autocast


@torch.inference_mode()
def score_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  token_bytes: np.ndarray | None = None, precision: str = "fp32") -> dict[str, float]:
    """Sum next-token losses over (x, y) batches; return loss, perplexity, bpb, tokens, bytes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    byte_table = torch.as_tensor(token_bytes, device=device) if token_bytes is not None else None
    total_nats = total_tokens = byte_nats = total_bytes = 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")  # (B*T,)
        total_nats += nats.sum().item()
        total_tokens += y.numel()
        if byte_table is not None:
            nbytes = byte_table[y.flatten()]
            counted = nbytes > 0
            byte_nats += nats[counted].sum().item()
            total_bytes += nbytes.sum().item()
    model.train(was_training)
    if total_tokens == 0:
        raise PlinthError("nothing to evaluate: the text is shorter than two tokens")
    loss = total_nats / total_tokens
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(total_tokens)}
    if byte_table is not None and total_bytes > 0:
        out["bpb"] = byte_nats / math.log(2) / total_bytes
        out["bytes"] = int(total_bytes)
    return out


def text_windows(token_ids: np.ndarray, seq_len: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping (x, y) windows over a token stream: every token but the first is predicted exactly once."""
    n = len(token_ids) - 1
    starts = list(range(0, n, seq_len))
    full = [s for s in starts if s + seq_len <= n]
    for i in range(0, len(full), batch_size):
        rows = np.stack([token_ids[s: s + seq_len + 1] for s in full[i: i + batch_size]]).astype(np.int64)
        yield torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    if starts and starts[-1] + seq_len > n:  # the short tail, as its own batch of one
        tail = token_ids[starts[-1]:].astype(np.int64)
        if len(tail) >= 2:
            yield torch.from_numpy(tail[None, :-1]), torch.from_numpy(tail[None, 1:])


def evaluate_texts(model: torch.nn.Module, tokenizer, texts: Iterable[str], seq_len: int, batch_size: int = 8,
                   max_tokens: int = 0, precision: str = "fp32", source: str = "the input") -> dict[str, float]:
    """Score documents (joined by the tokenizer's end-of-text token, as in training) with `model`."""
    ids: list[int] = []
    docs = 0
    for text in texts:
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_id)
        docs += 1
        if max_tokens and len(ids) > max_tokens:
            ids = ids[: max_tokens + 1]
            break
    if docs == 0:
        raise PlinthError(f"nothing to evaluate: no documents found in {source}")
    stream = np.asarray(ids[:-1] if len(ids) > 2 else ids, dtype=np.int64)  # no trailing eos to predict
    result = score_batches(model, text_windows(stream, seq_len, batch_size), tokenizer.token_bytes(), precision)
    result["documents"] = docs
    return result
