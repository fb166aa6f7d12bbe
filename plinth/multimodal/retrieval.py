"""Retrieval between images and texts with recall@k (the share of queries whose match is among the top k)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def recall_at_k(similarity: torch.Tensor, relevant: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10)
                ) -> dict[str, float]:
    """Recall@k of queries (rows of `similarity`, (Q, N)) whose relevant items (column indices) are `relevant[q]`.

    A query counts as found at k when any relevant item is among its k highest scores (so an image with several
    captions is found by any of them, as in the COCO/Flickr retrieval protocol). k larger than N counts everything.
    """
    if similarity.shape[0] != len(relevant):
        raise ValueError(f"{similarity.shape[0]} queries but {len(relevant)} relevance sets")
    order = similarity.argsort(dim=1, descending=True)  # (Q, N)
    rank = torch.full((len(relevant),), similarity.shape[1], dtype=torch.long)
    for q, rel in enumerate(relevant):
        hits = torch.isin(order[q], torch.tensor(sorted(rel), dtype=torch.long)).nonzero()
        if len(hits):
            rank[q] = int(hits[0])
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def top_k(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices) of the k best items per query, best first."""
    k = min(k, similarity.shape[1])
    return similarity.topk(k, dim=1)
