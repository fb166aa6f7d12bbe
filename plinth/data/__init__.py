"""Data layer: built-in corpora, readers and cleaning, the prepare verb, tokenizers, packed token shards."""

from plinth.data.clean import clean
from plinth.data.corpus import BUILTIN, builtin_files, iter_builtin, list_builtin
from plinth.data.prepare import iter_prepared, prepare
from plinth.data.readers import read_texts
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches, write_shards
from plinth.data.tokenizer import EOS, Tokenizer, train_tokenizer

__all__ = [
    "BUILTIN", "EOS", "TokenShards", "Tokenizer", "WindowSampler", "builtin_files", "clean", "iter_builtin",
    "iter_prepared", "iter_sequential_batches", "list_builtin", "prepare", "read_texts", "train_tokenizer",
    "write_shards",
]
