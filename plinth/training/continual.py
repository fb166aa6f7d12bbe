"""Continued pretraining: the next-token objective of `training.lm` on a new domain, with a re-warmed learning rate,
an optional replay share of the original data, and forgetting measured on both domains before and after.

The learning-rate schedule is a fresh warmup + cosine (`optim.lr_at` from step 0 of this run): re-warming to a new
peak, then decaying again. Gupta et al. 2023 ("Continual Pre-Training of Large Language Models: How to (re)warm your
model?") find re-warming necessary to adapt and the peak the main knob between adaptation and forgetting (the warmup
length matters little); Ibrahim et al. 2024 ("Simple and Scalable Strategies to Continually Pre-train Large Language
Models") show re-warm + re-decay with a few percent to a quarter of replayed original data matching retraining on
both sets. Replay here is a share of whole batches, in a fixed interleaving: batch i (0-based) comes from the
original data when floor((i + 1) * f) > floor(i * f), so any run of 1/f batches holds exactly one replay batch per
f-share and the proportion is exact, not sampled.

With `--lora.rank R` only LoRA adapters train (through peft, as in `finetune sft`); the base weights stay as they were
and the adapter is also written alone to `OUT/adapter` (peft's format), to load with `plinth.load(base, adapter=...)`
or serve per request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from plinth.adapt.lora import ADAPTER_CONFIG, apply_lora, base_fingerprint, save_adapter, write_adapter_config
from plinth.artifacts import RUN_STATE, TOKENIZER, read_json, resolve_stored_path
from plinth.common import (
    PlinthError,
    atomic_write_json,
    atomic_write_text,
    pick_device,
    resolve_precision,
    seed_everything,
    warn,
)
from plinth.config import ContinueConfig, LoraOptions, PrepareConfig, TokenizeConfig, to_dict, validate
from plinth.data.corpus import BUILTIN
from plinth.data.prepare import prepare
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches, write_shards
from plinth.evaluate.lm import score_batches
from plinth.pipelines import load
from plinth.pipelines.text import LanguageModel
from plinth.runlog import read_metrics, save_figure
from plinth.training.lm import lm_loss
from plinth.training.run import Objective, RunSpec, train

MAX_DEFAULT_SEQ_LEN = 1024  # an imported model's context (8192 for SmolLM2) is far more than continued pretraining
# on a CPU needs; --seq_len raises it
BEFORE = "before.json"
REPORT = "report.md"
PLOT = "forgetting.png"


def is_replay(i: int, fraction: float) -> bool:
    """Whether batch `i` (0-based) comes from the original data: exactly `fraction` of every run of batches, spread
    evenly (floor((i + 1) f) > floor(i f))."""
    return math.floor((i + 1) * fraction) > math.floor(i * fraction)


class ReplayBatches:
    """New-domain windows, with a `fraction` of the batches from the original data (`is_replay` decides which).

    Each source is its own seeded `WindowSampler`, so the position is (batch index, each sampler's position) and a
    resumed run draws exactly the batches an uninterrupted one would.
    """

    def __init__(self, new: WindowSampler, original: WindowSampler | None, fraction: float) -> None:
        if fraction > 0 and original is None:
            raise PlinthError("replay needs the original data (--replay_data)")
        self.new, self.original, self.fraction = new, original, fraction
        self.index = 0
        self.last_was_replay = False

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_was_replay = self.fraction > 0 and is_replay(self.index, self.fraction)
        self.index += 1
        return (self.original if self.last_was_replay else self.new).next_batch()

    def state_dict(self) -> dict:
        return {"index": self.index, "fraction": self.fraction, "new": self.new.state_dict(),
                "original": self.original.state_dict() if self.original is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if abs(float(state["fraction"]) - self.fraction) > 1e-12:
            raise PlinthError(f"cannot resume: the run was started with --replay {state['fraction']}, now "
                              f"{self.fraction}; use the same value or a new --run.out_dir")
        self.index = int(state["index"])
        self.new.load_state_dict(state["new"])
        if self.original is not None and state.get("original"):
            self.original.load_state_dict(state["original"])


# ----------------------------------------------------------------------------------------------------------------------
# Domains: whatever the user names, turned into token shards of the model's tokenizer


def _kind(spec: str) -> str:
    """What a domain argument is: builtin, shards, prepared or raw (files/folders/globs); PlinthError when nothing."""
    name = spec.removeprefix("builtin:")
    if spec.startswith("builtin:") or (name in BUILTIN and not Path(spec).exists()):
        if name not in BUILTIN:
            raise PlinthError(f"{spec}: no such built-in corpus; available: {', '.join(BUILTIN)}")
        return "builtin"
    path = Path(spec).expanduser()
    if (path / "train" / "manifest.json").is_file():
        return "shards"
    if (path / "train.jsonl").is_file():
        return "prepared"
    if path.exists() or any(c in spec for c in "*?["):
        return "raw"
    raise PlinthError(f"{spec}: no such built-in corpus ({', '.join(BUILTIN)}), file or folder")


def domain_name(spec: str) -> str:
    """A short name for a domain in reports: the corpus name or the file/folder name."""
    return spec.removeprefix("builtin:") if _kind(spec) == "builtin" else Path(spec.rstrip("/")).name or spec


def domain_shards(spec: str, tokenizer_path: Path, work: Path, cfg: ContinueConfig) -> Path:
    """Token shards (train/ and val/) of domain `spec` under the tokenizer at `tokenizer_path`; text is prepared and
    tokenized into `work` once (reused on a rerun). PlinthError when given shards were written by another tokenizer."""
    kind = _kind(spec)
    if kind == "shards":
        return Path(spec).expanduser().resolve()
    shards = work / "shards"
    if (shards / "train" / "manifest.json").is_file():
        return shards
    prepared = Path(spec).expanduser() if kind == "prepared" else work / "prepared"
    if kind != "prepared" and not (prepared / "report.json").is_file():
        inputs = [f"builtin:{spec.removeprefix('builtin:')}" if kind == "builtin" else spec]
        prepare(PrepareConfig(inputs=inputs, out=str(prepared), field=cfg.field, val_fraction=cfg.val_fraction,
                              max_docs=cfg.max_docs, progress=cfg.run.progress))
    write_shards(TokenizeConfig(input=str(prepared), tokenizer=str(tokenizer_path), out=str(shards),
                                progress=cfg.run.progress))
    return shards


def _open_shards(root: Path, tokenizer_sha: str, seq_len: int, what: str) -> tuple[TokenShards, TokenShards | None]:
    train_split = TokenShards(root / "train")
    val = TokenShards(root / "val") if (root / "val" / "manifest.json").is_file() else None
    for s in filter(None, (train_split, val)):
        if s.tokenizer_sha256 and s.tokenizer_sha256 != tokenizer_sha:
            raise PlinthError(f"{s.folder}: the {what} shards were written with another tokenizer than the model's; "
                              "pass the text (or a prepared folder) instead, and it is tokenized with the model's")
    if train_split.total_tokens < seq_len + 1:
        raise PlinthError(f"{train_split.folder}: the {what} data has {train_split.total_tokens} tokens, fewer than "
                          f"one window ({seq_len} + 1); add data or lower --seq_len")
    if val is None or val.total_tokens < 2:
        warn(f"{root}: the {what} data has no validation split: its loss is not measured")
        val = None
    return train_split, val


def original_data(model: str) -> Path | None:
    """The training shards named by the run that produced `model` (a Plinth run or checkpoint), when they still
    exist; None for model folders, imported models and runs without token shards."""
    from plinth.artifacts import resolve_checkpoint
    from plinth.pipelines.convert import foreign_source

    if foreign_source(model) is not None:
        return None
    ckpt = resolve_checkpoint(model)
    if not (ckpt / RUN_STATE).is_file():
        return None
    entry = read_json(ckpt / RUN_STATE, "run state").get("paths", {}).get("shards")
    if entry is None:
        return None
    path = resolve_stored_path(entry, ckpt.parent.parent)
    if not (path / "train" / "manifest.json").is_file():
        warn(f"{model}: its training data {path} no longer exists: no replay or forgetting measure on it unless "
             "--replay_data names it")
        return None
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The run


def _write_assets(out: Path, lm: LanguageModel, lora: LoraOptions | None = None) -> dict[str, Path]:
    """The tokenizer and text settings (and with LoRA the adapter's settings), written once and copied into every
    checkpoint (each is a model folder)."""
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    if not (assets / TOKENIZER).is_file():
        lm.tokenizer.save(assets / TOKENIZER)
    names = [TOKENIZER]
    if lm.path is None or (Path(lm.path) / "generation.json").is_file() or lm.settings.chat_template:
        lm.settings.write(assets)
        names += [p.name for p in assets.iterdir() if p.name not in (TOKENIZER, ADAPTER_CONFIG)
                  and not p.name.startswith(".")]
    if lora is not None:
        write_adapter_config(assets, lora, str(lm.path))
        names.append(ADAPTER_CONFIG)
    return {name: assets / name for name in names}


def finetune_continue(cfg: ContinueConfig) -> dict[str, Any]:
    """Continue pretraining `cfg.model` on `cfg.data`; returns the run's summary with `forgetting`: held-out loss and
    bits per byte on the new and the original domain, before and after (also summary.json, report.md, a plot).

    Raises PlinthError (before anything is written) for bad options, a missing model or domain, and `--replay` > 0
    without original data.
    """
    validate(cfg, "finetune continue")
    if not cfg.model:
        raise PlinthError("finetune continue: give the model to continue (a run, model folder, HF folder or "
                          "builtin:NAME)")
    if not cfg.data:
        raise PlinthError("finetune continue: give the new domain with --data (a built-in corpus, text file or "
                          "folder, or token shards)")
    _kind(cfg.data)
    if cfg.replay_data:
        _kind(cfg.replay_data)
    original = None if cfg.replay_data else original_data(cfg.model)
    if cfg.replay > 0 and not cfg.replay_data and original is None:
        raise PlinthError(f"--replay {cfg.replay:g} needs the original data: {cfg.model} names none that still "
                          "exists; pass --replay_data (a built-in corpus, text or shards)")
    lm = load(cfg.model, device="cpu")
    seq_len = cfg.seq_len or min(lm.config.seq_len, MAX_DEFAULT_SEQ_LEN)
    if seq_len > lm.config.seq_len:
        raise PlinthError(f"--seq_len {seq_len} is longer than the model's context ({lm.config.seq_len})")
    out = Path(cfg.run.out_dir).expanduser().resolve()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out)))
    device = pick_device(cfg.system.device)
    precision = resolve_precision(cfg.system.precision, device)

    fresh = not out.exists()
    try:  # the data is prepared inside the run folder: a failure there leaves no folder behind that was not there
        out.mkdir(parents=True, exist_ok=True)
        assets = _write_assets(out, lm, cfg.lora if cfg.lora.rank else None)
        tok_path = assets[TOKENIZER]
        new_root = domain_shards(cfg.data, tok_path, out / "data" / "new", cfg)
        new_train, new_val = _open_shards(new_root, lm.tokenizer.sha256, seq_len, "new-domain")
        orig_root = domain_shards(cfg.replay_data, tok_path, out / "data" / "original", cfg) if cfg.replay_data \
            else original
        orig_train, orig_val = (_open_shards(orig_root, lm.tokenizer.sha256, seq_len, "original")
                                if orig_root is not None else (None, None))
    except PlinthError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if orig_root is None:
        warn(f"{cfg.model}: no original data (a model folder or an imported model): forgetting is not measured; "
             "pass --replay_data to name the original domain")

    seed_everything(cfg.system.seed)
    model = lm.model.float().to(device).train()
    fingerprint = base_fingerprint(model) if cfg.lora.rank else ""
    if cfg.lora.rank:  # only the adapters train: the base is untouched, the adapter is saved alone at the end
        apply_lora(model, cfg.lora)
    bs = cfg.optim.batch_size
    batches = ReplayBatches(WindowSampler(new_train, seq_len, bs, cfg.system.seed),
                            WindowSampler(orig_train, seq_len, bs, cfg.system.seed + 1) if orig_train else None,
                            cfg.replay)
    token_bytes = lm.tokenizer.token_bytes()
    domains = {"new": new_val, "original": orig_val}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        scores: dict[str, float] = {}
        for name, val in domains.items():
            if val is None:
                continue
            s = score_batches(m, iter_sequential_batches(val, seq_len, bs, cfg.run.eval_batches), token_bytes,
                              precision)
            prefix = "" if name == "new" else "original_"
            scores.update({f"{prefix}{k}": float(s[k]) for k in ("loss", "bpb", "perplexity") if k in s})
        return scores

    objective = Objective("continue", lm_loss, batches, evaluate if new_val or orig_val else None,
                          flops_per_unit=model.flops_per_token(seq_len) if hasattr(model, "flops_per_token") else 0.0)
    paths = {"shards": new_root, "tokenizer": tok_path, **({"original": orig_root} if orig_root else {})}
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets, paths=paths)
    print(f"finetune continue: {domain_name(cfg.data)} ({new_train.total_tokens:,} training tokens); original: "
          + (f"{orig_root} ({orig_train.total_tokens:,} tokens), replay {cfg.replay:.0%} of batches" if orig_root
             else "none") + f"; peak lr {cfg.optim.lr:g} re-warmed over {cfg.optim.warmup_steps} steps"
          + (f"; LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}" if cfg.lora.rank else ""), flush=True)
    before = _before(out, evaluate, model)
    summary = train(model, objective, spec)
    after = {k.removeprefix("val_"): v for k, v in summary.items() if k.startswith("val_")}
    summary["forgetting"] = forgetting_table(before, after)
    summary.update(domain=domain_name(cfg.data), original_domain=str(orig_root) if orig_root else None,
                   replay=cfg.replay, seq_len=seq_len)
    if cfg.lora.rank:
        summary.update(save_adapter(model, out / "adapter", cfg.lora, base=str(cfg.model), fingerprint=fingerprint,
                                    steps=summary["steps"]))
    atomic_write_json(out / "summary.json", summary)
    plot = plot_forgetting(out, domain_name(cfg.data))
    _write_report(out, cfg, summary, plot)
    return summary


def _before(out: Path, evaluate, model: torch.nn.Module) -> dict[str, float]:
    """Held-out scores before any training, stored in the run folder so a resumed run reports the same ones."""
    path = out / BEFORE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    scores = evaluate(model)
    atomic_write_json(path, scores)
    return scores


def forgetting_table(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """{domain: {before_loss, after_loss, loss_change, before_bpb, after_bpb, bpb_change}} for the new and the
    original domain (those measured). A positive change on the original domain is forgetting."""
    table: dict[str, dict[str, float]] = {}
    for domain, prefix in (("new", ""), ("original", "original_")):
        row = {}
        for metric in ("loss", "bpb"):
            b, a = before.get(prefix + metric), after.get(prefix + metric)
            if b is not None and a is not None:
                row.update({f"before_{metric}": b, f"after_{metric}": a, f"{metric}_change": a - b})
        if row:
            table[domain] = row
    return table


def plot_forgetting(out: Path, domain: str) -> Path | None:
    """forgetting.png: held-out loss on the new and the original domain over the run (step 0 = before training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = json.loads((out / BEFORE).read_text(encoding="utf-8"))
    rows = [r for r in read_metrics(out) if "val_loss" in r or "val_original_loss" in r]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in (("loss", f"new domain ({domain})"), ("original_loss", "original domain")):
        points = ([(0, before[key])] if key in before else []) + [(r["step"], r[f"val_{key}"]) for r in rows
                                                                  if f"val_{key}" in r]
        if points:
            ax.plot(*zip(*points), "o-", label=label, lw=1.5)
    ax.set_xlabel("step of continued pretraining (0 = before)")
    ax.set_ylabel("held-out cross-entropy (nats/token)")
    ax.set_title("continued pretraining: adaptation and forgetting")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out / PLOT)


def _write_report(out: Path, cfg: ContinueConfig, summary: dict[str, Any], plot: Path | None) -> Path:
    lines = [f"# Continued pretraining: {cfg.model} on {domain_name(cfg.data)}", "",
             f"Status: {summary['status']}; {summary['steps']} steps, {summary['tokens']:,} tokens, peak learning rate "
             f"{cfg.optim.lr:g} re-warmed over {cfg.optim.warmup_steps} steps then cosine to "
             f"{cfg.optim.min_lr_ratio:g} of it; replay {cfg.replay:.0%} of batches from "
             f"{summary['original_domain'] or 'no original data'}.", "",
             "Held-out loss (nats/token) and bits per byte, before and after; a rise on the original domain is "
             "forgetting.", "", "| domain | loss before | loss after | change | bpb before | bpb after | change |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for domain, row in summary["forgetting"].items():
        cells = [f"{row.get(k, float('nan')):.4f}" for k in ("before_loss", "after_loss", "loss_change", "before_bpb",
                                                             "after_bpb", "bpb_change")]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    if plot is not None:
        lines += ["", f"![held-out loss on both domains]({plot.name})"]
    atomic_write_text(out / REPORT, "\n".join(lines) + "\n")
    return out / REPORT
