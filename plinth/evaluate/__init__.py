"""Metrics as functions of (model, data). `plinth.evaluate(model, data)` calls `evaluate` below."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable

from plinth.artifacts import read_run_state, resolve_stored_path
from plinth.common import PlinthError, warn


def evaluate(model, data: str | os.PathLike | Iterable[str] | None = None, field: str = "text", batch_size: int = 8,
             max_tokens: int = 0, device: str = "auto", compressors: bool = False,
             adapter: str | os.PathLike | None = None) -> dict[str, float]:
    """Loss (nats/token), perplexity and bits per byte of `model` on `data` (definitions: docs/metrics.md).

    `model`: what `plinth.load` returns, or a run, checkpoint or model folder to load. `data`: a text, JSONL or
    Parquet file, a folder or glob, builtin:NAME, or an iterable of strings; None scores the validation shards the
    model was trained with. `compressors` adds `bz2_bpb`, `xz_bpb` and `gzip_bpb` on the same documents (not with
    `max_tokens`). `adapter`: a LoRA adapter folder applied to a model given by path. Raises PlinthError when the
    data holds no text or the run's shards are gone.
    """
    from plinth.data.readers import read_texts
    from plinth.evaluate.lm import evaluate_texts
    from plinth.pipelines import load

    lm = load(model, device=device, adapter=adapter) if isinstance(model, (str, os.PathLike)) else model
    if batch_size < 1 or max_tokens < 0:
        raise PlinthError(f"batch_size must be >= 1 and max_tokens >= 0 (got {batch_size}, {max_tokens})")
    if data in (None, ""):
        return _evaluate_training_val(lm, batch_size, max_tokens)
    if isinstance(data, (str, os.PathLike)):
        texts, source = read_texts(data, field=field), f"{data} (text field {field!r})"
    else:
        texts, source = data, "the given texts"
    if compressors:
        if max_tokens:
            raise PlinthError("compressors compare on the whole text: drop max_tokens, or compressors")
        texts = list(texts)
    result = evaluate_texts(lm.model, lm.tokenizer, texts, lm.config.seq_len, batch_size, max_tokens, source=source)
    if compressors:
        from plinth.evaluate.compression import compressor_bits_per_byte

        result.update({f"{k}_bpb": v for k, v in compressor_bits_per_byte(texts).items() if k != "bytes"})
    return result


def _evaluate_training_val(lm, batch_size: int, max_tokens: int) -> dict[str, float]:
    from plinth.data.shards import TokenShards, iter_sequential_batches
    from plinth.evaluate.lm import score_batches

    run_dir = lm.run_dir
    if run_dir is None:
        raise PlinthError(f"{lm.path}: not a training run's checkpoint, so no validation split; pass --data FILE")
    run = read_run_state(lm.path)
    stored = run.get("paths", {}).get("shards") or run.get("config", {}).get("data", {}).get("shards", "")
    shards = resolve_stored_path(stored, run_dir) / "val"
    if not (shards / "manifest.json").is_file():
        raise PlinthError(f"{lm.path}: its validation shards ({shards}) are not available; pass --data FILE to score")
    val = TokenShards(shards)
    if val.total_tokens < 2:
        raise PlinthError(f"{shards}: the validation split is empty; pass --data FILE to score")
    seq_len = lm.config.seq_len
    if val.total_tokens < seq_len + 1:
        warn(f"{shards} has {val.total_tokens} tokens, fewer than a context ({seq_len}) + 1: scored as one shorter "
             "window")
    max_batches = -(-max_tokens // (seq_len * batch_size)) if max_tokens else 0
    return score_batches(lm.model, iter_sequential_batches(val, seq_len, batch_size, max_batches=max_batches),
                         lm.tokenizer.token_bytes())


class _CallableModule(types.ModuleType):
    """Lets `plinth.evaluate(model, data)` work although `plinth.evaluate` is also this package."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__all__ = ["evaluate"]
