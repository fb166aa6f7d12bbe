"""`plinth adapt compare`: every adaptation path on one labelled task and one model, measured alike.

Methods: `zero_shot` and `few_shot` prompting (decoders: each label's verbalization scored by log-likelihood,
`evaluate.classification.prompt_classify`), `head` (frozen backbone + trained head), `lora` (LoRA adapters + head)
and `full` (every weight). All score the same held-out rows, written once to `OUT/data/val.jsonl` (balanced per
class); the trained methods train on the same `OUT/data/train.jsonl` for the same steps and batch.

Each method runs in its own child process, so its peak memory is its own: the peak resident set size the kernel
reports for that child (`os.wait4`'s rusage; the interpreter and torch's import included, the same for every method),
and on a GPU `torch.cuda.max_memory_allocated`. Wall time is the method's own (loading the model, training,
scoring), measured in the child. A finished method's result (`OUT/<method>/result.json`) is reused by a rerun, so an
interrupted comparison continues. Output: compare.json, compare.md (a table) and compare.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from plinth.common import PlinthError, atomic_write_json, atomic_write_text, human_count
from plinth.config import AdaptCompareConfig, ClassifyTextConfig, LoraOptions, OptimConfig, RunConfig, to_dict, validate
from plinth.data.labelled import load_labelled

RESULT = "result.json"
LABELS = {"zero_shot": "zero-shot prompt", "few_shot": "few-shot prompt", "head": "frozen backbone + head",
          "lora": "LoRA + head", "full": "full fine-tuning"}


def _subset(rows: list[tuple[str, int]], n_classes: int, limit: int, seed: int) -> list[tuple[str, int]]:
    """At most `limit` rows, the same number from each class (seeded); all when `limit` is 0."""
    if not limit or len(rows) <= limit:
        return rows
    rng = np.random.default_rng([seed, 2])
    per = max(1, limit // n_classes)
    keep = []
    for c in range(n_classes):
        idx = [i for i, (_, y) in enumerate(rows) if y == c]
        keep += [idx[j] for j in rng.permutation(len(idx))[:per]]
    return [rows[i] for i in sorted(keep)]


def _write_rows(path: Path, rows: list[tuple[str, int]], classes: list[str]) -> None:
    atomic_write_text(path, "".join(json.dumps({"text": t, "label": classes[y]}) + "\n" for t, y in rows))


def _is_decoder(model: str) -> bool:
    from plinth.training.textclf import _bert_folder

    return _bert_folder(model) is None


def compare(cfg: AdaptCompareConfig) -> dict[str, Any]:
    """Run the chosen methods (each in a child process) and write the table and plot; returns the results."""
    validate(cfg, "adapt compare")
    if not cfg.model:
        raise PlinthError("adapt compare: give the model (a run, model folder, HF folder, .gguf, builtin:NAME)")
    data = load_labelled(cfg.data, cfg.text_field, cfg.label_field, val_fraction=cfg.val_fraction,
                         seed=cfg.system.seed, max_rows=cfg.max_rows)
    if not data.val:
        raise PlinthError(f"{cfg.data}: no held-out rows (raise --val_fraction)")
    val = _subset(data.val, len(data.classes), cfg.max_val, cfg.system.seed)
    decoder = _is_decoder(cfg.model)
    if "lora" in cfg.methods:
        from plinth.adapt.lora import _peft

        _peft()  # a missing peft is said before anything runs
    out = Path(cfg.out).expanduser().resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    _write_rows(out / "data" / "train.jsonl", data.train, data.classes)
    _write_rows(out / "data" / "val.jsonl", val, data.classes)
    print(f"adapt compare: {cfg.model} on {cfg.data}: {len(data.train)} training / {len(val)} held-out texts, "
          f"classes {', '.join(data.classes)}; methods {', '.join(cfg.methods)}", flush=True)
    results = []
    for method in cfg.methods:
        if method in ("zero_shot", "few_shot") and not decoder:
            results.append({"method": method, "skipped": "prompting needs a decoder language model"})
            continue
        results.append(_run_child(method, cfg, out))
        r = results[-1]
        print(f"  {method}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}, "
              f"{human_count(r['trainable_parameters'])} trainable, {r['wall_s']:.0f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    summary = {"model": cfg.model, "data": cfg.data, "classes": data.classes, "train_examples": len(data.train),
               "val_examples": len(val), "chance": 1 / len(data.classes), "config": to_dict(cfg), "results": results}
    atomic_write_json(out / "compare.json", summary)
    atomic_write_text(out / "compare.md", _table(summary))
    _plot(summary, out / "compare.png")
    summary["table"] = str(out / "compare.md")
    return summary


def _run_child(method: str, cfg: AdaptCompareConfig, out: Path) -> dict[str, Any]:
    """One method in a child process; its result.json plus the child's peak RSS (reused when already there)."""
    folder = out / method
    done = folder / RESULT
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.json"
    atomic_write_json(spec, {"method": method, "config": to_dict(cfg), "out": str(out)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "plinth.training.compare", str(spec)], env=env)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not (folder / "child.json").is_file():
        raise PlinthError(f"adapt compare: method {method} failed (exit {proc.returncode}); see its output above")
    result = json.loads((folder / "child.json").read_text(encoding="utf-8"))
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    atomic_write_json(done, result)
    return result


def _train_config(method: str, cfg: AdaptCompareConfig, out: Path) -> ClassifyTextConfig:
    lr = {"head": cfg.head_lr, "lora": cfg.lora_lr, "full": cfg.full_lr}[method]
    return ClassifyTextConfig(
        model=cfg.model, data=str(out / "data" / "train.jsonl"), val_data=str(out / "data" / "val.jsonl"),
        max_len=cfg.max_len, freeze="all-but-head" if method == "head" else "none",
        lora=LoraOptions(rank=cfg.lora_rank if method == "lora" else 0, alpha=2.0 * cfg.lora_rank, dropout=0.0),
        optim=OptimConfig(lr=lr, warmup_steps=max(1, cfg.steps // 10), weight_decay=0.0, batch_size=cfg.batch_size,
                          min_lr_ratio=0.1),
        run=RunConfig(out_dir=str(out / method / "run"), max_steps=cfg.steps, eval_every=0, ckpt_every=0,
                      progress=False),
        system=cfg.system)


def _child(spec_path: str) -> None:
    """Run one method (in its own process) and write its child.json."""
    import torch

    from plinth.common import count_parameters, pick_device
    from plinth.config import SystemConfig

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fields = dict(spec["config"])
    cfg = AdaptCompareConfig(**{**fields, "system": SystemConfig(**fields["system"])})
    method, out = spec["method"], Path(spec["out"])
    device = pick_device(cfg.system.device)
    start = time.perf_counter()
    if method in ("zero_shot", "few_shot"):
        from plinth.evaluate.classification import pick_shots, prompt_classify
        from plinth.pipelines import load

        train = load_labelled(str(out / "data" / "train.jsonl"), val_fraction=0.0)
        val = load_labelled(str(out / "data" / "val.jsonl"), val_fraction=0.0)
        index = {c: i for i, c in enumerate(train.classes)}
        val_rows = [(t, index[val.classes[y]]) for t, y in val.train]
        lm = load(cfg.model, device=str(device))
        shots = pick_shots(train.train, len(train.classes), cfg.shots, cfg.system.seed) if method == "few_shot" else []
        scores = prompt_classify(lm, val_rows, train.classes, shots, cfg.prompt_chars)
        result = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "trainable_parameters": 0,
                  "total_parameters": count_parameters(lm.model), "steps": 0, "shots": len(shots)}
    else:
        from plinth.training.textclf import finetune_classify

        s = finetune_classify(_train_config(method, cfg, out))
        result = {"accuracy": s["val_accuracy"], "macro_f1": s["val_macro_f1"],
                  "trainable_parameters": s["trainable_parameters"], "total_parameters": s["total_parameters"],
                  "steps": s["steps"], "train_s": s.get("train_s")}
    result.update({"method": method, "wall_s": time.perf_counter() - start, "device": str(device)})
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    atomic_write_json(out / method / "child.json", result)


def _table(summary: dict[str, Any]) -> str:
    lines = [f"Task: `{summary['data']}` ({', '.join(summary['classes'])}; {summary['train_examples']} training, "
             f"{summary['val_examples']} held-out balanced texts, chance {summary['chance']:.3f}); model "
             f"`{summary['model']}`.", "",
             "| method | accuracy | macro-F1 | trainable params | wall s | peak RSS MB | peak GPU MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["results"]:
        if "skipped" in r:
            lines.append(f"| {LABELS[r['method']]} | n/a ({r['skipped']}) | | | | | |")
            continue
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        lines.append(f"| {LABELS[r['method']]} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['trainable_parameters']:,} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {gpu} |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plinth.runlog import save_figure

    rows = [r for r in summary["results"] if "skipped" not in r]
    if not rows:
        return
    names = [LABELS[r["method"]].replace(" + ", "\n+ ").replace(" prompt", "\nprompt")
             .replace(" backbone", "\nbackbone") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("accuracy", "held-out accuracy"), ("wall_s", "wall time (s)"), ("peak_rss_mb", "peak RSS (MB)"))
    for ax, (key, title) in zip(axes, panels):
        ax.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), names, fontsize=8)
        ax.set_title(title)
    axes[0].axhline(summary["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    for i, r in enumerate(rows):
        axes[0].text(i, 0.02, f"{human_count(r['trainable_parameters'])}\ntrainable", ha="center", fontsize=7,
                     color="white")
    fig.suptitle(f"{summary['model']} on {summary['data']}")
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":  # the child process of one method
    try:
        _child(sys.argv[1])
    except PlinthError as e:
        print(f"plinth: error: {e}", file=sys.stderr)
        sys.exit(2)
