"""Pipelines of the image families: a model with its image transform (preprocess.json) and, where it reads or writes
text, its tokenizer. What `plinth.load` returns for `cnn`/`vit` (ImageClassifier), `clip` (CLIPPipeline) and
`captioner` (CaptionPipeline)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.artifacts import TOKENIZER
from plinth.common import PlinthError, pick_device
from plinth.data.captions import CaptionTokenizer
from plinth.data.images import Preprocess
from plinth.models.io import load_model

PREPROCESS = "preprocess.json"
LABELS = "labels.json"
VQA_PROMPT = "question: {} answer:"


def _preprocess(folder: Path, image_size: int) -> Preprocess:
    path = folder / PREPROCESS
    if not path.is_file():
        return Preprocess(image_size)
    try:
        return Preprocess.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise PlinthError(f"{path}: damaged image preprocessing file ({e})") from None


class _ImagePipeline:
    """Shared: device, preprocessing of arrays or pixel batches, batched no-grad forward passes."""

    batch_size = 64

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, path: Path | None) -> None:
        self.model, self.preprocess, self.path = model.eval(), preprocess, path
        self.device = next(model.parameters()).device

    def pixels(self, images: Any) -> torch.Tensor:
        """A normalised pixel batch (B, 3, S, S) from a list of RGB arrays or a batch already normalised."""
        if isinstance(images, torch.Tensor):
            return images
        return self.preprocess(list(images))

    def _batched(self, fn, images: Any) -> torch.Tensor:
        outs = []
        if isinstance(images, torch.Tensor):
            chunks = list(images.split(self.batch_size))
        else:
            images = list(images)
            chunks = [images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size)]
        with torch.inference_mode():
            for chunk in chunks:
                outs.append(fn(self.pixels(chunk).to(self.device)).float().cpu())
        return torch.cat(outs)

    @property
    def config(self):
        """The model's config."""
        return self.model.config


class ImageClassifier(_ImagePipeline):
    """A CNN or ViT with a classification head and its class names (`labels.json`)."""

    def __init__(self, model, preprocess: Preprocess, classes: list[str], path: Path | None = None) -> None:
        super().__init__(model, preprocess, path)
        self.classes = classes

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> ImageClassifier:
        """Load a checkpoint or model folder of the cnn/vit family."""
        folder = Path(folder)
        model = load_model(folder, device=pick_device(device))
        classes = json.loads((folder / LABELS).read_text(encoding="utf-8")) if (folder / LABELS).is_file() else []
        if not model.config.n_classes:
            raise PlinthError(f"{folder}: this {model.config.family} model has no classification head (n_classes 0)")
        classes = classes or [str(i) for i in range(model.config.n_classes)]
        return cls(model, _preprocess(folder, model.config.image_size), classes, folder)

    def predict(self, images: Any) -> torch.Tensor:
        """Class probabilities (N, n_classes)."""
        return self._batched(lambda x: self.model(x).softmax(-1), images)

    def features(self, images: Any) -> torch.Tensor:
        """Pooled image features (N, d), for linear probes."""
        return self._batched(self.model.features, images)


class CLIPPipeline(_ImagePipeline):
    """A CLIP model with its tokenizer and image transform: embed images and texts into one space."""

    def __init__(self, model, preprocess: Preprocess, captions: CaptionTokenizer, path: Path | None = None) -> None:
        super().__init__(model, preprocess, path)
        self.captions = captions
        self.logit_scale = float(model.temperature_scale().detach())

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> CLIPPipeline:
        """Load a checkpoint or model folder of the clip family (with its tokenizer.json)."""
        folder = Path(folder)
        if not (folder / TOKENIZER).is_file():
            raise PlinthError(f"{folder}: no {TOKENIZER} beside the weights")
        model = load_model(folder, device=pick_device(device))
        style = "bert" if model.config.text_tower == "bert" else "decoder"
        captions = CaptionTokenizer(folder / TOKENIZER, style, model.config.text_seq_len)
        return cls(model, _preprocess(folder, model.config.image_size), captions, folder)

    def encode_images(self, images: Any) -> torch.Tensor:
        """Unit image embeddings (N, E) of RGB arrays or a normalised pixel batch."""
        return self._batched(self.model.encode_image, images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings (N, E)."""
        outs = []
        texts = list(texts)
        with torch.inference_mode():
            for i in range(0, len(texts), 256):
                ids, mask = self.captions(texts[i:i + 256])
                outs.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.model.config.embed_dim)

    def token_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower's per-token states (B, T, d) and real-token mask (B, T), for text conditioning."""
        ids, mask = self.captions(list(texts))
        with torch.inference_mode():
            tower = self.model.text_model
            ids, mask = ids.to(self.device), mask.to(self.device)
            states = tower(ids, mask) if self.model.config.text_tower == "bert" else tower(ids)
        return states.float().cpu(), mask.cpu()

    def image_features(self, images: Any) -> torch.Tensor:
        """The image tower's pooled output (N, d) before the projection, for linear probes."""
        return self._batched(lambda x: self.model.vision_model(x)[1], images)


class CaptionPipeline(_ImagePipeline):
    """A captioner with its tokenizer and image transform: caption images, answer questions about them."""

    def __init__(self, model, preprocess: Preprocess, captions: CaptionTokenizer, path: Path | None = None) -> None:
        super().__init__(model, preprocess, path)
        self.captions = captions
        self.batch_size = 32

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "auto") -> CaptionPipeline:
        """Load a checkpoint or model folder of the captioner family (with its tokenizer.json)."""
        folder = Path(folder)
        if not (folder / TOKENIZER).is_file():
            raise PlinthError(f"{folder}: no {TOKENIZER} beside the weights")
        model = load_model(folder, device=pick_device(device))
        captions = CaptionTokenizer(folder / TOKENIZER, "decoder", model.config.seq_len)
        return cls(model, _preprocess(folder, model.config.image_size), captions, folder)

    def _generate(self, images: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
        from plinth.models.captioner import ImagePrefixed
        from plinth.models.generate import generate

        eos = self.captions.eos_id
        pixels = self.pixels(images)
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = pixels[start:start + self.batch_size].to(self.device)
            rows = [[eos] + self.captions.tokenizer.encode(p) for p in prompts[start:start + self.batch_size]]
            with torch.inference_mode():
                view = ImagePrefixed(self.model, self.model.image_prefix(chunk))
            # Within the text budget, so the image prefix is never slid out of the context.
            budget = max(1, min(max_new_tokens, self.model.config.seq_len - max(len(r) for r in rows)))
            new = generate(view, rows, budget, temperature=0.0, eos_id=eos)
            out += [self.captions.decode([t for t in ids if t != eos]).strip() for ids in new]
        return out

    def caption(self, images: Any, max_new_tokens: int = 24) -> list[str]:
        """A caption per image (greedy decoding)."""
        n = len(images)
        return self._generate(images, [""] * n, max_new_tokens)

    def answer(self, images: Any, questions: Sequence[str], max_new_tokens: int = 8) -> list[str]:
        """The answer to questions[i] about image i (greedy decoding)."""
        if len(questions) != len(images):
            raise PlinthError(f"{len(questions)} questions for {len(images)} images: give one question per image")
        return self._generate(images, [VQA_PROMPT.format(q.strip()) for q in questions], max_new_tokens)


def labelled_arrays(split: Any, max_images: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The stored pixels of a prepared split (first `max_images`) and their labels."""
    n = len(split) if not max_images else min(len(split), max_images)
    return [np.asarray(split.pixels[i]) for i in range(n)], split.labels[:n]
