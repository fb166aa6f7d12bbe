"""Packed token shards: prepared documents -> flat token files with a manifest; memory-mapped reading and sampling.

A split folder holds shard_00000.bin, shard_00001.bin, ... (raw little-endian uint16/uint32 token ids, each document
followed by the end-of-document token) and manifest.json (counts and a sha256 per shard), so a reader can prove the
bytes it trains on are the bytes that were written.

Shards written by the mixing stage of the data pipeline (`TaggedSplitWriter`) also hold `documents.bin`: one row per
document in stream order, its token count (eos included) and the index of its source in the manifest's `sources`
list, so every token can be traced to the source it was sampled from (`TokenShards.document_index`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from plinth.common import PlinthError, Progress, atomic_dir, atomic_write_json, sha256_file
from plinth.config import TokenizeConfig, validate
from plinth.data.prepare import SPLITS, prepared_file, prepared_lines
from plinth.data.tokenizer import Tokenizer

FORMAT = "plinth-token-shards"
FORMAT_VERSION = 1
_BATCH_DOCS = 512  # documents per encode_batch call: enough to keep every core busy, small enough to stream
_BATCH_CHARS = 8 << 20


def shard_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every token id: uint16 up to 65536 ids, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


class _ShardWriter:
    """Appends token arrays to fixed-size shard files, hashing them as they are written."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._hash = hashlib.sha256()
        self._n = 0

    def write(self, ids: np.ndarray) -> None:
        """Append `ids`, starting a new shard whenever the current one is full."""
        while len(ids):
            if self._file is None:
                self._file = open(self.folder / f"shard_{len(self.shards):05d}.bin", "wb")
                self._hash, self._n = hashlib.sha256(), 0
            take = min(len(ids), self.shard_tokens - self._n)
            block = ids[:take].astype(self.dtype, copy=False).tobytes()
            self._file.write(block)
            self._hash.update(block)
            self._n += take
            ids = ids[take:]
            if self._n == self.shard_tokens:
                self._finish_shard()

    def close(self) -> None:
        """Finish the last, partly filled shard."""
        if self._file is not None:
            self._finish_shard()

    def _finish_shard(self) -> None:
        name = Path(self._file.name).name
        self._file.close()
        self._file = None
        self.shards.append({"file": name, "tokens": self._n, "sha256": self._hash.hexdigest()})


DOC_INDEX_FILE = "documents.bin"
DOC_INDEX_DTYPE = np.dtype([("tokens", "<u4"), ("source", "<u2")])  # per document, in stream order


class TaggedSplitWriter:
    """Writes one split (train or val) document by document, each tagged with its source; `close()` writes the
    manifest (with per-source documents and tokens) and returns it."""

    def __init__(self, folder: str | os.PathLike, vocab_size: int, eos_id: int, tokenizer_sha256: str,
                 sources: list[str], shard_tokens: int):
        if len(sources) > np.iinfo(np.uint16).max:
            raise PlinthError(f"at most 65535 sources can be tagged, got {len(sources)}")
        self.folder = Path(folder)
        self.dtype = shard_dtype(vocab_size)
        self.vocab_size, self.eos_id, self.tokenizer_sha256 = vocab_size, eos_id, tokenizer_sha256
        self.sources, self.shard_tokens = list(sources), shard_tokens
        self._writer = _ShardWriter(self.folder, self.dtype, shard_tokens)
        self._index = open(self.folder / DOC_INDEX_FILE, "wb")
        self._index_hash = hashlib.sha256()
        self.per_source = {name: {"documents": 0, "tokens": 0} for name in self.sources}

    def add(self, ids: np.ndarray, source: int) -> None:
        """Append one document's token ids (no eos: it is added here) from source number `source`."""
        doc = np.empty(len(ids) + 1, dtype=np.int64)
        doc[:-1] = ids
        doc[-1] = self.eos_id
        self._writer.write(doc)
        row = np.array([(len(doc), source)], dtype=DOC_INDEX_DTYPE).tobytes()
        self._index.write(row)
        self._index_hash.update(row)
        counts = self.per_source[self.sources[source]]
        counts["documents"] += 1
        counts["tokens"] += len(doc)

    def close(self) -> dict:
        """Finish the shards, write manifest.json; return the manifest."""
        self._writer.close()
        self._index.close()
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
            "eos_id": self.eos_id, "tokenizer_sha256": self.tokenizer_sha256, "shard_tokens": self.shard_tokens,
            "tokens": sum(s["tokens"] for s in self._writer.shards),
            "documents": sum(c["documents"] for c in self.per_source.values()), "shards": self._writer.shards,
            "sources": self.sources, "per_source": self.per_source,
            "document_index": {"file": DOC_INDEX_FILE, "sha256": self._index_hash.hexdigest()},
        }
        atomic_write_json(self.folder / "manifest.json", manifest)
        return manifest


def _encoded_batches(tok: Tokenizer, path: Path, advance) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (flat token ids with eos after each document, documents) for chunks of a prepared JSONL file."""
    lines = prepared_lines(path)
    while True:
        texts, nbytes, chars = [], 0, 0
        for text, n in lines:
            texts.append(text)
            nbytes += n
            chars += len(text)
            if len(texts) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                break
        if not texts:
            return
        encoded = tok.encode_batch(texts)
        total = sum(len(ids) + 1 for ids in encoded)
        flat = itertools.chain.from_iterable(itertools.chain(ids, (tok.eos_id,)) for ids in encoded)
        advance(nbytes)
        yield np.fromiter(flat, dtype=np.int64, count=total), len(texts)


def _tokenize_split(tok: Tokenizer, src: Path, dst: Path, shard_tokens: int, advance) -> dict:
    dtype = shard_dtype(tok.vocab_size)
    writer = _ShardWriter(dst, dtype, shard_tokens)
    documents = 0
    for ids, docs in _encoded_batches(tok, src, advance):
        writer.write(ids)
        documents += docs
    writer.close()
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id, "tokenizer_sha256": tok.sha256, "shard_tokens": shard_tokens,
        "tokens": sum(s["tokens"] for s in writer.shards), "documents": documents, "shards": writer.shards,
    }
    atomic_write_json(dst / "manifest.json", manifest)
    return manifest


def write_shards(cfg: TokenizeConfig) -> dict:
    """Tokenize `cfg.input`/{train,val}.jsonl into `cfg.out`/{train,val}/ shards with manifests; return a report."""
    validate(cfg, "data tokenize")
    sources = {split: prepared_file(cfg.input, split) for split in SPLITS}
    tok = Tokenizer.load(cfg.tokenizer)
    total = sum(p.stat().st_size for p in sources.values())
    report = {"input": str(cfg.input), "tokenizer": str(cfg.tokenizer), "tokenizer_sha256": tok.sha256,
              "vocab_size": tok.vocab_size, "dtype": shard_dtype(tok.vocab_size).name}
    with atomic_dir(cfg.out) as tmp, Progress("tokenize", total=total, unit="B", enabled=cfg.progress) as bar:
        for split, src in sources.items():
            manifest = _tokenize_split(tok, src, tmp / split, cfg.shard_tokens, lambda n: bar.update(advance=n))
            report[split] = {k: manifest[k] for k in ("documents", "tokens")} | {"shards": len(manifest["shards"])}
        atomic_write_json(tmp / "report.json", report)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Reading


class TokenShards:
    """The shards of one split, memory-mapped read-only and addressed as one flat token array."""

    def __init__(self, folder: str | os.PathLike, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_id: int = self.manifest["eos_id"]
        self.tokenizer_sha256: str = self.manifest["tokenizer_sha256"]
        self.arrays = [self._open(s, verify) for s in self.manifest["shards"]]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays], dtype=np.int64)  # shard i starts at offsets[i]
        self.total_tokens = int(self.offsets[-1])
        # Identifies the exact token stream, so a sampler state cannot be resumed against different data.
        self.fingerprint = hashlib.sha256("".join(s["sha256"] for s in self.manifest["shards"]).encode()).hexdigest()

    def _open(self, shard: dict, verify: bool) -> np.ndarray:
        path = self.folder / shard["file"]
        if not path.is_file():
            raise PlinthError(f"missing shard {path}: re-run `plinth data tokenize`")
        expected = shard["tokens"] * self.dtype.itemsize
        if path.stat().st_size != expected:
            raise PlinthError(f"shard {path} has {path.stat().st_size} bytes, the manifest says {expected}: "
                              f"re-run `plinth data tokenize`")
        if verify and sha256_file(path) != shard["sha256"]:
            raise PlinthError(f"shard {path} is corrupt (sha256 differs from the manifest): "
                              f"re-run `plinth data tokenize`")
        return np.memmap(path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return self.total_tokens

    def document_index(self) -> tuple[list[str], np.ndarray] | None:
        """(source names, per-document rows with fields `tokens` and `source`) for shards written by the data
        pipeline's mixing stage, verified against the manifest; None for shards without source tags."""
        info = self.manifest.get("document_index")
        if not info:
            return None
        path = self.folder / info["file"]
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            raise PlinthError(f"{path} is missing or corrupt (sha256 differs from the manifest): re-run the mix")
        return list(self.manifest["sources"]), np.fromfile(path, dtype=DOC_INDEX_DTYPE)

    def window(self, start: int, length: int) -> np.ndarray:
        """A copy of tokens [start, start + length) of the flat stream, across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.total_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside 0..{self.total_tokens}")
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while length > 0:
            local = start - int(self.offsets[i])
            take = min(length, len(self.arrays[i]) - local)
            parts.append(self.arrays[i][local:local + take])
            start, length, i = start + take, length - take, i + 1
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise PlinthError(f"no manifest.json in {folder}: run `plinth data tokenize` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PlinthError(f"{path} is not valid JSON ({e}): re-run `plinth data tokenize`") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise PlinthError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest: re-run `plinth data tokenize`")
    return manifest


def _require_tokens(shards: TokenShards, seq_len: int) -> None:
    if seq_len <= 0:
        raise PlinthError(f"seq_len must be positive, not {seq_len}")
    if shards.total_tokens < seq_len + 1:
        raise PlinthError(f"{shards.folder} has {shards.total_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                          f"lower the context (--arch.seq_len) or add data")


def _batch(shards: TokenShards, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = np.stack([shards.window(int(s), seq_len + 1) for s in starts]).astype(np.int64)  # (B, T + 1)
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # (B, T)
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # (B, T): the next token at each position
    return x, y


class WindowSampler:
    """Reproducible random training windows: batch i depends only on (seed, i), so resuming is setting i.

    Under several processes, `shard(rank, world_size)` makes each take rows [rank * b, (rank + 1) * b) of the same
    global batch (b = batch_size / world_size): disjoint parts that together are exactly the one-process batch, so
    the position (i) means the same on any number of processes.
    """

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int = 0):
        _require_tokens(shards, seq_len)
        if batch_size <= 0 or seed < 0:
            raise PlinthError(f"batch_size must be positive and seed >= 0 (got {batch_size}, {seed})")
        self.shards, self.seq_len, self.batch_size, self.seed = shards, seq_len, batch_size, seed
        self.batch_index = 0
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        """Yield only this rank's equal part of every global batch; PlinthError if the batch does not divide."""
        if self.batch_size % world_size or not 0 <= rank < world_size:
            raise PlinthError(f"optim.batch_size ({self.batch_size}) must be a multiple of the number of processes "
                              f"({world_size}): each process takes an equal part of every batch")
        self.rank, self.world_size = rank, world_size

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of batch number `i`: (x, y) int64 tensors of shape (batch_size / world_size, seq_len)."""
        rng = np.random.default_rng([self.seed, i])
        # high is exclusive: the last start is total - seq_len - 1, so the window's y still has a next token.
        starts = rng.integers(0, self.shards.total_tokens - self.seq_len, size=self.batch_size)
        part = self.batch_size // self.world_size
        return _batch(self.shards, starts[self.rank * part:(self.rank + 1) * part], self.seq_len)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; advances the position by one."""
        batch = self.batch(self.batch_index)
        self.batch_index += 1
        return batch

    def state_dict(self) -> dict:
        """The position and everything it is only meaningful with."""
        return {"seed": self.seed, "batch_index": self.batch_index, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "total_tokens": self.shards.total_tokens,
                "fingerprint": self.shards.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` left off; PlinthError if it was saved for other shards or shapes."""
        mine = self.state_dict()
        for key in ("seq_len", "batch_size", "total_tokens", "fingerprint"):
            if key in state and state[key] != mine[key]:
                raise PlinthError(f"cannot resume the data sampler: {key} was {state[key]}, now {mine[key]} "
                                  f"(the shards or the batch shape changed since the checkpoint)")
        self.seed, self.batch_index = int(state["seed"]), int(state["batch_index"])


def iter_sequential_batches(shards: TokenShards, seq_len: int, batch_size: int,
                            max_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows from the start, in order (the last batch may be short); for validation.

    A split shorter than `seq_len + 1` tokens is scored as one shorter window; under 2 tokens it yields nothing.
    """
    if shards.total_tokens < 2:
        return
    seq_len = min(seq_len, shards.total_tokens - 1)
    starts = np.arange((shards.total_tokens - 1) // seq_len, dtype=np.int64) * seq_len
    for n, i in enumerate(range(0, len(starts), batch_size)):
        if max_batches and n >= max_batches:
            return
        yield _batch(shards, starts[i:i + batch_size], seq_len)
