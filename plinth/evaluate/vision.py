"""Scores of image models on a prepared image set: zero-shot accuracy (seen and unseen classes), retrieval
recall@k, classifier accuracy, linear probes, caption BLEU-4/CIDEr-D and VQA accuracy."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch

from plinth.data.image_prep import ImageSet, ImageSplit, iter_eval_batches
from plinth.evaluate.caption_metrics import answer_accuracy, bleu4, cider_d, normalize_answer
from plinth.multimodal.probe import fit_probe
from plinth.multimodal.retrieval import recall_at_k
from plinth.multimodal.zeroshot import ZeroShotClassifier


def _pixels(pipe: Any, split: ImageSplit, max_images: int) -> tuple[torch.Tensor, list[int]]:
    """All (up to max_images) stored images of a split, resized for the model, and their indices."""
    xs, idx = [], []
    for x, i in iter_eval_batches(split, 256, pipe.preprocess, max_images):
        xs.append(x)
        idx += i
    return torch.cat(xs), idx


def zero_shot(clip: Any, split: ImageSplit, classes: list[str], templates: list[str],
              max_images: int = 0) -> dict[str, Any]:
    """Top-1 accuracy of zero-shot classification among `classes` on the split's images of those classes."""
    names = split.classes
    wanted = {names.index(c) for c in classes if c in names}
    keep = [i for i, r in enumerate(split.records) if r["label"] in wanted]
    if max_images:
        keep = keep[:max_images]
    if not keep:
        return {"accuracy": float("nan"), "images": 0, "classes": len(classes), "chance": 1 / max(1, len(classes))}
    remap = {names.index(c): k for k, c in enumerate(classes) if c in names}
    labels = [remap[split.records[i]["label"]] for i in keep]
    arrays = [np.asarray(split.pixels[i]) for i in keep]
    from plinth.data.images import resize_square

    pixels = clip.preprocess.normalise(torch.from_numpy(np.stack([resize_square(a, clip.preprocess.image_size)
                                                                  for a in arrays])))
    zs = ZeroShotClassifier(clip, classes, templates)
    probs = zs.classify(pixels)
    return {"accuracy": zs.accuracy(probs, labels), "images": len(keep), "classes": len(classes),
            "chance": 1 / len(classes), "predictions": probs.argmax(1).tolist(), "labels": labels}


def retrieval(clip: Any, split: ImageSplit, max_images: int = 0) -> dict[str, float]:
    """Text→image and image→text recall@1/5/10 with every caption of the split's images as a query."""
    pixels, idx = _pixels(clip, split, max_images)
    image_emb = clip.encode_images(pixels)  # (N, E)
    texts, owner = [], []
    for k, i in enumerate(idx):
        for c in split.records[i]["captions"]:
            texts.append(c)
            owner.append(k)
    text_emb = clip.encode_texts(texts)  # (M, E)
    sim = text_emb @ image_emb.T  # (M, N)
    t2i = recall_at_k(sim, [{o} for o in owner])
    by_image: dict[int, set[int]] = defaultdict(set)
    for t, o in enumerate(owner):
        by_image[o].add(t)
    i2t = recall_at_k(sim.T, [by_image[k] for k in range(len(idx))])
    return {**{f"t2i_{k}": v for k, v in t2i.items()}, **{f"i2t_{k}": v for k, v in i2t.items()},
            "images": len(idx), "captions": len(texts)}


def classifier_accuracy(pipe: Any, split: ImageSplit, max_images: int = 0) -> dict[str, float]:
    """Top-1 accuracy of an image classifier pipeline on a labelled split."""
    pixels, idx = _pixels(pipe, split, max_images)
    labels = torch.as_tensor(split.labels[idx])
    keep = labels >= 0
    pred = pipe.predict(pixels).argmax(1)
    return {"accuracy": float((pred[keep] == labels[keep]).float().mean()), "images": int(keep.sum())}


def linear_probe(pipe: Any, images: ImageSet, train_split: str = "train", eval_split: str = "val",
                 max_images: int = 5000) -> dict[str, float]:
    """Logistic regression on the frozen image features (the tower's pooled output) of one split, scored on
    another; the features come from `pipe.image_features` (CLIP) or `pipe.features` (classifiers)."""
    featurize = getattr(pipe, "image_features", None) or pipe.features
    tr, ev = images.split(train_split), images.split(eval_split)
    x_tr, i_tr = _pixels(pipe, tr, max_images)
    x_ev, i_ev = _pixels(pipe, ev, 0)
    return fit_probe(featurize(x_tr).numpy(), tr.labels[i_tr], featurize(x_ev).numpy(), ev.labels[i_ev])


def caption_scores(pipe: Any, split: ImageSplit, max_images: int = 0, max_new_tokens: int = 24) -> dict[str, Any]:
    """Greedy captions of the split's images scored against all their captions: BLEU-4 and CIDEr-D."""
    keep = [i for i, r in enumerate(split.records) if r["captions"]]
    keep = keep[:max_images] if max_images else keep
    pixels, _ = _pixels_of(pipe, split, keep)
    hyps = pipe.caption(pixels, max_new_tokens=max_new_tokens)
    refs = [split.records[i]["captions"] for i in keep]
    exact = sum(normalize_answer(h) in {normalize_answer(r) for r in rs} for h, rs in zip(hyps, refs)) / len(keep)
    return {"bleu4": bleu4(hyps, refs), "cider": cider_d(hyps, refs), "exact_match": exact, "images": len(keep),
            "examples": [{"caption": h, "references": rs} for h, rs in list(zip(hyps, refs))[:5]]}


def _pixels_of(pipe: Any, split: ImageSplit, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
    from plinth.data.images import resize_square

    arrays = [resize_square(np.asarray(split.pixels[i]), pipe.preprocess.image_size) for i in indices]
    return pipe.preprocess.normalise(torch.from_numpy(np.stack(arrays))), indices


def vqa_scores(pipe: Any, split: ImageSplit, max_images: int = 0, max_new_tokens: int = 8) -> dict[str, Any]:
    """Exact-match accuracy of answers to every question-answer pair of the split's images, overall and per
    question, beside the accuracy of always giving each question's most common training-style answer (a prior)."""
    pairs = [(i, q, a) for i, r in enumerate(split.records) for q, a in r["qa"]]
    images = sorted({i for i, _, _ in pairs})
    if max_images:
        allowed = set(images[:max_images])
        pairs = [p for p in pairs if p[0] in allowed]
    if not pairs:
        return {"accuracy": float("nan"), "questions": 0}
    pixels, _ = _pixels_of(pipe, split, [i for i, _, _ in pairs])
    preds = pipe.answer(pixels, [q for _, q, _ in pairs], max_new_tokens=max_new_tokens)
    by_q: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (_, q, a), p in zip(pairs, preds):
        by_q[q].append((p, a))
    prior = {q: Counter(normalize_answer(a) for _, a in rows).most_common(1)[0][0] for q, rows in by_q.items()}
    baseline = sum(normalize_answer(a) == prior[q] for _, q, a in pairs) / len(pairs)
    return {"accuracy": answer_accuracy(preds, [a for _, _, a in pairs]), "questions": len(pairs),
            "majority_answer_baseline": baseline,
            "by_question": {q: answer_accuracy([p for p, _ in rows], [a for _, a in rows]) for q, rows in
                            by_q.items()},
            "examples": [{"question": q, "answer": a, "predicted": p} for (_, q, a), p in list(zip(pairs, preds))[:6]]}
