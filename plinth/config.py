"""Typed configuration for every verb, and the named model-size presets.

Stdlib only: every other layer imports this. Each field's `help` metadata is the CLI help text.
A YAML file passed with `--config` has the same shape as these dataclasses; `--section.field value`
overrides any field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _f(default, help: str, **kw):  # noqa: A002 - `help` reads best at call sites
    """A dataclass field carrying its CLI help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ----------------------------------------------------------------------------------------------------------------------
# Model architecture


@dataclass
class ModelConfig:
    """Decoder-only transformer hyperparameters (Llama layout: RoPE, RMSNorm, SwiGLU, GQA)."""

    name: str = _f("custom", "preset this config came from (informational)")
    vocab_size: int = _f(4096, "vocabulary size; pretrain sets it from the tokenizer")
    n_layer: int = _f(4, "number of transformer blocks")
    n_head: int = _f(4, "attention (query) heads")
    n_kv_head: int = _f(4, "key/value heads; fewer than n_head gives grouped-query attention")
    d_model: int = _f(128, "residual stream width")
    d_ff: int = _f(0, "SwiGLU hidden width; 0 means the Llama rule (8/3 d_model, rounded up to 32)")
    seq_len: int = _f(256, "context length in tokens")
    rope_theta: float = _f(10000.0, "RoPE base frequency")
    norm_eps: float = _f(1e-5, "RMSNorm epsilon")
    tie_embeddings: bool = _f(True, "share the input embedding and output projection weights")

    def __post_init__(self) -> None:
        if self.d_ff == 0:
            self.d_ff = 32 * -(-int(8 * self.d_model / 3) // 32)
        problems = []
        if self.n_head <= 0 or self.d_model % self.n_head:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        elif (self.d_model // self.n_head) % 2:
            problems.append(f"head size d_model/n_head ({self.d_model // self.n_head}) must be even for RoPE")
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            problems.append(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        for name in ("vocab_size", "n_layer", "seq_len"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if problems:
            raise ValueError("model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head


# name -> (n_layer, n_head, n_kv_head, d_model, seq_len). The smallest is what tests use; `quickstart` trains `tiny`.
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "test": (2, 4, 2, 64, 64),
    "tiny": (4, 4, 4, 128, 256),
    "small": (6, 6, 6, 384, 512),
    "base": (12, 12, 4, 768, 1024),
    "medium": (24, 16, 8, 1024, 2048),
    "large": (24, 16, 8, 1536, 2048),
    "1b": (22, 32, 4, 2048, 2048),
}


def preset(name: str, **overrides) -> ModelConfig:
    """Build the ModelConfig for a named preset, with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    n_layer, n_head, n_kv_head, d_model, seq_len = PRESETS[name]
    d_ff = 5632 if name == "1b" else 0  # TinyLlama-1.1B's width for the 1b preset
    base = dict(name=name, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model, seq_len=seq_len,
                d_ff=d_ff, vocab_size=32000 if name not in ("test", "tiny") else 4096)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**base)


# ----------------------------------------------------------------------------------------------------------------------
# Verbs


@dataclass
class PrepareConfig:
    """Arguments of `plinth data prepare`: raw files -> cleaned train/val JSONL documents."""

    inputs: list[str] = _f([], "files, directories or globs to read (.txt .jsonl .parquet, optionally .gz/.zst), "
                               "or builtin:NAME", positional=True)
    out: str = _f("data/prepared", "output folder (train.jsonl, val.jsonl, report.json)")
    field: str = _f("text", "JSONL / Parquet field holding the document text")
    val_fraction: float = _f(0.01, "share of documents held out for validation (chosen by a hash of the text)")
    min_chars: int = _f(1, "drop documents shorter than this after cleaning")
    seed: int = _f(0, "salt for the deterministic train/validation split")
    max_docs: int = _f(0, "stop after keeping this many documents (0 = all)")


@dataclass
class TokenizerConfig:
    """Arguments of `plinth tokenizer train`."""

    input: str = _f("data/prepared", "prepared folder (its train.jsonl), or a text/JSONL file", positional=True)
    out: str = _f("data/tokenizer.json", "where to write tokenizer.json")
    kind: str = _f("bpe", "bpe (byte-level BPE) or char (characters seen, with byte fallback)", choices=("bpe", "char"))
    vocab_size: int = _f(4096, "vocabulary size for bpe (ignored by char)")
    max_chars: int = _f(0, "train on at most this many characters (0 = all)")


@dataclass
class TokenizeConfig:
    """Arguments of `plinth data tokenize`: prepared documents -> packed token shards."""

    input: str = _f("data/prepared", "prepared folder (train.jsonl, val.jsonl)", positional=True)
    tokenizer: str = _f("data/tokenizer.json", "tokenizer.json to encode with")
    out: str = _f("data/shards", "output folder (train/, val/, each with a manifest.json)")
    shard_tokens: int = _f(50_000_000, "tokens per shard file")


@dataclass
class DataConfig:
    """Where pretraining reads its tokens."""

    shards: str = _f("data/shards", "token shard folder written by `plinth data tokenize` (train/ and val/)")
    tokenizer: str = _f("data/tokenizer.json", "tokenizer.json matching the shards")


@dataclass
class ArchOverrides:
    """Architecture fields that replace the preset's values when set."""

    n_layer: int | None = _f(None, "override the preset's number of blocks")
    n_head: int | None = _f(None, "override the preset's query heads")
    n_kv_head: int | None = _f(None, "override the preset's key/value heads")
    d_model: int | None = _f(None, "override the preset's width")
    d_ff: int | None = _f(None, "override the preset's SwiGLU width")
    seq_len: int | None = _f(None, "override the preset's context length")
    rope_theta: float | None = _f(None, "override the RoPE base")
    tie_embeddings: bool | None = _f(None, "override weight tying")


@dataclass
class TrainConfig:
    """Optimisation and run-control settings of `plinth pretrain`."""

    out_dir: str = _f("runs/pretrain", "run folder: checkpoints, metrics.jsonl, TensorBoard events")
    max_steps: int = _f(1000, "optimizer steps to run")
    batch_size: int = _f(16, "sequences per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float = _f(3e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak (cosine floor)")
    warmup_steps: int = _f(50, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only; not norms or biases)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    precision: str = _f("auto", "auto (bf16 where the hardware has it), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    compile: bool = _f(False, "torch.compile the model")
    device: str = _f("auto", "auto, cpu or cuda")
    seed: int = _f(1337, "seed for weights, data order and dropout")
    eval_every: int = _f(200, "evaluate on validation every N steps (0 = only at the end)")
    eval_batches: int = _f(20, "validation batches per evaluation")
    ckpt_every: int = _f(200, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints to keep (at least 2)")
    resume: str = _f("auto", "auto (latest valid checkpoint in out_dir), never, or a checkpoint folder")
    max_bad_steps: int = _f(5, "stop after this many consecutive non-finite losses")
    log_every: int = _f(10, "write metrics every N steps")
    max_minutes: float = _f(0.0, "stop (with a checkpoint) after this many minutes; the LR schedule then follows "
                                 "whichever budget is further spent (0 = no limit)")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class PretrainConfig:
    """Arguments of `plinth pretrain`."""

    model: str = _f("tiny", "model size preset (see `plinth models ls`)")
    arch: ArchOverrides = field(default_factory=lambda: ArchOverrides())
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvaluateConfig:
    """Arguments of `plinth evaluate`."""

    model: str = _f("runs/quickstart", "run folder or checkpoint folder", positional=True)
    data: str = _f("", "text, JSONL, Parquet file or folder to score (default: the run's validation split)")
    field: str = _f("text", "JSONL / Parquet field holding the text")
    batch_size: int = _f(8, "sequences per batch")
    max_tokens: int = _f(0, "score at most this many tokens (0 = all)")
    device: str = _f("auto", "auto, cpu or cuda")


@dataclass
class GenerateConfig:
    """Arguments of `plinth generate`."""

    model: str = _f("runs/quickstart", "run folder or checkpoint folder", positional=True)
    prompts: list[str] = _f(["The"], "one or more prompts (a batch)")
    max_new_tokens: int = _f(100, "tokens to generate per prompt")
    temperature: float = _f(0.8, "sampling temperature (0 = greedy)")
    top_k: int = _f(0, "keep only the k most likely tokens (0 = off)")
    top_p: float = _f(1.0, "nucleus sampling: keep the smallest set with this much probability (1 = off)")
    seed: int = _f(0, "sampling seed")
    stream: bool = _f(True, "print tokens as they are produced (single prompt)")
    device: str = _f("auto", "auto, cpu or cuda")


@dataclass
class QuickstartConfig:
    """Arguments of `plinth quickstart`: the whole spine on a built-in corpus."""

    out: str = _f("runs/quickstart", "run folder")
    corpus: str = _f("sotu", "built-in corpus name (see `plinth data builtin`)")
    model: str = _f("tiny", "model size preset")
    vocab_size: int = _f(4096, "BPE vocabulary size")
    max_steps: int = _f(600, "pretraining steps")
    batch_size: int = _f(16, "sequences per step")
    seq_len: int = _f(256, "context length")
    lr: float = _f(3e-3, "peak learning rate")
    max_minutes: float = _f(7.0, "stop pretraining after this many minutes (0 = no limit)")
    max_docs: int = _f(0, "use at most this many documents (0 = all)")
    device: str = _f("auto", "auto, cpu or cuda")
    precision: str = _f("auto", "auto, fp32 or bf16", choices=("auto", "fp32", "bf16"))
    progress: bool = _f(True, "show progress bars")
    seed: int = _f(1337, "seed")


def field_names(cls) -> list[str]:
    """Names of a dataclass's fields."""
    return [f.name for f in fields(cls)]
