"""Causal language-model pretraining: one explicit loop, resumable bit for bit from its checkpoints."""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plinth.common import (
    PlinthError,
    atomic_write_json,
    autocast,
    count_parameters,
    human_count,
    pick_device,
    resolve_checkpoint,
    resolve_precision,
    seed_everything,
)
from plinth.config import ModelConfig, PretrainConfig, preset
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches
from plinth.data.tokenizer import Tokenizer
from plinth.evaluate.lm import score_batches
from plinth.models.gpt import GPT
from plinth.runlog import MetricsLog, measured_peak_flops, progress_bar
from plinth.training.checkpoint import latest_valid_checkpoint, restore_checkpoint, save_checkpoint
from plinth.training.optim import lr_at, make_adamw


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy of a (x, y) batch."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    return loss, {}


def train_step(fwd: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer, next_batch,
               grad_accum: int, device: torch.device, precision: str, grad_clip: float) -> tuple[float, float, bool]:
    """One optimizer step over `grad_accum` micro-batches: (mean loss, grad norm, whether the update was applied).

    A non-finite loss or gradient norm skips the update, so one bad batch cannot poison the weights.
    """
    loss_sum = 0.0
    for _ in range(grad_accum):
        x, y = (t.to(device, non_blocking=True) for t in next_batch())
        with autocast(device, precision):
            loss, _ = loss_fn(fwd, (x, y))
        (loss / grad_accum).backward()
        loss_sum += loss.item() / grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf")).item()
    applied = math.isfinite(loss_sum) and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, applied


def model_config_for(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    """The preset named in `cfg.model`, with `cfg.arch` overrides and the tokenizer's vocabulary size."""
    try:
        return preset(cfg.model, vocab_size=vocab_size, **dataclasses.asdict(cfg.arch))
    except (KeyError, ValueError) as e:
        raise PlinthError(str(e).strip("'\"")) from None


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit cleanly."""
    stop = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _load_data(cfg: PretrainConfig) -> tuple[Tokenizer, TokenShards, TokenShards | None]:
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    root = Path(cfg.data.shards)
    train = TokenShards(root / "train")
    val = TokenShards(root / "val") if (root / "val" / "manifest.json").is_file() else None
    for shards in filter(None, (train, val)):
        if shards.tokenizer_sha256 and shards.tokenizer_sha256 != tokenizer.sha256:
            raise PlinthError(f"{shards.folder}: shards were written with a different tokenizer than "
                              f"{cfg.data.tokenizer}; re-run `plinth data tokenize` or pass the matching "
                              "--data.tokenizer")
    return tokenizer, train, val


def _resume_point(tc) -> Path | None:
    if tc.resume == "never":
        return None
    if tc.resume == "auto":
        return latest_valid_checkpoint(tc.out_dir)
    return resolve_checkpoint(tc.resume)


def _schedule_step(step: int, tc, elapsed_s: float) -> int:
    """The step the LR schedule is at: with a time limit, whichever budget (steps or minutes) is further spent.

    So a run cut short by `max_minutes` still finishes its cosine decay instead of stopping at a high rate. Time
    enters the schedule only when a limit is set; runs without one stay bitwise reproducible.
    """
    if tc.max_minutes <= 0:
        return step
    return max(step, min(tc.max_steps, int(tc.max_steps * elapsed_s / (tc.max_minutes * 60))))


def _evaluate(model, val: TokenShards, seq_len: int, tc, token_bytes, precision: str) -> dict[str, float]:
    batches = iter_sequential_batches(val, seq_len, tc.batch_size, max_batches=tc.eval_batches)
    return score_batches(model, batches, token_bytes, precision)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrain a GPT on token shards; returns a summary (steps, tokens, losses, wall time, FLOPs, status)."""
    tc = cfg.train
    if tc.batch_size < 1 or tc.grad_accum < 1 or tc.max_steps < 1:
        raise PlinthError("train.batch_size, train.grad_accum and train.max_steps must be at least 1")
    device = pick_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    tokenizer, train_shards, val_shards = _load_data(cfg)
    mcfg = model_config_for(cfg, tokenizer.vocab_size)
    run_dir = Path(tc.out_dir)

    seed_everything(tc.seed)
    model = GPT(mcfg).to(device)
    optimizer = make_adamw(model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))
    sampler = WindowSampler(train_shards, mcfg.seq_len, tc.batch_size, tc.seed)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "bad_steps": 0}
    ckpt = _resume_point(tc)
    if ckpt is not None:
        # `auto` found it through latest_valid_checkpoint, which already checked every hash.
        saved = restore_checkpoint(ckpt, model, optimizer, expect_model_config=dataclasses.asdict(mcfg),
                                   verified=tc.resume == "auto")
        sampler.load_state_dict(saved["data"])
        state.update({k: saved[k] for k in state})
    step0 = state["step"]
    log = MetricsLog(run_dir, resume_step=step0 if ckpt is not None else None)
    atomic_write_json(run_dir / "config.json", {"pretrain": dataclasses.asdict(cfg), "model": dataclasses.asdict(mcfg),
                                                "precision": precision, "device": str(device)})
    fwd = torch.compile(model) if tc.compile else model
    token_bytes = tokenizer.token_bytes()
    tokens_per_step = tc.batch_size * tc.grad_accum * mcfg.seq_len
    flops_per_token = model.flops_per_token(mcfg.seq_len)
    peak = measured_peak_flops(device, precision)
    n_params = count_parameters(model)
    print(f"model {mcfg.name}: {human_count(n_params)} parameters, {mcfg.n_layer} layers, d_model {mcfg.d_model}, "
          f"context {mcfg.seq_len}, vocab {mcfg.vocab_size}; {precision} on {device}"
          + (f"; resuming from {ckpt} (step {step0})" if ckpt is not None else ""))

    def checkpoint(step: int) -> Path:
        run_state = {**state, "step": step, "data": sampler.state_dict(), "model_config": dataclasses.asdict(mcfg),
                     "config": dataclasses.asdict(cfg), "precision": precision}
        return save_checkpoint(run_dir, step, model, optimizer, run_state, cfg.data.tokenizer, tc.keep_checkpoints)

    status, last_val = "completed", {}
    session_start, elapsed_before = time.perf_counter(), state["elapsed_s"]
    window_train_s, window_tokens = 0.0, 0  # throughput counts training steps only, not evaluation or checkpoints
    model.train()
    with _stop_on_signals() as stop, progress_bar(tc.progress) as bar:
        task = bar.add_task("pretrain", total=tc.max_steps, completed=step0, info="")
        step = step0
        while step < tc.max_steps:
            lr = lr_at(_schedule_step(step, tc, elapsed_before + time.perf_counter() - session_start), tc.lr,
                       tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_start = time.perf_counter()
            loss_sum, grad_norm, applied = train_step(fwd, model, optimizer, sampler.next_batch, tc.grad_accum,
                                                      device, precision, tc.grad_clip)
            window_train_s += time.perf_counter() - step_start
            step += 1
            if applied:
                state["bad_steps"] = 0
            else:
                state["bad_steps"] += 1
                log.log(step, skipped=1, loss=loss_sum, grad_norm=grad_norm)
                if state["bad_steps"] >= tc.max_bad_steps:
                    log.close()
                    last = latest_valid_checkpoint(run_dir)
                    raise PlinthError(f"loss was not finite for {state['bad_steps']} steps in a row (at step {step});"
                                      f" stopped. Last good checkpoint: {last or 'none'}. Lower --train.lr or check"
                                      " the data")
            state["step"], state["tokens"] = step, state["tokens"] + tokens_per_step
            window_tokens += tokens_per_step
            if step % tc.log_every == 0 or step == tc.max_steps:
                tok_s = window_tokens / max(window_train_s, 1e-9)
                mfu = flops_per_token * tok_s / peak
                window_train_s, window_tokens = 0.0, 0
                log.log(step, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens=state["tokens"], tok_per_s=tok_s,
                        mfu=mfu)
                bar.update(task, info=f"loss {loss_sum:.3f} | {human_count(tok_s)} tok/s | MFU {mfu:.1%}")
            bar.update(task, completed=step)
            elapsed = elapsed_before + time.perf_counter() - session_start
            out_of_time = tc.max_minutes > 0 and elapsed >= tc.max_minutes * 60
            last_step = step == tc.max_steps or out_of_time or stop["signal"] is not None
            if val_shards is not None and ((tc.eval_every and step % tc.eval_every == 0) or last_step):
                last_val = _evaluate(model, val_shards, mcfg.seq_len, tc, token_bytes, precision)
                log.log(step, val_loss=last_val["loss"], val_bpb=last_val.get("bpb", float("nan")),
                        val_perplexity=last_val["perplexity"], tokens=state["tokens"])
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or last_step:
                state["elapsed_s"] = elapsed
                checkpoint(step)
            if stop["signal"] is not None:
                status = f"stopped by signal {signal.Signals(stop['signal']).name}"
                break
            if out_of_time:
                status = f"stopped at the {tc.max_minutes:g}-minute limit"
                break
    log.close()
    wall = state["elapsed_s"]
    summary = {"status": status, "steps": state["step"], "tokens": state["tokens"], "parameters": n_params,
               "train_flops": flops_per_token * state["tokens"], "wall_s": wall, "precision": precision,
               "checkpoint": str(resolve_checkpoint(run_dir)), "signal": stop["signal"],
               **{f"val_{k}": v for k, v in last_val.items()}}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
