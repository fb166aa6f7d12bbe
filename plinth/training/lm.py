"""Causal language modelling: the next-token loss, its batches from token shards, and `pretrain`, a thin builder
that hands them to the shared training run (`plinth.training.run`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plinth.artifacts import TOKENIZER, resolve_checkpoint
from plinth.common import PlinthError, pick_device, resolve_precision, seed_everything, warn
from plinth.config import PretrainConfig, to_dict, validate
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches
from plinth.data.tokenizer import Tokenizer
from plinth.evaluate.lm import score_batches
from plinth.models import build_model, make_config
from plinth.models.io import load_weights, read_model_config
from plinth.training.distributed import check_batch_divides, launch, needs_launch
from plinth.training.run import Objective, RunSpec, train

IGNORE_INDEX = -100  # targets with this id are not predicted (prompt tokens, padding): F.cross_entropy's default


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         dict[str, float]]:
    """Summed next-token cross-entropy of an (x, y) batch, both (B, T), and the number of targets (y != -100)."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, (y != IGNORE_INDEX).sum(), {}


def _load_data(cfg: PretrainConfig, tokenizer: Tokenizer, seq_len: int) -> tuple[TokenShards, TokenShards | None]:
    """Both splits, checked before step 1: train must hold a window, val may be short or absent (warned)."""
    root = Path(cfg.data.shards)
    if not (root / "train" / "manifest.json").is_file():
        raise PlinthError(f"{root}: no token shards (train/manifest.json); run `plinth data tokenize ... --out {root}`")
    train_split = TokenShards(root / "train")
    val = TokenShards(root / "val") if (root / "val" / "manifest.json").is_file() else None
    for shards in filter(None, (train_split, val)):
        if shards.tokenizer_sha256 and shards.tokenizer_sha256 != tokenizer.sha256:
            raise PlinthError(f"{shards.folder}: shards were written with a different tokenizer than "
                              f"{cfg.data.tokenizer}; re-run `plinth data tokenize` or pass the matching "
                              "--data.tokenizer")
    if train_split.total_tokens < seq_len + 1:
        raise PlinthError(f"{train_split.folder}: the training split has {train_split.total_tokens} tokens, fewer than "
                          f"one window (context {seq_len} + 1); lower --arch.seq_len or add data")
    if val is None or val.total_tokens < 2:
        warn(f"{root / 'val'}: no validation tokens; training without validation (prepare with --val_fraction > 0 "
             "to get a held-out score)")
        val = None
    elif val.total_tokens < seq_len + 1:
        warn(f"{val.folder}: the validation split has {val.total_tokens} tokens, fewer than a context ({seq_len}) + 1; "
             "it is scored as one shorter window")
    return train_split, val


def _model_config(cfg: PretrainConfig, vocab_size: int):
    if not cfg.init_from:
        return make_config(cfg.model, cfg.arch, where="arch", vocab_size=vocab_size)
    config = read_model_config(resolve_checkpoint(cfg.init_from))
    if getattr(config, "vocab_size", vocab_size) < vocab_size:
        raise PlinthError(f"{cfg.init_from}: the model's vocabulary ({config.vocab_size}) is smaller than the "
                          f"tokenizer's ({vocab_size}); use the tokenizer the model was trained with")
    return config


def _absolute(cfg: PretrainConfig) -> PretrainConfig:
    """A copy with every path absolute, so config.yaml and run.json mean the same from any working directory."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data), run=dataclasses.replace(cfg.run))
    cfg.data.shards = str(Path(cfg.data.shards).expanduser().resolve())
    cfg.data.tokenizer = str(Path(cfg.data.tokenizer).expanduser().resolve())
    cfg.run.out_dir = str(Path(cfg.run.out_dir).expanduser().resolve())
    if cfg.init_from:
        cfg.init_from = str(Path(cfg.init_from).expanduser().resolve())
    return cfg


def lm_objective(train_split: TokenShards, val: TokenShards | None, seq_len: int, cfg: PretrainConfig,
                 token_bytes, precision: str, flops_per_token: float) -> Objective:
    """Next-token prediction over random windows of the shards, scored on the first validation windows."""
    sampler = WindowSampler(train_split, seq_len, cfg.optim.batch_size, cfg.system.seed)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        batches = iter_sequential_batches(val, seq_len, cfg.optim.batch_size, max_batches=cfg.run.eval_batches)
        return score_batches(model, batches, token_bytes, precision)

    return Objective("pretrain", lm_loss, sampler, evaluate if val is not None else None,
                     flops_per_unit=flops_per_token)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrain a language model on token shards; returns the run's summary (steps, tokens, losses, wall time, FLOPs).

    Every option, the device, the data and the model config are checked before anything is written (one-line
    PlinthError naming the field or file). Resumes from the run folder's newest verified checkpoint.
    """
    validate(cfg, "pretrain")
    cfg = _absolute(cfg)
    device = pick_device(cfg.system.device)
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    mcfg = _model_config(cfg, tokenizer.vocab_size)
    train_split, val = _load_data(cfg, tokenizer, mcfg.seq_len)
    check_batch_divides(cfg.optim.batch_size, cfg.dist)
    if needs_launch(cfg.dist):  # --nproc N: checked above; now torchrun runs this verb on N processes
        return launch(["pretrain"], to_dict(cfg), cfg.dist.nproc, cfg.run.out_dir)
    seed_everything(cfg.system.seed)
    model = build_model(mcfg)
    if cfg.init_from:
        load_weights(model, resolve_checkpoint(cfg.init_from))
    precision = resolve_precision(cfg.system.precision, device)
    objective = lm_objective(train_split, val, mcfg.seq_len, cfg, tokenizer.token_bytes(), precision,
                             model.flops_per_token(mcfg.seq_len))
    print(f"model {mcfg.name}: {mcfg.n_layer} layers, d_model {mcfg.d_model}, context {mcfg.seq_len}, vocab "
          f"{mcfg.vocab_size}", flush=True)
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets={TOKENIZER: Path(cfg.data.tokenizer)},
                   paths={"shards": Path(cfg.data.shards), "tokenizer": Path(cfg.data.tokenizer)}, dist=cfg.dist)
    return train(model, objective, spec)
