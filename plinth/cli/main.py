"""The `plinth` command: a table of verbs, each a typed function of one config dataclass."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from plinth.cli.args import help_text, parse
from plinth.common import PlinthError
from plinth.config import (
    EvaluateConfig,
    GenerateConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    TokenizeConfig,
    TokenizerConfig,
)

# Offline by design: nothing in Plinth fetches from a hub at run time.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")


@dataclass
class NoArgs:
    """A verb that takes no options."""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def quickstart_cmd(cfg: QuickstartConfig) -> int:
    """Run the whole spine on a built-in corpus: prepare, tokenizer, pretrain, evaluate, sample, report."""
    from plinth.training.quickstart import quickstart

    result = quickstart(cfg)
    print(f"\nreport: {result['report']}")
    return 0 if result["pretrain"]["signal"] is None else 128 + result["pretrain"]["signal"]


def pretrain_cmd(cfg: PretrainConfig) -> int:
    """Pretrain a decoder-only transformer on token shards (resumes from the run folder's latest checkpoint)."""
    from plinth.training.lm import pretrain

    summary = pretrain(cfg)
    _print_json(summary)
    return 0 if summary["signal"] is None else 128 + summary["signal"]


def evaluate_cmd(cfg: EvaluateConfig) -> int:
    """Loss, perplexity and bits per byte of a trained model on any text (default: its validation split)."""
    from plinth.evaluate import evaluate
    from plinth.evaluate.language_model import LanguageModel

    lm = LanguageModel.load(cfg.model, device=cfg.device)
    _print_json(evaluate(lm, cfg.data or None, field=cfg.field, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens))
    return 0


def generate_cmd(cfg: GenerateConfig) -> int:
    """Continue one or more prompts with a trained model (streamed for a single prompt)."""
    from plinth.evaluate.language_model import LanguageModel

    lm = LanguageModel.load(cfg.model, device=cfg.device)
    opts = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                seed=cfg.seed)
    if cfg.stream and len(cfg.prompts) == 1:
        steps = lm.stream(cfg.prompts, **opts)
        first = next(steps, [""])  # argument errors surface here, before the prompt is echoed
        sys.stdout.write(cfg.prompts[0] + first[0])
        for pieces in steps:
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    for prompt, text in zip(cfg.prompts, lm.generate(cfg.prompts, **opts)):
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


def data_prepare_cmd(cfg: PrepareConfig) -> int:
    """Read raw files (text, JSONL, Parquet; gz/zst), clean, dedup, split train/val, write JSONL and a report."""
    from plinth.data.ingest import prepare

    if not cfg.inputs:
        raise PlinthError("data prepare: give at least one input path, glob or builtin:NAME")
    _print_json(prepare(cfg, progress=sys.stderr.isatty()))
    return 0


def data_builtin_cmd(_: NoArgs) -> int:
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


def data_tokenize_cmd(cfg: TokenizeConfig) -> int:
    """Encode prepared documents into packed, memory-mapped token shards with a sha256 manifest."""
    from plinth.data.shards import write_shards

    _print_json(write_shards(cfg, progress=sys.stderr.isatty()))
    return 0


def tokenizer_train_cmd(cfg: TokenizerConfig) -> int:
    """Train a byte-level BPE (or character) tokenizer and save it as tokenizer.json."""
    from plinth.data.tokenizer import train_tokenizer

    tok = train_tokenizer(cfg)
    print(f"wrote {cfg.out}: {cfg.kind} tokenizer, vocabulary {tok.vocab_size}")
    return 0


def models_ls_cmd(_: NoArgs) -> int:
    """List the model size presets with parameter counts and training FLOPs per token."""
    from rich.console import Console
    from rich.table import Table

    from plinth.common import human_count
    from plinth.models.gpt import preset_table

    table = Table("preset", "layers", "heads", "kv heads", "d_model", "context", "parameters", "FLOPs/token")
    for r in preset_table():
        table.add_row(r["name"], str(r["n_layer"]), str(r["n_head"]), str(r["n_kv_head"]), str(r["d_model"]),
                      str(r["seq_len"]), human_count(r["params"]), human_count(r["flops_per_token"]))
    Console().print(table)
    return 0


VERBS: dict[tuple[str, ...], tuple[Callable[..., int], type]] = {
    ("quickstart",): (quickstart_cmd, QuickstartConfig),
    ("pretrain",): (pretrain_cmd, PretrainConfig),
    ("evaluate",): (evaluate_cmd, EvaluateConfig),
    ("generate",): (generate_cmd, GenerateConfig),
    ("data", "prepare"): (data_prepare_cmd, PrepareConfig),
    ("data", "builtin"): (data_builtin_cmd, NoArgs),
    ("data", "tokenize"): (data_tokenize_cmd, TokenizeConfig),
    ("tokenizer", "train"): (tokenizer_train_cmd, TokenizerConfig),
    ("models", "ls"): (models_ls_cmd, NoArgs),
}


def _overview() -> str:
    lines = ["usage: plinth VERB [ARGS] [--config FILE.yaml] [--FIELD VALUE ...]", "", "verbs:"]
    for words, (fn, _) in VERBS.items():
        lines.append(f"  {' '.join(words):<18} {fn.__doc__.splitlines()[0]}")
    lines += ["", "`plinth VERB --help` lists a verb's options. Errors are one line; exit code 2."]
    return "\n".join(lines)


def _find_verb(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for n in (2, 1):
        if tuple(argv[:n]) in VERBS:
            return tuple(argv[:n]), argv[n:]
    groups = {w[0] for w in VERBS if len(w) > 1}
    if argv and argv[0] in groups:
        subs = [w[1] for w in VERBS if w[0] == argv[0]]
        raise PlinthError(f"'{argv[0]}' needs a sub-command: {', '.join(subs)}")
    raise PlinthError(f"unknown verb {argv[0]!r}; verbs: {', '.join(' '.join(w) for w in VERBS)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `plinth` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] in ("--version", "version"):
        from plinth import __version__

        print(f"plinth {__version__}")
        return 0
    try:
        words, rest = _find_verb(argv)
        fn, cfg_cls = VERBS[words]
        prog = "plinth " + " ".join(words)
        if "--help" in rest or "-h" in rest:
            print(help_text(cfg_cls, prog, fn.__doc__ or ""))
            return 0
        cfg = parse(cfg_cls, rest, prog=prog)
        return fn(cfg)
    except PlinthError as e:
        print(f"plinth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plinth: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a Plinth bug
        print(f"plinth: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
