"""Multimodal uses of image-text models: the contrastive loss, zero-shot classification with prompt templates and
ensembling, retrieval with recall@k, linear probes on frozen image features, and text conditioning."""

from plinth.multimodal.contrastive import contrastive_loss
from plinth.multimodal.retrieval import recall_at_k
from plinth.multimodal.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier

__all__ = ["DEFAULT_TEMPLATES", "ZeroShotClassifier", "contrastive_loss", "recall_at_k"]
