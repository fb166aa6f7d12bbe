"""Zero-shot classification: classes as text embeddings averaged over prompt templates (CLIP's prompt ensembling,
Radford et al. 2021 sec. 3.1.4), images assigned to the nearest class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plinth.common import PlinthError

# A short, general list in the spirit of CLIP's ImageNet templates; data sets may bring their own (dataset.json).
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.", "{}")


def check_templates(templates: Sequence[str]) -> list[str]:
    """Templates, each with exactly one `{}`; PlinthError naming a bad one."""
    out = list(templates) or list(DEFAULT_TEMPLATES)
    for t in out:
        if t.count("{}") != 1:
            raise PlinthError(f"prompt template {t!r} must contain exactly one {{}} for the class name")
    return out


class ZeroShotClassifier:
    """Classify images among `classes` named in words, with a CLIP pipeline (`encode_texts`, `encode_images`).

    Each class's weight is the normalised mean of its templates' normalised text embeddings; an image's scores are
    cosine similarities times the model's inverse temperature, softmaxed over the classes.
    """

    def __init__(self, clip: Any, classes: Sequence[str], templates: Sequence[str] = ()) -> None:
        if not classes:
            raise PlinthError("zero-shot classification needs at least one class name (--classes)")
        self.clip, self.classes = clip, list(classes)
        self.templates = check_templates(templates)
        prompts = [t.format(c) for c in self.classes for t in self.templates]
        emb = clip.encode_texts(prompts).view(len(self.classes), len(self.templates), -1)  # (C, K, E)
        self.weights = F.normalize(emb.mean(1), dim=-1)  # (C, E)

    def scores(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C) for unit image embeddings (N, E)."""
        return (self.clip.logit_scale * image_emb @ self.weights.T).softmax(-1)

    def classify(self, images: Any) -> torch.Tensor:
        """Class probabilities (N, C) of images (arrays, or a pixel batch the pipeline accepts)."""
        return self.scores(self.clip.encode_images(images))

    def accuracy(self, probs: torch.Tensor, labels: Sequence[int] | np.ndarray) -> float:
        """Top-1 accuracy against class indices into `classes`."""
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        return float((probs.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
