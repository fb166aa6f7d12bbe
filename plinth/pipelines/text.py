"""`LanguageModel`: a decoder with its tokenizer and text settings; generate, stream and chat with the shared sampling
options, stopping at the model's own stop tokens and at stop strings.

A model folder may carry, beside the weights and `tokenizer.json`, a `generation.json` (special tokens: which ids end
a generation, whether prompts start with BOS) and a `chat_template.jinja` (the Jinja template that turns a list of
messages into a prompt, rendered as `transformers.apply_chat_template` renders it). Imported models have both; models
Plinth pretrained have neither and stop at their end-of-document token.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plinth.adapt.lora import ADAPTER_CONFIG
from plinth.artifacts import CHAT_TEMPLATE, CHECKPOINTS, GENERATION, TOKENIZER, read_json
from plinth.common import PlinthError, atomic_write_json, atomic_write_text, pick_device
from plinth.config import SamplingConfig, from_dict, suggest, to_dict, validate
from plinth.data.chat import render_chat
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


@dataclass
class TextSettings:
    """How a language model's text is framed: `generation.json` in a model folder (the chat template is beside it).

    Token strings are what chat templates print (`{{ bos_token }}`); ids are what generation stops at.
    """

    bos_token: str | None = None
    eos_token: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)  # every id that ends a generation (HF allows several)
    pad_token_id: int | None = None
    add_bos_token: bool = False  # prompts start with bos_token_id (Llama/SentencePiece models want it; SmolLM does not)
    chat_template: str | None = None  # stored as chat_template.jinja, not in generation.json
    gguf_pre: str | None = None  # llama.cpp's pre-tokenizer name of a GGUF source, written back on GGUF export

    @classmethod
    def read(cls, folder: str | os.PathLike) -> TextSettings:
        """The settings stored in `folder` (defaults when it has no generation.json)."""
        folder = Path(folder)
        settings = cls()
        if (folder / GENERATION).is_file():
            data = read_json(folder / GENERATION, "generation settings")
            settings = from_dict(cls, data, str(folder / GENERATION), strict=True,
                                 ignore=("format_version", "chat_template"))
        if (folder / CHAT_TEMPLATE).is_file():
            settings.chat_template = (folder / CHAT_TEMPLATE).read_text(encoding="utf-8")
        return settings

    def write(self, folder: str | os.PathLike) -> None:
        """Write generation.json (and chat_template.jinja when there is a template) into `folder`, atomically."""
        folder = Path(folder)
        data = {k: v for k, v in to_dict(self).items() if k != "chat_template"}
        atomic_write_json(folder / GENERATION, {"format_version": 1, **data})
        if self.chat_template:
            atomic_write_text(folder / CHAT_TEMPLATE, self.chat_template)


class LanguageModel:
    """A decoder (`GPT`) plus its tokenizer and text settings: what `plinth.load` returns for the `gpt` family."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, path: Path | None = None,
                 settings: TextSettings | None = None) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise PlinthError(f"{path or 'model'}: the tokenizer has {tokenizer.vocab_size} ids, more than the "
                              f"model's vocabulary of {model.config.vocab_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.settings = settings or TextSettings()
        ids = set(self.settings.eos_token_ids)
        if tokenizer.eos_id >= 0:
            ids.add(tokenizer.eos_id)  # the end-of-document token ends any generation too
        self.stop_ids: frozenset[int] = frozenset(ids)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> LanguageModel:
        """The model, `tokenizer.json` and text settings of a checkpoint or model folder (verified by the caller)."""
        folder = Path(folder)
        if not (folder / TOKENIZER).is_file():
            raise PlinthError(f"{folder}: no {TOKENIZER} beside the weights")
        settings = TextSettings.read(folder)
        if (folder / ADAPTER_CONFIG).is_file():  # a LoRA run's checkpoint: base weights and adapter layers
            from plinth.adapt.lora import load_lora_checkpoint

            model = load_lora_checkpoint(folder, device=pick_device(device))
        else:
            model = load_model(folder, device=pick_device(device))
        tokenizer = Tokenizer.load(folder / TOKENIZER, require_eos=not (folder / GENERATION).is_file())
        return cls(model, tokenizer, folder, settings)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> LanguageModel:
        """`plinth.load` for a language model: a run, checkpoint, model folder, GGUF file, HF folder or builtin:NAME."""
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

    # ------------------------------------------------------------------------------------------------------------------
    # Prompts

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        """Token ids of `text`, with the BOS id first when the model wants it (`bos=None`: as its settings say)."""
        ids = self.tokenizer.encode(text)
        want_bos = self.settings.add_bos_token if bos is None else bos
        if want_bos and self.settings.bos_token_id is not None:
            ids = [self.settings.bos_token_id, *ids]
        return ids

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt; an empty prompt starts from BOS, or the document separator Plinth trains with."""
        start = self.settings.bos_token_id if self.settings.bos_token_id is not None else self.tokenizer.eos_id
        return [self.encode(p) or [start] for p in prompts]

    def chat_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    template: str | None = None) -> str:
        """The prompt text the model's chat template makes of `messages` ([{"role": ..., "content": ...}, ...]),
        identical to transformers' `apply_chat_template(..., tokenize=False)`."""
        template = template or self.settings.chat_template
        if not template:
            where = self.path or "this model"
            raise PlinthError(f"{where} has no chat template ({CHAT_TEMPLATE}); pass one with --template FILE")
        return render_chat(template, list(messages), add_generation_prompt, self.settings.bos_token,
                           self.settings.eos_token)

    def chat_ids(self, messages: Sequence[dict[str, Any]], template: str | None = None) -> list[int]:
        """Token ids of the rendered chat, ending with the assistant's turn opener (the template writes any BOS)."""
        return self.tokenizer.encode(self.chat_prompt(messages, True, template))

    # ------------------------------------------------------------------------------------------------------------------
    # Generation

    def stream_ids(self, prompts: list[list[int]], sampling: SamplingConfig | None = None,
                   **options: Any) -> Iterator[list[str]]:
        """`stream` for prompts given as token ids."""
        opts = sampling_options(sampling, **options)
        steps = generate_tokens(self.model, prompts, opts.max_new_tokens, temperature=opts.temperature,
                                top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed, eos_id=self.stop_ids)
        return self._texts(steps, len(prompts), opts.stop)

    def stream(self, prompts: str | list[str], sampling: SamplingConfig | None = None,
               **options: Any) -> Iterator[list[str]]:
        """Yield, per step, the newly completed text of each prompt (empty while a character is still partial, or
        while the text so far could be the start of a stop string).

        Options are SamplingConfig's fields (max_new_tokens, temperature, top_k, top_p, seed, stop), checked at the
        call. A row ends at one of the model's stop tokens (not shown) or before the first stop string.
        """
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.stream_ids(self.encode_prompts(batch), sampling, **options)

    def _texts(self, steps: Iterator[list[int | None]], n: int, stop: Sequence[str] = ()) -> Iterator[list[str]]:
        streams = [TextStream(self.tokenizer, stop, self.stop_ids) for _ in range(n)]
        for step_tokens in steps:
            yield [s.add(tok) for s, tok in zip(streams, step_tokens)]
            if all(s.ended for s in streams):
                steps.close()  # stop decoding: every row has hit a stop string
                return
        tail = [s.finish() for s in streams]
        if any(tail):
            yield tail

    def generate(self, prompts: str | list[str], sampling: SamplingConfig | None = None,
                 **options: Any) -> str | list[str]:
        """Continue each prompt; returns the new text (a list for a list of prompts). Options as for `stream`."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = ["" for _ in batch]
        for pieces in self.stream(batch, sampling, **options):
            texts = [t + p for t, p in zip(texts, pieces)]
        return texts[0] if isinstance(prompts, str) else texts

    def chat_stream(self, messages: Sequence[dict[str, Any]], sampling: SamplingConfig | None = None,
                    template: str | None = None, **options: Any) -> Iterator[str]:
        """Stream the assistant's reply to `messages`, piece by piece; it ends at the model's end-of-turn/stop tokens
        or a stop string. A chat longer than the context keeps its most recent tokens (with a warning)."""
        ids = self.chat_ids(messages, template)
        return (pieces[0] for pieces in self.stream_ids([ids], sampling, **options))

    def chat(self, messages: Sequence[dict[str, Any]], sampling: SamplingConfig | None = None,
             template: str | None = None, **options: Any) -> str:
        """The assistant's whole reply to `messages` (see `chat_stream`)."""
        return "".join(self.chat_stream(messages, sampling, template, **options))

    def __repr__(self) -> str:
        c = self.config
        return (f"LanguageModel({c.name}: {c.n_layer} layers, d_model {c.d_model}, context {c.seq_len}, "
                f"vocab {c.vocab_size}; from {self.path})")


class TextStream:
    """One sequence's generated token ids turned into text, piece by piece, as they come.

    A piece is only released once it is final: a probably partial UTF-8 character (U+FFFD at the end) and any tail
    that could be the start of a stop string are held back, and the text ends before the first stop string, which
    is matched on the decoded text (so across token boundaries) and never shown. `skip_ids` (the model's stop
    tokens) add no text. `finish()` releases what was held back when the sequence ends without a stop string.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), skip_ids: Collection[int] = ()) -> None:
        self.tokenizer, self.stop, self.skip_ids = tokenizer, [s for s in stop if s], frozenset(skip_ids)
        self.ids: list[int] = []
        self.shown = ""  # the text released so far
        self.ended = False  # a stop string was generated: later tokens are dropped
        self.tokens_used = 0  # how many ids the released text draws on (all of them until a stop string)

    def add(self, token: int | None) -> str:
        """Take the next token id (None: no new token) and return the newly final text (often "")."""
        if self.ended:
            return ""
        if token is not None and token not in self.skip_ids:
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = _first_stop(text, self.stop)
        if cut is not None:
            stable, self.ended = text[:cut], True
        else:
            stable = text[: len(text) - _held_back(text, self.stop)]
        self.tokens_used = len(self.ids)
        if not stable.startswith(self.shown):
            return ""
        piece, self.shown = stable[len(self.shown):], stable
        return piece

    def finish(self) -> str:
        """The held-back tail at the end of the sequence (nothing after a stop string)."""
        if self.ended:
            return ""
        text = self.tokenizer.decode(self.ids)
        cut = _first_stop(text, self.stop)
        text = text[:cut] if cut is not None else text
        self.ended = True
        if not text.startswith(self.shown):
            return ""
        piece, self.shown = text[len(self.shown):], text
        return piece


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters to hold back while streaming: a probably partial character (U+FFFD), or the
    longest tail that could be the start of a stop string."""
    hold = 1 if text.endswith("\ufffd") else 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class ChatSession:
    """A conversation with a `LanguageModel`: the history, an optional system message, and replies streamed with the
    model's chat template. What `plinth chat` drives, line by line; a server can drive it the same way."""

    def __init__(self, lm: LanguageModel, system: str = "", sampling: SamplingConfig | None = None,
                 template: str | None = None) -> None:
        self.lm, self.system, self.template = lm, system, template
        self.sampling = sampling_options(sampling)
        self.history: list[dict[str, str]] = []
        lm.chat_prompt([{"role": "user", "content": "hi"}], template=template)  # no template: fail now, not later

    def messages(self) -> list[dict[str, str]]:
        """The system message (if any) and the turns so far."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reset(self) -> None:
        """Forget the turns (the system message stays)."""
        self.history = []

    def _fit(self) -> list[dict[str, str]]:
        """The messages to send: the oldest turns are dropped while prompt + reply would overflow the context."""
        budget = self.lm.config.seq_len - self.sampling.max_new_tokens
        messages = self.messages()
        first_turn = 1 if self.system else 0
        while len(messages) - first_turn > 1 and len(self.lm.chat_ids(messages, self.template)) > budget:
            messages = messages[:first_turn] + messages[first_turn + 2:]  # drop the oldest user/assistant pair
        return messages

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply; the whole reply joins the history when the stream ends."""
        self.history.append({"role": "user", "content": text})
        turn = sum(m["role"] == "user" for m in self.history)
        sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + turn - 1)
        reply = []
        try:
            for piece in self.lm.chat_stream(self._fit(), sampling, self.template):
                reply.append(piece)
                yield piece
        finally:
            self.history.append({"role": "assistant", "content": "".join(reply).strip()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation as JSON ({"system": ..., "messages": [...]}), atomically; returns the path."""
        path = Path(path)
        atomic_write_json(path, {"system": self.system, "messages": self.messages()})
        return path
