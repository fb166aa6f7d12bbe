"""Data layer: built-in corpora, readers and cleaning, the prepare verb, tokenizers, packed token shards, and the
broad-data pipeline (web archives, quality filters, PII, dedup, mixing).

The shard reader (it imports torch) and the pipeline are imported on first use (PEP 562), so a pipeline worker
process that imports `plinth.data.web` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plinth.data.clean import clean
from plinth.data.corpus import BUILTIN, builtin_files, iter_builtin, list_builtin
from plinth.data.prepare import iter_prepared, prepare
from plinth.data.readers import read_texts
from plinth.data.tokenizer import EOS, Tokenizer, train_tokenizer

_LAZY = {
    "TokenShards": "plinth.data.shards", "WindowSampler": "plinth.data.shards",
    "iter_sequential_batches": "plinth.data.shards", "write_shards": "plinth.data.shards",
    "run_pipeline": "plinth.data.pipeline",
}

__all__ = [
    "BUILTIN", "EOS", "TokenShards", "Tokenizer", "WindowSampler", "builtin_files", "clean", "iter_builtin",
    "iter_prepared", "iter_sequential_batches", "list_builtin", "prepare", "read_texts", "run_pipeline",
    "train_tokenizer", "write_shards",
]

if TYPE_CHECKING:
    from plinth.data.pipeline import run_pipeline  # noqa: F401
    from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches, write_shards  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'plinth.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
