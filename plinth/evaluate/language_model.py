"""A trained language model with its tokenizer: load from a run or checkpoint, generate text, score text."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from plinth.common import PlinthError, pick_device, resolve_checkpoint, verify_manifest
from plinth.data.ingest import read_texts
from plinth.data.tokenizer import Tokenizer
from plinth.evaluate.lm import evaluate_texts
from plinth.models.generate import generate_tokens
from plinth.models.io import load_model


class LanguageModel:
    """A GPT plus the tokenizer it was trained with; what `plinth.load` returns."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, path: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> LanguageModel:
        """Load the newest checkpoint of a run folder, or a checkpoint folder, after checking its sha256 manifest."""
        ckpt = resolve_checkpoint(path)
        verify_manifest(ckpt)
        if not (ckpt / "tokenizer.json").is_file():
            raise PlinthError(f"{ckpt}: no tokenizer.json beside the weights")
        model = load_model(ckpt, device=str(pick_device(device)))
        return cls(model, Tokenizer.load(ckpt / "tokenizer.json"), ckpt)

    @property
    def config(self):
        """The model's ModelConfig."""
        return self.model.config

    def _encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        encoded = [self.tokenizer.encode(p) for p in prompts]
        # An empty prompt starts from the document separator, as every training document did.
        return [ids or [self.tokenizer.eos_id] for ids in encoded]

    def stream(self, prompts: str | list[str], max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> Iterator[list[str]]:
        """Yield, per step, the newly completed text of each prompt (empty strings while a character is partial)."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        new_ids: list[list[int]] = [[] for _ in batch]
        shown = [""] * len(batch)
        for step_tokens in generate_tokens(self.model, self._encode_prompts(batch), max_new_tokens,
                                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                           eos_id=self.tokenizer.eos_id):
            pieces = []
            for i, tok in enumerate(step_tokens):
                if tok is not None and tok != self.tokenizer.eos_id:
                    new_ids[i].append(tok)
                text = self.tokenizer.decode(new_ids[i])
                # Hold back a trailing replacement char: it is usually half of a multi-byte character.
                stable = text[:-1] if text.endswith("\ufffd") else text
                pieces.append(stable[len(shown[i]):] if stable.startswith(shown[i]) else "")
                if stable.startswith(shown[i]):
                    shown[i] = stable
            yield pieces
        tail = [self.tokenizer.decode(ids)[len(done):] for ids, done in zip(new_ids, shown)]
        if any(tail):  # whatever was held back as a possibly partial character
            yield tail

    def generate(self, prompts: str | list[str], max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> str | list[str]:
        """Continue each prompt; returns the new text (a list for a list of prompts)."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        new_ids: list[list[int]] = [[] for _ in batch]
        for step_tokens in generate_tokens(self.model, self._encode_prompts(batch), max_new_tokens,
                                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                           eos_id=self.tokenizer.eos_id):
            for i, tok in enumerate(step_tokens):
                if tok is not None and tok != self.tokenizer.eos_id:
                    new_ids[i].append(tok)
        texts = [self.tokenizer.decode(ids) for ids in new_ids]
        return texts[0] if isinstance(prompts, str) else texts

    def evaluate(self, data: str | os.PathLike | Iterable[str], field: str = "text", batch_size: int = 8,
                 max_tokens: int = 0) -> dict[str, float]:
        """Loss, perplexity and bits per byte on a file/folder (text, JSONL, Parquet) or an iterable of strings."""
        if isinstance(data, (str, os.PathLike)):
            texts, source = read_texts(data, field=field), f"{data} (text field {field!r})"
        else:
            texts, source = data, "the given texts"
        return evaluate_texts(self.model, self.tokenizer, texts, self.config.seq_len, batch_size, max_tokens,
                              source=source)
