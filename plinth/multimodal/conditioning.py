"""Text conditioning: what a model conditioned on text (a captioner's question, later a text-to-image diffusion
model) reads from a text encoder: per-token states, their mask, and one pooled vector per text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TextConditioning:
    """Per-token states (B, T, d), a real-token mask (B, T) and pooled, projected, unit embeddings (B, E)."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class TextConditioner:
    """Encodes texts with a CLIP pipeline's text tower (frozen: no gradient), for models that take text as input."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def __call__(self, texts: Sequence[str]) -> TextConditioning:
        """States, mask and pooled embeddings of `texts`."""
        states, mask = self.clip.token_states(list(texts))
        return TextConditioning(states, mask, self.clip.encode_texts(list(texts)))
