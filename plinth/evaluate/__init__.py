"""Metrics as functions of (model, data). `plinth.evaluate(model, data)` calls `evaluate` below."""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Iterable
from pathlib import Path

from plinth.common import PlinthError


def evaluate(model, data: str | os.PathLike | Iterable[str] | None = None, field: str = "text", batch_size: int = 8,
             max_tokens: int = 0) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` (a LanguageModel or a run/checkpoint path) on `data`.

    With no `data`, scores the validation shards the model was trained with.
    """
    from plinth.evaluate.language_model import LanguageModel

    lm = model if isinstance(model, LanguageModel) else LanguageModel.load(model)
    if data not in (None, ""):
        return lm.evaluate(data, field=field, batch_size=batch_size, max_tokens=max_tokens)
    return _evaluate_training_val(lm, batch_size, max_tokens)


def _evaluate_training_val(lm, batch_size: int, max_tokens: int) -> dict[str, float]:
    from plinth.data.shards import TokenShards, iter_sequential_batches
    from plinth.evaluate.lm import score_batches

    run = json.loads((lm.path / "run.json").read_text(encoding="utf-8")) if lm.path else {}
    shards = Path(run.get("config", {}).get("data", {}).get("shards", "")) / "val"
    if not (shards / "manifest.json").is_file():
        raise PlinthError(f"{lm.path}: its validation shards ({shards}) are not available; pass --data FILE to score")
    val = TokenShards(shards)
    seq_len = lm.config.seq_len
    max_batches = -(-max_tokens // (seq_len * batch_size)) if max_tokens else 0
    return score_batches(lm.model, iter_sequential_batches(val, seq_len, batch_size, max_batches=max_batches),
                         lm.tokenizer.token_bytes())


class _CallableModule(types.ModuleType):
    """Lets `plinth.evaluate(model, data)` work although `plinth.evaluate` is also this package."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
