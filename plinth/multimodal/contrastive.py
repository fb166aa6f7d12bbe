"""The symmetric InfoNCE loss of CLIP (Radford et al. 2021, fig. 3), with several positives where captions repeat."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                     groups: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed symmetric cross-entropy over the B x B similarity matrix, and its accuracies.

    `image_emb`, `text_emb` (B, E) unit length; `scale` the inverse temperature (a scalar tensor, learned). Row i's
    target is its own caption; with `groups` (B,) ids of the caption texts, every pair sharing a caption is a positive
    and the target spreads evenly over them (captions made from class names repeat within a batch, and treating an
    identical caption as a negative would ask for the impossible). Returns (sum over images of
    (image→text CE + text→image CE) / 2, {"i2t_acc", "t2i_acc", "scale"}): divide by B for CLIP's mean.
    """
    logits = scale * image_emb.float() @ text_emb.float().T  # (B, B): images x texts
    B = logits.shape[0]
    if groups is None:
        target = torch.arange(B, device=logits.device)
        loss = (F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.T, target, reduction="sum"))
        positive = torch.eye(B, dtype=torch.bool, device=logits.device)
    else:
        positive = groups[:, None] == groups[None, :]  # (B, B), symmetric
        weights = positive.float() / positive.sum(1, keepdim=True)  # each row's target distribution
        loss = (-(weights * F.log_softmax(logits, dim=1)).sum() - (weights * F.log_softmax(logits.T, dim=1)).sum())
    with torch.no_grad():
        rows = torch.arange(B, device=logits.device)
        i2t = positive[rows, logits.argmax(1)].float().mean().item()
        t2i = positive[logits.argmax(0), rows].float().mean().item()
    return loss / 2, {"i2t_acc": i2t, "t2i_acc": t2i, "scale": float(scale.detach())}


def caption_groups(captions: list[str]) -> torch.Tensor:
    """(B,) ids equal exactly where the caption strings are equal."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions], dtype=torch.long)
