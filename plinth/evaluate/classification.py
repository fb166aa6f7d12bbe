"""Scores of a text classifier: accuracy, macro-F1, per-class precision/recall, the confusion matrix and its plot; and
the prompting baselines a classifier is measured against (zero- and few-shot: each label's verbalization scored by
log-likelihood with `scoring.loglikelihoods`).

Macro-F1 is the unweighted mean over classes of F1 = 2PR / (P + R) (a class never predicted nor present scores 0),
as scikit-learn's `f1_score(average="macro", zero_division=0)` computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plinth.common import PlinthError


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0 where undefined)."""
    rows = []
    for c in range(cm.shape[0]):
        tp, predicted, actual = cm[c, c], cm[:, c].sum(), cm[c, :].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        rows.append({"precision": float(p), "recall": float(r), "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
                     "support": int(actual)})
    return rows


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per-class scores and the confusion matrix (as lists, for JSON)."""
    if len(y_true) == 0:
        raise PlinthError("no held-out examples to score")
    cm = confusion_matrix(y_true, y_pred, len(classes))
    pc = per_class(cm)
    return {"accuracy": float(np.trace(cm) / cm.sum()), "macro_f1": float(np.mean([r["f1"] for r in pc])),
            "n": int(cm.sum()), "per_class": {c: r for c, r in zip(classes, pc)}, "confusion": cm.tolist()}


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A confusion-matrix PNG (counts, rows = true class), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plinth.runlog import save_figure

    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * n, 1.8 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title or f"confusion matrix (n={cm.sum()})")
    return save_figure(fig, path, dpi=120)


def evaluate_classifier(pipe, rows: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Scores of a `TextClassifierPipeline` on (text, class index) rows."""
    preds = pipe.logits([t for t, _ in rows]).argmax(-1).tolist()
    return classification_scores([y for _, y in rows], preds, pipe.classes)


# ----------------------------------------------------------------------------------------------------------------------
# Prompting baselines (decoder language models)


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def build_prompt(text: str, classes: Sequence[str], shots: Sequence[tuple[str, int]] = (), chars: int = 400) -> str:
    """The prompt whose continuation is a label: the task, the allowed labels, `shots` solved examples, the text."""
    head = f"Classify each passage. The label is one of: {', '.join(classes)}.\n\n"
    solved = "".join(f"Passage: {_clip(t, chars)}\nLabel: {classes[y]}\n\n" for t, y in shots)
    return f"{head}{solved}Passage: {_clip(text, chars)}\nLabel:"


def pick_shots(train: Sequence[tuple[str, int]], n_classes: int, per_class: int, seed: int) -> list[tuple[str, int]]:
    """`per_class` training examples of every class, interleaved by class (so no label is always last), seeded."""
    rng = np.random.default_rng(seed)
    by_class = [[r for r in train if r[1] == c] for c in range(n_classes)]
    chosen = [[rows[i] for i in rng.permutation(len(rows))[:per_class]] for rows in by_class]
    return [chosen[c][k] for k in range(per_class) for c in range(n_classes) if k < len(chosen[c])]


def prompt_classify(lm, rows: Sequence[tuple[str, int]], classes: Sequence[str],
                    shots: Sequence[tuple[str, int]] = (), chars: int = 400, batch_size: int = 8) -> dict[str, Any]:
    """Zero-shot (no `shots`) or few-shot classification by a language model: the label whose verbalization
    (" " + name) has the highest log-likelihood after the prompt, normalised per token (so long names are not
    penalised for their length); scores as `classification_scores`."""
    from plinth.evaluate.scoring import PairEncoder, loglikelihoods

    encoder = PairEncoder(lm)
    lengths = [len(encoder.encode("Label:", f" {c}").ids) - encoder.encode("Label:", f" {c}").start for c in classes]
    pairs = [(build_prompt(t, classes, shots, chars), f" {c}") for t, _ in rows for c in classes]
    scores = loglikelihoods(lm, pairs, batch_size=batch_size)
    n = len(classes)
    preds = [int(np.argmax([scores[i * n + c][0] / max(lengths[c], 1) for c in range(n)])) for i in range(len(rows))]
    return classification_scores([y for _, y in rows], preds, classes)
