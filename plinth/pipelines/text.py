"""`LanguageModel`: a decoder with its tokenizer; generate and stream text with the shared sampling options."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from plinth.artifacts import CHECKPOINTS, TOKENIZER
from plinth.common import PlinthError, pick_device
from plinth.config import SamplingConfig, suggest, validate
from plinth.data.tokenizer import Tokenizer
from plinth.models.generate import generate_tokens
from plinth.models.io import load_model


def sampling_options(sampling: SamplingConfig | None = None, **options: Any) -> SamplingConfig:
    """`sampling` (default: SamplingConfig's defaults) with keyword overrides, validated (one-line PlinthError)."""
    base = sampling or SamplingConfig()
    names = [f.name for f in dataclasses.fields(SamplingConfig)]
    for key in options:
        if key not in names:
            raise PlinthError(f"unknown sampling option {key!r}{suggest(key, names)}")
    chosen = dataclasses.replace(base, **options)
    validate(chosen, "sampling")
    return chosen


class LanguageModel:
    """A decoder (`GPT`) plus the tokenizer it was trained with: what `plinth.load` returns for the `gpt` family."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, path: Path | None = None) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise PlinthError(f"{path or 'model'}: the tokenizer has {tokenizer.vocab_size} ids, more than the "
                              f"model's vocabulary of {model.config.vocab_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> LanguageModel:
        """Load the model and `tokenizer.json` of a checkpoint or model folder (already verified by the caller)."""
        folder = Path(folder)
        if not (folder / TOKENIZER).is_file():
            raise PlinthError(f"{folder}: no {TOKENIZER} beside the weights")
        model = load_model(folder, device=pick_device(device))
        return cls(model, Tokenizer.load(folder / TOKENIZER), folder)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> LanguageModel:
        """`plinth.load` for a language model: a run, checkpoint or model folder."""
        from plinth.pipelines import load

        lm = load(path, device=device)
        if not isinstance(lm, cls):
            raise PlinthError(f"{path}: holds a {type(lm).__name__}, not a language model")
        return lm

    @property
    def config(self):
        """The model's config (GPTConfig)."""
        return self.model.config

    @property
    def run_dir(self) -> Path | None:
        """The run folder this checkpoint belongs to, if it is a run's checkpoint."""
        if self.path is not None and self.path.parent.name == CHECKPOINTS:
            return self.path.parent.parent
        return None

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt; an empty prompt starts from the document separator, as training documents did."""
        return [self.tokenizer.encode(p) or [self.tokenizer.eos_id] for p in prompts]

    def _steps(self, batch: list[str], sampling: SamplingConfig | None, options: dict) -> Iterator[list[int | None]]:
        opts = sampling_options(sampling, **options)
        return generate_tokens(self.model, self.encode_prompts(batch), opts.max_new_tokens,
                               temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed,
                               eos_id=self.tokenizer.eos_id)

    def stream(self, prompts: str | list[str], sampling: SamplingConfig | None = None,
               **options: Any) -> Iterator[list[str]]:
        """Yield, per step, the newly completed text of each prompt (empty while a character is still partial).

        Options are SamplingConfig's fields (max_new_tokens, temperature, top_k, top_p, seed), checked at the call.
        """
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        return self._texts(self._steps(batch, sampling, options), len(batch))

    def _texts(self, steps: Iterator[list[int | None]], n: int) -> Iterator[list[str]]:
        new_ids: list[list[int]] = [[] for _ in range(n)]
        shown = [""] * n
        eos = self.tokenizer.eos_id
        for step_tokens in steps:
            pieces = []
            for i, tok in enumerate(step_tokens):
                if tok is not None and tok != eos:
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

    def generate(self, prompts: str | list[str], sampling: SamplingConfig | None = None,
                 **options: Any) -> str | list[str]:
        """Continue each prompt; returns the new text (a list for a list of prompts). Options as for `stream`."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        new_ids: list[list[int]] = [[] for _ in batch]
        eos = self.tokenizer.eos_id
        for step_tokens in self._steps(batch, sampling, options):
            for row, tok in zip(new_ids, step_tokens):
                if tok is not None and tok != eos:
                    row.append(tok)
        texts = [self.tokenizer.decode(ids) for ids in new_ids]
        return texts[0] if isinstance(prompts, str) else texts

    def __repr__(self) -> str:
        c = self.config
        return (f"LanguageModel({c.name}: {c.n_layer} layers, d_model {c.d_model}, context {c.seq_len}, "
                f"vocab {c.vocab_size}; from {self.path})")
