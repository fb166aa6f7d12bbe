"""Data layer: built-in corpora, ingest and cleaning, tokenizers, packed token shards and their samplers."""

from plinth.data.corpus import BUILTIN, builtin_files, iter_builtin, list_builtin
from plinth.data.ingest import iter_prepared, prepare, read_texts
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches, write_shards
from plinth.data.tokenizer import EOS, Tokenizer, train_tokenizer

__all__ = [
    "BUILTIN", "EOS", "TokenShards", "Tokenizer", "WindowSampler", "builtin_files", "iter_builtin",
    "iter_prepared", "iter_sequential_batches", "list_builtin", "prepare", "read_texts", "train_tokenizer",
    "write_shards",
]
