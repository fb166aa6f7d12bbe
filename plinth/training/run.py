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
    remove_stale_temp,
    resolve_precision,
    warn,
)
from plinth.config import DistributedConfig, OptimConfig, RunConfig, SystemConfig, validate
from plinth.runlog import MetricsLog, device_peak_flops
from plinth.training.distributed import Parallel, setup
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
    dist: DistributedConfig = field(default_factory=DistributedConfig)  # used when torchrun started the process


@dataclass
class _State:
    step: int = 0
    tokens: int = 0  # units processed (tokens for language models)
    elapsed_s: float = 0.0
    train_s: float = 0.0  # seconds inside training steps (what MFU and throughput are measured over)
    comm_s: float = 0.0  # of which with communication in flight (several processes)
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
               grad_clip: float, par: Parallel | None = None) -> _StepResult:
    """One optimizer step over `grad_accum` micro-batches, the gradient divided by their total target count.

    With several processes (`par`), the loss, count and units are summed over every rank's part of the batch, and
    gradients are communicated on the last micro-batch only. A non-finite loss or gradient norm skips the update on
    every rank (so one bad batch cannot poison the weights) and is named.
    """
    par = par or Parallel(device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device)
    count: torch.Tensor | int = 0
    units, metrics = 0, {}
    for i in range(grad_accum):
        batch = _to_device(objective.batches.next_batch(), device)
        with par.no_sync(fwd, last=i == grad_accum - 1):
            with autocast(device, precision):
                loss, n, m = objective.loss_fn(fwd, batch)
            loss.backward()
        loss_sum += loss.detach().float()
        count = count + n
        units += objective.units_in(batch)
        metrics = {k: metrics.get(k, 0.0) + v / grad_accum for k, v in m.items()}
    loss_total, total, units = par.reduce_step(loss_sum, count, units)
    if total > 0:
        grads = [p.grad for p in params if p.grad is not None]
        # Mean over every counted target of the step; DDP/FSDP have already averaged over the ranks.
        torch._foreach_div_(grads, total / par.grad_average)
    loss_value = loss_total / max(total, 1)
    grad_norm = par.clip_grad_norm(params, grad_clip)
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
    its summary and writes nothing. Holds the folder's lock for its whole life. Under torchrun, every process calls
    this and each trains on its part of every batch (`training.distributed`); rank 0 alone holds the lock and writes
    config, metrics and summary. Raises PlinthError for bad settings (before anything is written) and when too many
    consecutive steps are non-finite.
    """
    optim, rc, sc = spec.optim, spec.run, spec.system
    for section, name in ((optim, "optim"), (rc, "run"), (sc, "system"), (spec.dist, "dist")):
        validate(section, "config", f"{name}.")
    par = setup(spec.dist, sc.device)
    precision = resolve_precision(sc.precision, par.device)
    run_dir = Path(rc.out_dir)
    try:
        with par.failures(), par.locked(run_dir):
            ckpt = par.on_main(lambda: _start(run_dir, rc))
            if ckpt is not None and _finished(read_run_state(ckpt), rc):
                return par.on_main(lambda: _finished_summary(run_dir, ckpt))
            return _run(model, objective, spec, par, run_dir, ckpt, precision)
    finally:
        par.close()


def _start(run_dir: Path, rc: RunConfig) -> Path | None:
    remove_stale_temp(run_dir / CHECKPOINTS)  # a killed run's half-written checkpoint
    return _resume_point(rc)


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


def _run(model, objective: Objective, spec: RunSpec, par: Parallel, run_dir: Path, ckpt: Path | None,
         precision: str) -> dict[str, Any]:
    optim, rc, sc = spec.optim, spec.run, spec.system
    device = par.device
    model = par.prepare(model, sc.activation_checkpointing, precision)
    optimizer = make_adamw(model, optim.lr, optim.weight_decay, (optim.beta1, optim.beta2))
    par.shard(objective.batches)
    state, saved = _State(), {}
    if ckpt is not None:
        saved = par.restore(ckpt, model, optimizer)
        objective.batches.load_state_dict(saved["data"])
        state = _State(step=saved["step"], tokens=saved["tokens"], elapsed_s=saved["elapsed_s"],
                       train_s=saved.get("train_s", 0.0), comm_s=saved.get("comm_s", 0.0))
    warmup = effective_warmup(optim, rc)
    if par.is_main:
        _write_config(run_dir, spec)
    log = MetricsLog(run_dir, resume_step=state.step if ckpt is not None else None) if par.is_main else _NoLog()
    peak, peak_source = device_peak_flops(device, precision) if objective.flops_per_unit else (0.0, "")
    compiled = _Compile(par.wrap(model), sc.compile, saved.get("compiled"))
    probe_clock = state.elapsed_s
    n_params, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
    where = f"{device}" + (f" x {par.world_size} processes ({par.strategy})" if par.world_size > 1 else "")
    print(f"{objective.name}: {human_count(n_params)} parameters ({human_count(n_train)} trainable); {precision} on "
          f"{where}" + (f"; resuming from {ckpt} (step {state.step})" if ckpt is not None else ""), flush=True)
    run_paths = {k: stored_path(v, run_dir) for k, v in spec.paths.items()}

    def checkpoint(step: int) -> None:
        run_state = {"step": step, "tokens": state.tokens, "elapsed_s": state.elapsed_s, "train_s": state.train_s,
                     "comm_s": state.comm_s, "data": objective.batches.state_dict(), "objective": objective.name,
                     "precision": precision, "compiled": compiled.decided, "config": spec.config, "paths": run_paths}
        par.save(run_dir, step, model, optimizer, run_state, spec.assets, rc.keep_checkpoints)

    early = objective.stop() if objective.stop is not None and ckpt is not None else None
    status, last_val, signum = (f"stopped early: {early}" if early else "completed"), {}, None

    def evaluate() -> dict[str, float]:
        scores = objective.evaluate(model)
        par.evaluated(model)
        log.log(state.step, tokens=state.tokens, **{f"val_{k}": v for k, v in scores.items()})
        return scores

    session_start, elapsed_before = time.perf_counter(), state.elapsed_s
    window_s, window_units, window_comm = 0.0, 0, 0.0  # training steps only, not evaluation or checkpoints
    model.train()
    with _stop_on_signals() as stop, Progress(objective.name, total=rc.max_steps, unit="step",
                                              enabled=rc.progress and par.is_main,
                                              interval=rc.progress_seconds) as bar:
        bar.start_at(state.step)
        while not early and state.step < rc.max_steps:
            lr = lr_at(schedule_step(state.step, rc, state.elapsed_s), optim.lr, warmup, rc.max_steps,
                       optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            par.comm.take()  # drop what evaluation or checkpointing communicated
            r = train_step(model, compiled.fwd, optimizer, objective, optim.grad_accum, device, precision,
                           optim.grad_clip, par)
            # Every rank acts on the same clock and the same stop signal, so all stop (and save) at the same step.
            elapsed, signum = par.agree(elapsed_before + time.perf_counter() - session_start, stop["signal"])
            step_s, step_comm = time.perf_counter() - t0, par.comm.take()
            window_s, window_comm = window_s + step_s, window_comm + step_comm
            state.train_s, state.comm_s = state.train_s + step_s, state.comm_s + step_comm
            state.step += 1
            state.tokens += r.units
            window_units += r.units
            if r.bad is not None:
                state.streak_start = state.streak_start if state.bad_steps else state.step
                state.bad_steps += 1
                log.log(state.step, skipped=1, nonfinite=r.bad, loss=r.loss, grad_norm=r.grad_norm, lr=lr)
                if state.bad_steps >= rc.max_bad_steps:
                    _stop_non_finite(log, run_dir, state, r.bad, rc, par)
            else:
                state.bad_steps = 0
                if state.step % rc.log_every == 0 or state.step == rc.max_steps:
                    rate = window_units / max(window_s, 1e-9)
                    mfu = objective.flops_per_unit * rate / (peak * par.world_size) if peak else 0.0
                    comm = {"comm_share": window_comm / max(window_s, 1e-9)} if par.world_size > 1 else {}
                    window_s, window_units, window_comm = 0.0, 0, 0.0
                    log.log(state.step, loss=r.loss, lr=lr, grad_norm=r.grad_norm, tokens=state.tokens,
                            **{f"{objective.unit}_per_s": rate}, **({"mfu": mfu} if peak else {}), **comm,
                            **r.metrics)
                    bar.update(info=f"loss {r.loss:.3f} | {human_count(rate)} {objective.unit}/s"
                               + (f" | MFU {mfu:.1%}" if peak else "")
                               + (f" | comm {comm['comm_share']:.0%}" if comm else ""))
            # compile auto decides on step times every rank agrees on (the agreed clock), so all ranks decide alike
            step_clock = step_s if par.world_size == 1 else elapsed - probe_clock
            probe_clock = elapsed
            compiled.after_step(state.step, step_clock, rc, elapsed)
            out_of_time = rc.max_minutes > 0 and elapsed >= rc.max_minutes * 60
            time_left = rc.max_minutes * 60 - elapsed if rc.max_minutes > 0 else None
            bar.update(completed=state.step, eta=min(time_left, bar.rate_eta()) if time_left is not None else None)
            last_step = state.step == rc.max_steps or out_of_time or signum is not None
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
            if signum is not None:
                status = f"stopped by signal {signal.Signals(signum).name}"
                break
            if out_of_time:
                status = f"stopped at the {rc.max_minutes:g}-minute limit"
                break
        bar.info = f"{status}, step {state.step}"
    log.close()
    accounting = compute_accounting(objective, state, peak, peak_source, par)
    summary = {"status": status, "steps": state.step, "tokens": state.tokens, "parameters": n_params,
               "trainable_parameters": n_train, **accounting, "wall_s": state.elapsed_s, "precision": precision,
               "device": str(device), "signal": signum, **{f"val_{k}": v for k, v in last_val.items()}}
    return par.on_main(lambda: _write_summary(run_dir, summary))


def compute_accounting(objective: Objective, state: _State, peak: float, peak_source: str,
                       par: Parallel) -> dict[str, Any]:
    """What the run cost: FLOPs per unit and in total, training seconds, MFU against `peak` per process, and for
    several processes the share of step time with communication in flight (see `distributed.CommTimer`)."""
    flops = objective.flops_per_unit * state.tokens
    out = {f"flops_per_{objective.unit}": objective.flops_per_unit, "train_flops": flops, "train_s": state.train_s,
           "mfu": flops / (state.train_s * peak * par.world_size) if peak and state.train_s else None,
           "peak_flops_per_process": peak or None, "peak_source": peak_source or None,
           "world_size": par.world_size, "strategy": par.strategy}
    if par.world_size > 1:
        out.update(comm_s=state.comm_s, comm_share=state.comm_s / state.train_s if state.train_s else None)
    return out


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    summary["checkpoint"] = str(resolve_checkpoint(run_dir))
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary


class _NoLog:
    """What ranks other than 0 log to: nothing (metrics are written once)."""

    def log(self, step: int, **metrics: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _write_config(run_dir: Path, spec: RunSpec) -> None:
    import yaml

    atomic_write_text(run_dir / RUN_CONFIG, "# the resolved config of this run: `plinth ... --config config.yaml` "
                      "reproduces it\n" + yaml.safe_dump(spec.config, sort_keys=False))


def _stop_non_finite(log: MetricsLog | _NoLog, run_dir: Path, state: _State, quantity: str, rc: RunConfig,
                     par: Parallel) -> None:
    log.close()
    last = latest_verified_checkpoint(run_dir) if par.is_main else None
    if par.is_main:
        atomic_write_json(run_dir / SUMMARY, {"status": f"stopped: {quantity} not finite", "steps": state.step,
                                              "tokens": state.tokens, "wall_s": state.elapsed_s,
                                              "checkpoint": str(last) if last else None, "signal": None})
    raise PlinthError(f"the {quantity} was not finite for {state.bad_steps} steps in a row (steps "
                      f"{state.streak_start}-{state.step}); stopped. Last checkpoint, from before them: "
                      f"{last or 'none'}. Lower --optim.lr or check the data")
