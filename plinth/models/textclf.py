"""A text classifier: a pretrained backbone (Plinth's decoder, or a BERT encoder such as MiniLM) and a linear head on
its pooled features. The `text_classifier` family.

Pooling follows the references: a decoder's features are the hidden state of the last real token (the only position
that has seen the whole text; HF `LlamaForSequenceClassification` does the same), an encoder's are the mean over real
tokens (sentence-transformers' pooling for MiniLM). Rows are right-padded: a causal decoder never attends to the
padding after a token, so it needs no mask; the encoder gets one.

The backbone's own config is stored inside this config (`backbone`, its config.json mapping), so a classifier folder
rebuilds from its config.json alone. Keys: `backbone.*` (the decoder body without its LM head, or the BERT encoder
without its pooler) and `score.*` (the head; HF's name for a sequence-classification head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from plinth.config import PlinthError, option, validate

BACKBONES = ("gpt", "bert")


@dataclass
class TextClassifierConfig:
    """A backbone's config plus the head: the `text_classifier` family's fields."""

    family: ClassVar[str] = "text_classifier"

    name: str = option("custom", "what this classifier was built from (informational)")
    backbone: dict = option({}, "the backbone's config.json mapping (family gpt or bert)")
    n_classes: int = option(2, "number of classes", min=2)
    max_len: int = option(256, "tokens per text, longer ones cut (special tokens included)", min=2)

    def __post_init__(self) -> None:
        validate(self, "model config")

    def check(self) -> None:
        """The backbone is a family this head can pool: gpt (last token) or bert (mean)."""
        if self.backbone.get("family") not in BACKBONES:
            raise PlinthError(f"text_classifier backbone family {self.backbone.get('family')!r}: use one of "
                              f"{', '.join(BACKBONES)}")

    @property
    def backbone_config(self):
        """The backbone's config object."""
        from plinth.models.registry import config_from_dict

        return config_from_dict(self.backbone, "text_classifier backbone")

    @property
    def pooling(self) -> str:
        """`last` (decoder) or `mean` (encoder)."""
        return "last" if self.backbone["family"] == "gpt" else "mean"


PRESETS: dict[str, dict] = {}  # built from a pretrained backbone, never from a preset


class TextClassifier(nn.Module):
    """Backbone + linear head; `forward(input_ids, attention_mask)` → logits (B, n_classes) in fp32."""

    config_class = TextClassifierConfig

    def __init__(self, config: TextClassifierConfig) -> None:
        super().__init__()
        self.config = config
        bc = config.backbone_config
        if config.pooling == "last":
            from plinth.models.gpt import Decoder

            self.backbone = Decoder(bc)
        else:
            from plinth.models.bert import Bert

            self.backbone = Bert(bc)
            del self.backbone.pooler  # BERT's [CLS] pooler is not used by mean pooling
        self.score = nn.Linear(bc.d_model, config.n_classes)
        with torch.no_grad():
            nn.init.normal_(self.score.weight, std=0.02)
            nn.init.zeros_(self.score.bias)

    def layer_prefixes(self) -> tuple[list[str], list[str]]:
        """(embedding parameter prefixes, one prefix per block in order), for freezing the first K blocks."""
        if self.config.pooling == "last":
            return ["backbone.embed_tokens."], [f"backbone.layers.{i}." for i in range(len(self.backbone.layers))]
        return ["backbone.embeddings."], [f"backbone.encoder.layer.{i}."
                                          for i in range(len(self.backbone.encoder.layer))]

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, d) of right-padded ids (B, T) with their real-token mask (B, T)."""
        mask = attention_mask.bool()
        if self.config.pooling == "last":
            h = self.backbone(input_ids)  # (B, T, d): causal, so padding after a token never reaches it
            last = mask.sum(1).clamp(min=1) - 1  # (B,) index of each row's last real token
            return h[torch.arange(h.shape[0], device=h.device), last]
        h = self.backbone(input_ids, mask)  # (B, T, d)
        m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes), fp32."""
        return self.score(self.features(input_ids, attention_mask)).float()
