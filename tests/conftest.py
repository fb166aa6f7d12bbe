"""Shared fixtures: a tiny corpus, tokenizer and shards made on the fly (seconds), never downloaded."""

import os
from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread, and results stay identical whichever core count the machine has.
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A fixed, structured text: enough regularity that a 2-layer model's loss falls within a few steps.
_WORDS = ("the people of the union ask congress to act on the budget and the peace of the nation "
          "we must keep faith with our citizens and our laws").split()


def make_corpus(folder: Path, docs: int = 24, words_per_doc: int = 160) -> Path:
    """Write `docs` small deterministic text files under `folder` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        words = [_WORDS[(d * 7 + i * (d % 5 + 1)) % len(_WORDS)] for i in range(words_per_doc)]
        (folder / f"doc_{d:03d}.txt").write_text(f"Address {d}.\n" + " ".join(words) + ".\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Prepared docs, a char tokenizer and token shards for the tiny corpus."""
    from plinth.config import PrepareConfig, TokenizeConfig, TokenizerConfig
    from plinth.data.prepare import prepare
    from plinth.data.shards import write_shards
    from plinth.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    corpus = make_corpus(root / "raw")
    prepared = root / "prepared"
    prepare(PrepareConfig(inputs=[str(corpus)], out=str(prepared), val_fraction=0.15))
    tok = root / "tokenizer.json"
    train_tokenizer(TokenizerConfig(input=str(prepared), out=str(tok), kind="char"))
    shards = root / "shards"
    write_shards(TokenizeConfig(input=str(prepared), tokenizer=str(tok), out=str(shards)))
    return {"root": root, "raw": corpus, "prepared": prepared, "tokenizer": tok, "shards": shards}
