"""Tokenizers: byte-level BPE and a character tokenizer with byte fallback, both saved as a HF tokenizer.json."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from plinth.common import PlinthError, atomic_write_text
from plinth.config import TokenizerConfig, validate
from plinth.data.prepare import iter_prepared
from plinth.data.readers import read_texts

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS,)
# End-of-document names used by other tokenizer families, so a foreign tokenizer.json still has an eos_id.
_EOS_FALLBACKS = (EOS, "</s>", "<|end_of_text|>", "<eos>")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


class Tokenizer:
    """A `tokenizers.Tokenizer` with Plinth's conventions: no special tokens added on encode, exact round trips,
    special-token text parsed to its id exactly as `transformers` parses the same tokenizer.json."""

    def __init__(self, tok: tokenizers.Tokenizer, json_text: str | None = None):
        self._tok = tok
        # Special tokens written in the text (e.g. "<|endoftext|>") encode to their ids, as every reader of the
        # saved tokenizer.json does (`transformers`' PreTrainedTokenizerFast included): the file cannot record
        # another behaviour, and what Plinth trains with must be what the file says.
        self._json = json_text if json_text is not None else tok.to_str(pretty=True)
        self._token_bytes: np.ndarray | None = None
        self.sha256 = hashlib.sha256(self._json.encode("utf-8")).hexdigest()
        eos = next((t for t in _EOS_FALLBACKS if tok.token_to_id(t) is not None), None)
        self.eos_id: int = tok.token_to_id(eos) if eos is not None else -1

    @classmethod
    def load(cls, path: str | os.PathLike, require_eos: bool = True) -> Tokenizer:
        """Load a tokenizer.json; `sha256` is the hash of the file's bytes.

        `require_eos`: refuse a tokenizer with no end-of-document token (what Plinth's shards separate documents with);
        an imported model's folder names its stop tokens itself, so it loads with False.
        """
        path = Path(path)
        if not path.is_file():
            raise PlinthError(f"no tokenizer at {path}: train one with `plinth tokenizer train --out {path}`")
        text = path.read_text(encoding="utf-8")
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
            raise PlinthError(f"{path} is not a valid tokenizer.json: {e}") from e
        if require_eos and next((t for t in _EOS_FALLBACKS if tok.token_to_id(t) is not None), None) is None:
            raise PlinthError(f"{path} has no end-of-document token (expected {EOS}); retrain it with plinth")
        return cls(tok, text)

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (the same bytes `sha256` was computed over)."""
        atomic_write_text(path, self._json)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the Rust batch encoder."""
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; special tokens are kept, so decode(encode(x)) == x for any string."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token id (0 for special tokens): bits per byte = nats / ln 2 / bytes."""
        if self._token_bytes is None:
            self._token_bytes = _token_byte_lengths(self._tok, json.loads(self._json))
        return self._token_bytes

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, sha256={self.sha256[:12]})"


def _has_type(component: dict | None, name: str) -> bool:
    if not component:
        return False
    if component.get("type") == name:
        return True
    children = component.get("decoders") or component.get("pretokenizers") or []
    return any(_has_type(c, name) for c in children)


def _token_byte_lengths(tok: tokenizers.Tokenizer, spec: dict) -> np.ndarray:
    # Byte-level BPE spells each byte as one printable character, so a token's length in characters is its bytes;
    # a byte-fallback token <0xAB> is one byte; any other token is its own UTF-8 text.
    byte_level = _has_type(spec.get("pre_tokenizer"), "ByteLevel") or _has_type(spec.get("decoder"), "ByteLevel")
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    out = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        if i in special:
            continue
        if byte_level:
            out[i] = len(token)
        elif _BYTE_TOKEN.fullmatch(token):
            out[i] = 1
        else:
            out[i] = len(token.encode("utf-8"))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Training


def _bpe(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    # No normalizer: prepare already cleaned the text, and the tokenizer must round-trip any input exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def _char(texts: Iterable[str]) -> tokenizers.Tokenizer:
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    # ids: special tokens, then the 256 byte-fallback tokens (so unseen characters still round-trip), then the
    # characters seen, by code point so the same text always gives the same ids.
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges is a lookup per character; byte_fallback spells unknown ones as their UTF-8 bytes.
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _limit_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if max_chars and total + len(text) >= max_chars:
            yield text[: max_chars - total]
            return
        total += len(text)
        yield text


def _counting(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    for text in texts:
        if text:
            seen[0] += 1
            yield text


def training_texts(source: str | os.PathLike) -> Iterator[str]:
    """Documents to train on: a prepared folder's train split, else any file/folder/glob/builtin:NAME."""
    path = Path(source)
    if path.is_dir() and (path / "train.jsonl").is_file():
        return iter_prepared(path, "train")
    return read_texts(source)


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None = None) -> Tokenizer:
    """Train a `cfg.kind` tokenizer on `texts` (default: read `cfg.input` lazily) and save it to `cfg.out`."""
    validate(cfg, "tokenizer train")
    seen = [0]
    stream = _counting(_limit_chars(training_texts(cfg.input) if texts is None else texts, cfg.max_chars), seen)
    tok = Tokenizer(_bpe(stream, cfg.vocab_size) if cfg.kind == "bpe" else _char(stream))
    if not seen[0]:
        raise PlinthError(f"no text to train the tokenizer on in {cfg.input if texts is None else 'the given texts'}")
    tok.save(cfg.out)
    return tok
