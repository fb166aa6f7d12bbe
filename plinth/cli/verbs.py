"""What the CLI adds around the library's verb functions: printing results, streaming text, tables, exit codes.

Each function takes the verb's config dataclass (as parsed by `plinth.cli.args`) and returns an exit code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from plinth.config import (
    EvaluateConfig,
    GenerateConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    ScalePredictConfig,
    ScaleSweepConfig,
    TokenizeConfig,
    TokenizerConfig,
)


def print_json(obj: Any) -> None:
    """Pretty JSON on stdout (results; progress and warnings go to stderr)."""
    print(json.dumps(obj, indent=2, default=str))


def _exit_code(summary: dict) -> int:
    """0, or 128 + the signal that stopped a run (the shell's convention for a process ended by a signal)."""
    return 0 if summary.get("signal") is None else 128 + summary["signal"]


def quickstart(cfg: QuickstartConfig) -> int:
    """Run the whole spine on a built-in corpus: prepare, tokenizer, pretrain, evaluate, sample, report."""
    from plinth.training.quickstart import quickstart as run

    result = run(cfg)
    print(f"\nreport: {result['report']}")
    return _exit_code(result["pretrain"])


def pretrain(cfg: PretrainConfig) -> int:
    """Pretrain a decoder-only transformer on token shards (resumes from the run folder's latest checkpoint)."""
    from plinth.training.distributed import launched_by_plinth
    from plinth.training.lm import pretrain as run

    summary = run(cfg)
    if launched_by_plinth():  # with --nproc N the launching process prints the summary and sets the exit code
        return 0
    print_json(summary)
    return _exit_code(summary)


def evaluate(cfg: EvaluateConfig) -> int:
    """Loss, perplexity and bits per byte of a trained model on any text (default: its validation split)."""
    from plinth.evaluate import evaluate as run

    print_json(run(cfg.model, cfg.data or None, field=cfg.field, batch_size=cfg.batch_size,
                   max_tokens=cfg.max_tokens, device=cfg.device, compressors=cfg.compressors))
    return 0


def generate(cfg: GenerateConfig) -> int:
    """Continue one or more prompts with a trained model (streamed for a single prompt)."""
    from plinth.pipelines import load

    lm = load(cfg.model, device=cfg.device)
    if cfg.stream and len(cfg.prompts) == 1:
        steps = lm.stream(cfg.prompts, cfg.sampling)  # options are checked here, before the prompt is echoed
        sys.stdout.write(cfg.prompts[0])
        for pieces in steps:
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    for prompt, text in zip(cfg.prompts, lm.generate(cfg.prompts, cfg.sampling)):
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


def data_prepare(cfg: PrepareConfig) -> int:
    """Read raw files (text, JSONL, Parquet; gz/zst), clean, dedup, split train/val, write JSONL and a report."""
    from plinth.common import PlinthError
    from plinth.data.prepare import prepare

    if not cfg.inputs:
        raise PlinthError("data prepare: give at least one input path, glob or builtin:NAME")
    print_json(prepare(cfg))
    return 0


def data_builtin(_: Any) -> int:
    """List the corpora that install with the package (no download)."""
    from rich.console import Console
    from rich.table import Table

    from plinth.data.corpus import list_builtin

    table = Table("name", "documents", "characters", "description", "source / license")
    for row in list_builtin():
        table.add_row(row["name"], f"{row['documents']:,}", f"{row['characters']:,}", row["description"],
                      f"{row['source']} ({row['license']})")
    Console().print(table)
    return 0


def data_tokenize(cfg: TokenizeConfig) -> int:
    """Encode prepared documents into packed, memory-mapped token shards with a sha256 manifest."""
    from plinth.data.shards import write_shards

    print_json(write_shards(cfg))
    return 0


def tokenizer_train(cfg: TokenizerConfig) -> int:
    """Train a byte-level BPE (or character) tokenizer and save it as tokenizer.json."""
    from plinth.data.tokenizer import train_tokenizer

    tok = train_tokenizer(cfg)
    print(f"wrote {cfg.out}: {cfg.kind} tokenizer, vocabulary {tok.vocab_size}")
    return 0


def models_ls(_: Any) -> int:
    """List the model families and size presets with parameter counts and training FLOPs per token."""
    from rich.console import Console
    from rich.table import Table

    from plinth.common import human_count
    from plinth.models import preset_table

    table = Table("family", "preset", "layers", "heads", "kv heads", "d_model", "context", "parameters",
                  "FLOPs/token")
    for r in preset_table():
        table.add_row(r["family"], r["name"], str(r["n_layer"]), str(r["n_head"]), str(r["n_kv_head"]),
                      str(r["d_model"]), str(r["seq_len"]), human_count(r["params"]), human_count(r["flops_per_token"]))
    Console().print(table)
    return 0


def scale_sweep(cfg: ScaleSweepConfig) -> int:
    """Train a grid of sizes x token budgets, fit L(N) and L(N, D), predict, probe; print the fitted exponents."""
    from plinth.training.scale import sweep

    result = sweep(cfg)
    fit_n, fit_nd, p = result["fit_L_N"], result["fit_L_ND"], result["prediction"]
    def ci(fit: dict, key: str) -> str:
        lo, hi = fit["ci95"].get(key, (float("nan"), float("nan")))
        return f"{fit[key]:.3f} (95% CI {lo:.3f} - {hi:.3f})"

    print(f"L(N):    alpha = {ci(fit_n, 'alpha')}")
    if fit_nd:
        print(f"L(N, D): alpha = {ci(fit_nd, 'alpha')}, beta = {ci(fit_nd, 'beta')}")
    print(f"predicted loss of {p['size']} on {p['tokens']} tokens: {p['loss']:.4f} "
          f"(95% CI {p['ci95'][0]:.4f} - {p['ci95'][1]:.4f})")
    for name, e in result["emergence"].items():
        print(f"{name}: {e['reading']}")
    print(f"report: {cfg.out}/report.md")
    return 0


def scale_predict(cfg: ScalePredictConfig) -> int:
    """Compare a sweep's prediction with a run trained afterwards; print the error."""
    from plinth.training.scale import check_prediction

    check = check_prediction(cfg)
    print(f"{check['size']} (N = {check['N']}) on {check['tokens']} tokens: predicted {check['predicted']:.4f} "
          f"(95% CI {check['ci95'][0]:.4f} - {check['ci95'][1]:.4f}), measured {check['measured']:.4f}; error "
          f"{check['error']:+.4f} nats ({check['relative_error']:+.1%}), "
          f"{'inside' if check['inside_ci95'] else 'outside'} the interval")
    return 0
