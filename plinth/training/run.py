"""The one training run every objective drives: resume, signals, LR schedule, gradient accumulation, non-finite
handling, checkpoint cadence, metrics and TensorBoard, progress, throughput and MFU.

An objective is what varies: a `loss_fn(model, batch) -> (summed loss, count, metrics)`, a batch source that can
report and restore its position, and an optional validation scorer (see `Objective`). Fine-tuning, freezing, LoRA
and the like are applied to the model before it is handed here; this file never changes for a new objective.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from plinth.artifacts import (
    CHECKPOINTS,
    RUN_CONFIG,
    SUMMARY,
    latest_verified_checkpoint,
    locked,
    read_json,
    read_run_state,
    resolve_checkpoint,
    stored_path,
)
from plinth.common import (
    PlinthError,
    Progress,
    atomic_write_json,
    atomic_write_text,
    autocast,
    count_parameters,
    human_count,
    pick_device,
    remove_stale_temp,
    resolve_precision,
    warn,
)
from plinth.config import OptimConfig, RunConfig, SystemConfig, validate
from plinth.runlog import MetricsLog, measured_peak_flops
from plinth.training.checkpoint import restore_checkpoint, save_checkpoint
from plinth.training.optim import lr_at, make_adamw


class BatchSource(Protocol):
    """Training batches in a reproducible order whose position can be saved and restored (exact resume)."""

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, "torch.Tensor | int", dict[str, float]]]


@dataclass
class Objective:
    """What an objective hands the shared run.

    `loss_fn(model, batch)` returns the loss *summed* over the batch's `count` targets (tokens, examples), and a dict
    of extra metrics; the run divides the gradient by the count summed over all micro-batches of a step, so masked
    objectives average correctly under gradient accumulation. `units_in(batch)` is the work a batch carries for
    throughput (tokens, images); `flops_per_unit` the training FLOPs per unit, for MFU (0 = not reported).
    `stop()` (early stopping) is asked after each evaluation and once at resume; a reason string ends the run there,
    with a checkpoint. Whatever it decides on must live in the batch source's state, so a resume decides alike; an
    objective with `stop` is therefore evaluated before the step's checkpoint, others after it (a failing evaluation
    then loses no training).
    """

    name: str
    loss_fn: LossFn
    batches: BatchSource
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    units_in: Callable[[Any], int] = lambda batch: int(batch[0].numel())
    unit: str = "tok"
    flops_per_unit: float = 0.0
    stop: Callable[[], str | None] | None = None  # asked after each evaluation: a reason to end the run early


@dataclass
class RunSpec:
    """Everything about a run that is not the model or the objective."""

    optim: OptimConfig
    run: RunConfig
    system: SystemConfig
    config: dict[str, Any] = field(default_factory=dict)  # the verb's resolved config: config.yaml and run.json
    assets: dict[str, Path] = field(default_factory=dict)  # files copied into every checkpoint (tokenizer.json)
    paths: dict[str, Path] = field(default_factory=dict)  # data the run depends on, stored absolute + run-relative


@dataclass
class _State:
    step: int = 0
    tokens: int = 0  # units processed (tokens for language models)
    elapsed_s: float = 0.0
    bad_steps: int = 0
    streak_start: int = 0  # first step of the current run of non-finite steps


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit cleanly."""
    stop: dict[str, int | None] = {"signal": None}
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


def schedule_step(step: int, rc: RunConfig, elapsed_s: float) -> int:
    """The step the LR schedule is at: with a time limit, whichever budget (steps or minutes) is further spent.

    So a run cut short by `max_minutes` still finishes its cosine decay instead of stopping at a high rate. Time
    enters the schedule only when a limit is set; runs without one stay bitwise reproducible.
    """
    if rc.max_minutes <= 0:
        return step
    return max(step, min(rc.max_steps, int(rc.max_steps * elapsed_s / (rc.max_minutes * 60))))


def effective_warmup(optim: OptimConfig, rc: RunConfig) -> int:
    """Warmup steps actually used: capped at half the run (with a warning), so the rate always peaks and decays."""
    cap = rc.max_steps // 2
    if optim.warmup_steps > cap:
        warn(f"optim.warmup_steps ({optim.warmup_steps}) is more than half of run.max_steps ({rc.max_steps}): "
             f"using {cap}, so the learning rate reaches its peak and decays")
        return cap
    return optim.warmup_steps


@dataclass
class _StepResult:
    loss: float
    grad_norm: float
    units: int
    bad: str | None  # which quantity was not finite, if any
    metrics: dict[str, float]


def train_step(model: torch.nn.Module, fwd: torch.nn.Module, optimizer: torch.optim.Optimizer,
               objective: Objective, grad_accum: int, device: torch.device, precision: str,
               grad_clip: float) -> _StepResult:
    """One optimizer step over `grad_accum` micro-batches, the gradient divided by their total target count.

    A non-finite loss or gradient norm skips the update (so one bad batch cannot poison the weights) and is named.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device)
    count: torch.Tensor | int = 0
    units, metrics = 0, {}
    for _ in range(grad_accum):
        batch = _to_device(objective.batches.next_batch(), device)
        with autocast(device, precision):
            loss, n, m = objective.loss_fn(fwd, batch)
        loss.backward()
        loss_sum += loss.detach().float()
        count = count + n
        units += objective.units_in(batch)
        metrics = {k: metrics.get(k, 0.0) + v / grad_accum for k, v in m.items()}
    total = int(count)
    if total > 0:
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_div_(grads, float(total))  # mean over every counted target of the step
    loss_value = loss_sum.item() / max(total, 1)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf")).item()
    bad = None if math.isfinite(loss_value) else "loss"
    bad = bad or (None if math.isfinite(grad_norm) else "gradient norm")
    if bad is None and total > 0:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return _StepResult(loss_value, grad_norm, units, bad, metrics)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _resume_point(rc: RunConfig) -> Path | None:
    if rc.resume == "never":
        return None
    if rc.resume == "auto":
        return latest_verified_checkpoint(rc.out_dir)
    return resolve_checkpoint(rc.resume)


COMPILE_AUTO_SECONDS = 120  # `compile auto` compiles when at least this much training is left after the probe
COMPILE_PROBE_STEPS = 3  # eager steps timed before `compile auto` decides


class _Compile:
    """Which module the training steps call: the model, or `torch.compile(model)`.

    `on` compiles from the first step, `off` never. `auto` times the first `COMPILE_PROBE_STEPS` steps of the run
    eagerly, then compiles if the training left (steps left x measured step time, capped by the time limit) is at least
    `COMPILE_AUTO_SECONDS`: compiling costs 10-40 s on a 2-core CPU and makes a step 10-20% faster
    (docs/benchmarks.md), so short runs and tests never pay for it. The decision is stored in each checkpoint, so a
    resumed run steps exactly as an uninterrupted one. Evaluation always uses the eager model. Where inductor cannot
    build kernels (no C++ compiler), torch falls back to eager with a warning instead of failing the run.
    """

    def __init__(self, model: torch.nn.Module, mode: str, decided: bool | None) -> None:
        self.model, self.mode = model, mode
        self.decided = {"on": True, "off": False}.get(mode, decided)
        self.fwd = self._compiled("asked for") if self.decided else model
        self.step_seconds: list[float] = []

    def _compiled(self, why: str) -> torch.nn.Module:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        print(f"compiling the model for training steps (torch.compile; {why})", flush=True)
        return torch.compile(self.model)

    def after_step(self, step: int, seconds: float, rc: RunConfig, elapsed_s: float) -> None:
        """Record a step's time; at the end of the probe, decide (auto only)."""
        if self.decided is not None:
            return
        self.step_seconds.append(seconds)
        if step < COMPILE_PROBE_STEPS:
            return
        left = (rc.max_steps - step) * sorted(self.step_seconds)[len(self.step_seconds) // 2]
        if rc.max_minutes > 0:
            left = min(left, rc.max_minutes * 60 - elapsed_s)
        self.decided = left >= COMPILE_AUTO_SECONDS
        if self.decided:
            self.fwd = self._compiled(f"about {left / 60:.0f} min of training left")


def _finished(run_state: dict, rc: RunConfig) -> bool:
    out_of_time = rc.max_minutes > 0 and run_state["elapsed_s"] >= rc.max_minutes * 60
    return run_state["step"] >= rc.max_steps or out_of_time


def train(model: torch.nn.Module, objective: Objective, spec: RunSpec) -> dict[str, Any]:
    """Train `model` on `objective` as `spec` says; return the run's summary (also written to summary.json).

    Resumes from the run folder's newest verified checkpoint (`run.resume auto`); a rerun of a finished run returns
    its summary and writes nothing. Holds the folder's lock for its whole life. Raises PlinthError for bad settings
    (before anything is written) and when too many consecutive steps are non-finite.
    """
    optim, rc, sc = spec.optim, spec.run, spec.system
    for section, name in ((optim, "optim"), (rc, "run"), (sc, "system")):
        validate(section, "config", f"{name}.")
    device = pick_device(sc.device)
    precision = resolve_precision(sc.precision, device)
    run_dir = Path(rc.out_dir)
    with locked(run_dir):
        remove_stale_temp(run_dir / CHECKPOINTS)
        ckpt = _resume_point(rc)
        if ckpt is not None and _finished(read_run_state(ckpt), rc):
            return _finished_summary(run_dir, ckpt)
        return _run(model, objective, spec, run_dir, ckpt, device, precision)


def _finished_summary(run_dir: Path, ckpt: Path) -> dict[str, Any]:
    summary_path = run_dir / SUMMARY
    if summary_path.is_file():
        summary = read_json(summary_path, "run summary")
        if summary.get("steps") == read_run_state(ckpt)["step"]:
            print(f"{run_dir}: already finished at step {summary['steps']} ({summary.get('status')}); nothing to do "
                  "(raise --run.max_steps or --run.max_minutes to train further)")
            return summary
    raise PlinthError(f"{run_dir}: the run reached its end at {ckpt.name} but its {SUMMARY} is missing or from "
                      "another step; evaluate it with `plinth evaluate`, or raise --run.max_steps to continue")


def _run(model, objective: Objective, spec: RunSpec, run_dir: Path, ckpt: Path | None, device: torch.device,
         precision: str) -> dict[str, Any]:
    optim, rc, sc = spec.optim, spec.run, spec.system
    model.to(device)
    optimizer = make_adamw(model, optim.lr, optim.weight_decay, (optim.beta1, optim.beta2))
    state, saved = _State(), {}
    if ckpt is not None:
        saved = restore_checkpoint(ckpt, model, optimizer)
        objective.batches.load_state_dict(saved["data"])
        state = _State(step=saved["step"], tokens=saved["tokens"], elapsed_s=saved["elapsed_s"])
    warmup = effective_warmup(optim, rc)
    _write_config(run_dir, spec)
    log = MetricsLog(run_dir, resume_step=state.step if ckpt is not None else None)
    peak = measured_peak_flops(device, precision) if objective.flops_per_unit else 0.0
    compiled = _Compile(model, sc.compile, saved.get("compiled"))
    n_params, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
    print(f"{objective.name}: {human_count(n_params)} parameters ({human_count(n_train)} trainable); {precision} on "
          f"{device}" + (f"; resuming from {ckpt} (step {state.step})" if ckpt is not None else ""), flush=True)
    run_paths = {k: stored_path(v, run_dir) for k, v in spec.paths.items()}

    def checkpoint(step: int) -> None:
        run_state = {"step": step, "tokens": state.tokens, "elapsed_s": state.elapsed_s,
                     "data": objective.batches.state_dict(), "objective": objective.name, "precision": precision,
                     "compiled": compiled.decided, "config": spec.config, "paths": run_paths}
        save_checkpoint(run_dir, step, model, optimizer, run_state, spec.assets, rc.keep_checkpoints)

    early = objective.stop() if objective.stop is not None and ckpt is not None else None
    status, last_val = (f"stopped early: {early}" if early else "completed"), {}

    def evaluate() -> dict[str, float]:
        scores = objective.evaluate(model)
        log.log(state.step, tokens=state.tokens, **{f"val_{k}": v for k, v in scores.items()})
        return scores

    session_start, elapsed_before = time.perf_counter(), state.elapsed_s
    window_s, window_units = 0.0, 0  # throughput counts training steps only, not evaluation or checkpoints
    model.train()
    with _stop_on_signals() as stop, Progress(objective.name, total=rc.max_steps, unit="step", enabled=rc.progress,
                                              interval=rc.progress_seconds) as bar:
        bar.start_at(state.step)
        while not early and state.step < rc.max_steps:
            lr = lr_at(schedule_step(state.step, rc, elapsed_before + time.perf_counter() - session_start), optim.lr,
                       warmup, rc.max_steps, optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            r = train_step(model, compiled.fwd, optimizer, objective, optim.grad_accum, device, precision,
                           optim.grad_clip)
            window_s += time.perf_counter() - t0
            state.step += 1
            state.tokens += r.units
            window_units += r.units
            if r.bad is not None:
                state.streak_start = state.streak_start if state.bad_steps else state.step
                state.bad_steps += 1
                log.log(state.step, skipped=1, nonfinite=r.bad, loss=r.loss, grad_norm=r.grad_norm, lr=lr)
                if state.bad_steps >= rc.max_bad_steps:
                    _stop_non_finite(log, run_dir, state, r.bad, rc)
            else:
                state.bad_steps = 0
                if state.step % rc.log_every == 0 or state.step == rc.max_steps:
                    rate = window_units / max(window_s, 1e-9)
                    mfu = objective.flops_per_unit * rate / peak if peak else 0.0
                    window_s, window_units = 0.0, 0
                    log.log(state.step, loss=r.loss, lr=lr, grad_norm=r.grad_norm, tokens=state.tokens,
                            **{f"{objective.unit}_per_s": rate}, **({"mfu": mfu} if peak else {}), **r.metrics)
                    bar.update(info=f"loss {r.loss:.3f} | {human_count(rate)} {objective.unit}/s"
                               + (f" | MFU {mfu:.1%}" if peak else ""))
            elapsed = elapsed_before + time.perf_counter() - session_start
            compiled.after_step(state.step, time.perf_counter() - t0, rc, elapsed)
            out_of_time = rc.max_minutes > 0 and elapsed >= rc.max_minutes * 60
            time_left = rc.max_minutes * 60 - elapsed if rc.max_minutes > 0 else None
            bar.update(completed=state.step, eta=min(time_left, bar.rate_eta()) if time_left is not None else None)
            last_step = state.step == rc.max_steps or out_of_time or stop["signal"] is not None
            state.elapsed_s = elapsed
            evaluate_now = objective.evaluate is not None and (
                (rc.eval_every and state.step % rc.eval_every == 0) or last_step)
            if evaluate_now and objective.stop is not None:  # evaluate first: its decision goes into the checkpoint
                last_val, early = evaluate(), objective.stop()
            due = (rc.ckpt_every and state.step % rc.ckpt_every == 0) or last_step or early
            if due and state.bad_steps == 0:  # never inside a streak of non-finite steps
                checkpoint(state.step)
            elif due and (last_step or early):
                warn(f"the run ended inside a streak of {state.bad_steps} non-finite steps: no final checkpoint; the "
                     "last one is from before the streak")
            if evaluate_now and objective.stop is None:  # after the checkpoint: a failing evaluation loses no training
                last_val = evaluate()
            if early:
                status = f"stopped early: {early}"
                break
            if stop["signal"] is not None:
                status = f"stopped by signal {signal.Signals(stop['signal']).name}"
                break
            if out_of_time:
                status = f"stopped at the {rc.max_minutes:g}-minute limit"
                break
        bar.info = f"{status}, step {state.step}"
    log.close()
    summary = {"status": status, "steps": state.step, "tokens": state.tokens, "parameters": n_params,
               "trainable_parameters": n_train, "train_flops": objective.flops_per_unit * state.tokens,
               "wall_s": state.elapsed_s, "precision": precision, "device": str(device),
               "checkpoint": str(resolve_checkpoint(run_dir)), "signal": stop["signal"],
               **{f"val_{k}": v for k, v in last_val.items()}}
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary


def _write_config(run_dir: Path, spec: RunSpec) -> None:
    import yaml

    atomic_write_text(run_dir / RUN_CONFIG, "# the resolved config of this run: `plinth ... --config config.yaml` "
                      "reproduces it\n" + yaml.safe_dump(spec.config, sort_keys=False))


def _stop_non_finite(log: MetricsLog, run_dir: Path, state: _State, quantity: str, rc: RunConfig) -> None:
    log.close()
    last = latest_verified_checkpoint(run_dir)
    atomic_write_json(run_dir / SUMMARY, {"status": f"stopped: {quantity} not finite", "steps": state.step,
                                          "tokens": state.tokens, "wall_s": state.elapsed_s,
                                          "checkpoint": str(last) if last else None, "signal": None})
    raise PlinthError(f"the {quantity} was not finite for {state.bad_steps} steps in a row (steps "
                      f"{state.streak_start}-{state.step}); stopped. Last checkpoint, from before them: "
                      f"{last or 'none'}. Lower --optim.lr or check the data")
