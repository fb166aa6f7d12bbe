"""Captions as token ids for the text towers and the captioner: one `CaptionTokenizer` over a tokenizer.json, in
the decoder's style (text + end-of-text, the embedding read at that last token) or BERT's ([CLS] text [SEP] from
the file's own post-processor). Batches are right-padded to their longest row, with a mask of real tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from plinth.common import PlinthError
from plinth.config import TokenizerConfig


class CaptionTokenizer:
    """Texts → (ids (B, T) long, mask (B, T) bool), right-padded with id `pad_id`, at most `seq_len` tokens a row.

    `style` "decoder": Plinth's tokenizer, an end-of-text id appended (cut captions keep it last); "bert": the
    tokenizer.json's own special tokens (a BERT/MiniLM file), cut rows keep their final [SEP].
    """

    def __init__(self, path: str | os.PathLike, style: str, seq_len: int) -> None:
        import tokenizers

        self.path, self.style, self.seq_len = Path(path), style, seq_len
        if style == "decoder":
            from plinth.data.tokenizer import Tokenizer

            self.tokenizer = Tokenizer.load(self.path)
            self._tok, self.eos_id, self.pad_id = self.tokenizer.backend, self.tokenizer.eos_id, 0
        elif style == "bert":
            if not self.path.is_file():
                raise PlinthError(f"no tokenizer at {self.path}")
            self._tok = tokenizers.Tokenizer.from_file(str(self.path))
            self._tok.no_padding()
            self._tok.no_truncation()
            self.tokenizer, self.eos_id, self.pad_id = None, -1, 0
        else:
            raise PlinthError(f"unknown caption style {style!r} (decoder or bert)")

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, cut to `seq_len` (the final special token kept)."""
        if self.style == "decoder":
            rows = [e.ids[: self.seq_len - 1] + [self.eos_id]
                    for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]
        else:
            rows = [e.ids if len(e.ids) <= self.seq_len else e.ids[: self.seq_len - 1] + e.ids[-1:]
                    for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]
        return rows

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (ids, mask) for a batch of texts."""
        return pad_right(self.ids(texts), self.pad_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (special tokens dropped)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def pad_right(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), mask (B, T)) with rows left-aligned; T = the longest row."""
    T = max(1, max((len(r) for r in rows), default=1))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def train_caption_tokenizer(texts: Iterable[str], out: str | os.PathLike, vocab_size: int) -> Path:
    """A byte-level BPE trained on `texts` (captions, questions, answers), saved to `out`."""
    from plinth.data.tokenizer import train_tokenizer

    train_tokenizer(TokenizerConfig(input="-", out=str(out), kind="bpe", vocab_size=vocab_size), texts=texts)
    return Path(out)
