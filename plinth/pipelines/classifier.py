"""`TextClassifierPipeline`: a `text_classifier` model with its tokenizer and class names; what `plinth.load` returns
for a checkpoint of `plinth finetune classify`. `predict(texts)` gives class probabilities (as `ImageClassifier`
does for images), `classify(texts)` the class names.

A classifier folder holds, beside model.safetensors and config.json, the backbone's `tokenizer.json` and
`classifier.json` (class names, tokenization style, the BOS/EOS ids a decoder's texts are framed with).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from plinth.adapt.lora import ADAPTER_CONFIG
from plinth.artifacts import TOKENIZER, read_json
from plinth.common import PlinthError, atomic_write_json, pick_device
from plinth.data.captions import pad_right
from plinth.models.io import load_model

CLASSIFIER = "classifier.json"


@dataclass
class TextEncoding:
    """How texts become ids: `style` decoder (optional BOS, the text, EOS: the last token is the one pooled) or bert
    (the tokenizer's own [CLS] ... [SEP]); at most `max_len` ids, the text cut, the special tokens kept."""

    classes: list[str]
    style: str = "decoder"
    max_len: int = 256
    bos_id: int | None = None
    eos_id: int | None = None
    tokenizer_json: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        import tokenizers

        self._tok = tokenizers.Tokenizer.from_str(self.tokenizer_json) if self.tokenizer_json else None
        if self._tok is not None:
            self._tok.no_padding()
            self._tok.no_truncation()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (see the class doc)."""
        if self.style == "bert":
            enc = self._tok.encode_batch(list(texts), add_special_tokens=True)
            return [e.ids if len(e.ids) <= self.max_len else e.ids[: self.max_len - 1] + e.ids[-1:] for e in enc]
        head = [] if self.bos_id is None else [self.bos_id]
        tail = [] if self.eos_id is None else [self.eos_id]
        room = self.max_len - len(head) - len(tail)
        enc = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [head + e.ids[:room] + tail for e in enc]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (ids (B, T), real-token mask (B, T))."""
        return pad_right(self.ids(texts), 0)

    def write(self, folder: str | os.PathLike) -> None:
        """classifier.json (and tokenizer.json) into `folder`, atomically."""
        from plinth.common import atomic_write_text

        data = {k: v for k, v in asdict(self).items() if k != "tokenizer_json"}
        atomic_write_json(Path(folder) / CLASSIFIER, {"format_version": 1, **data})
        atomic_write_text(Path(folder) / TOKENIZER, self.tokenizer_json)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> TextEncoding:
        """The encoding stored in a classifier folder; PlinthError naming the file when it is missing or damaged."""
        folder = Path(folder)
        if not (folder / TOKENIZER).is_file():
            raise PlinthError(f"{folder}: no {TOKENIZER} beside the classifier's weights")
        data = read_json(folder / CLASSIFIER, "classifier settings")
        try:
            return cls(classes=list(data["classes"]), style=data["style"], max_len=int(data["max_len"]),
                       bos_id=data.get("bos_id"), eos_id=data.get("eos_id"),
                       tokenizer_json=(folder / TOKENIZER).read_text(encoding="utf-8"))
        except (KeyError, TypeError, ValueError) as e:
            raise PlinthError(f"{folder / CLASSIFIER}: damaged classifier settings ({e})") from None


class TextClassifierPipeline:
    """A text classifier with its tokenizer and class names."""

    batch_size = 32

    def __init__(self, model: torch.nn.Module, encoding: TextEncoding, path: Path | None = None) -> None:
        if len(encoding.classes) != model.config.n_classes:
            raise PlinthError(f"{path or 'classifier'}: {len(encoding.classes)} class names for a head of "
                              f"{model.config.n_classes} classes")
        self.model, self.encoding, self.path = model.eval(), encoding, path
        self.device = next(model.parameters()).device

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> TextClassifierPipeline:
        """Load a checkpoint or model folder of the text_classifier family (a LoRA run's checkpoint too)."""
        folder = Path(folder)
        encoding = TextEncoding.read(folder)
        if (folder / ADAPTER_CONFIG).is_file():  # base + adapter layers
            from plinth.adapt.lora import load_lora_checkpoint

            model = load_lora_checkpoint(folder, device=pick_device(device))
        else:
            model = load_model(folder, device=pick_device(device))
        return cls(model, encoding, folder)

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the head's outputs."""
        return self.encoding.classes

    @property
    def config(self):
        """The model's config."""
        return self.model.config

    def _batched(self, fn, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                ids, mask = self.encoding(texts[i:i + self.batch_size])
                outs.append(fn(ids.to(self.device), mask.to(self.device)).float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.model.config.n_classes)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Class logits (N, n_classes)."""
        return self._batched(self.model, texts)

    def predict(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities (N, n_classes)."""
        return self.logits(texts).softmax(-1)

    def classify(self, texts: Sequence[str]) -> list[str]:
        """The most probable class name of each text."""
        return [self.classes[int(i)] for i in self.logits(texts).argmax(-1)]

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled backbone features (N, d), for probes."""
        return self._batched(self.model.features, texts)
