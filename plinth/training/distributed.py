"""One training run on many processes, through PyTorch's own engine: torchrun, `torch.distributed`, DDP, FSDP2 and
`torch.distributed.checkpoint`.

`training/run.py` talks to a `Parallel` and never asks how many processes there are. `setup()` returns the plain
`Parallel` (one process: every collective is the identity, checkpoints keep the single-file format) or a
`Distributed` one when torchrun started this process (RANK/WORLD_SIZE/MASTER_ADDR in the environment). A
`Distributed` run:

- initialises the process group from torchrun's environment (gloo on CPU, NCCL on GPU, `cuda:LOCAL_RANK`);
- replicates the model with DDP, or shards it with FSDP2 (`fully_shard` on every block, then the root);
- gives each rank a disjoint, equal part of every global batch (`batches.shard(rank, world_size)`), so W processes
  follow the loss curve of one process with the same `optim.batch_size`;
- sums the loss, target count and tokens of a step over ranks in one all-reduce, and agrees once per step on the
  elapsed time and on whether any rank was signalled, so every rank takes the same LR and stops at the same step;
- writes sharded checkpoints with `torch.distributed.checkpoint` (plus a consolidated `model.safetensors` for
  `plinth.load`) under the same atomic-rename and manifest rules as single-process ones (`checkpoint.py`);
- times every collective it issues (DDP bucket all-reduces through a comm hook, FSDP2 all-gathers and
  reduce-scatters through its custom-comm interface) for the communication share of the step.

`launch()` is what `--nproc N` runs: torchrun (`torch.distributed.run`, standalone rendezvous) on `python -m plinth`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plinth.artifacts import SUMMARY, locked, read_json
from plinth.common import PlinthError, pick_device
from plinth.config import DistributedConfig

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCHED_ENV = "PLINTH_LAUNCHED"  # set in workers that `launch` started (for `--nproc N`)


def under_torchrun() -> bool:
    """True in a process torchrun started (its rendezvous environment is set)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def launched_by_plinth() -> bool:
    """True in a worker that `plinth ... --nproc N` started: the launcher, not this process, reports the result."""
    return under_torchrun() and os.environ.get(LAUNCHED_ENV) == "1"


# ----------------------------------------------------------------------------------------------------------------------
# Communication timing


class CommTimer:
    """Wall time during which at least one collective was in flight (the union of [issue, completion] intervals).

    Overlap with computation is counted (on a GPU most of DDP's all-reduce hides behind the backward pass), so
    `seconds / step time` is the share of the step with communication under way, an upper bound on what it costs.
    Completion times come from the collective's future, so asynchronous work is timed to when it really finished.
    """

    def __init__(self) -> None:
        self._intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def record(self, start: float, end: float) -> None:
        with self._lock:
            self._intervals.append((start, end))

    def track(self, start: float, work: Any) -> Any:
        """Record `work` (a c10d Work, or None for a finished synchronous call) from `start` until it completes."""
        if work is None:
            self.record(start, time.perf_counter())
        else:
            work.get_future().then(lambda _: self.record(start, time.perf_counter()))
        return work

    def take(self) -> float:
        """Seconds covered by the intervals recorded since the last call (overlapping intervals counted once)."""
        with self._lock:
            intervals, self._intervals = sorted(self._intervals), []
        total, end = 0.0, float("-inf")
        for a, b in intervals:
            if b > end:
                total += b - max(a, end)
                end = b
        return total


# ----------------------------------------------------------------------------------------------------------------------
# Model preparation shared by every strategy


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the elements of its outermost `nn.ModuleList`s (a GPT's decoder layers).

    They are the units of activation checkpointing and of FSDP sharding, for any model family that keeps its blocks
    in a ModuleList (every Plinth family does, as Hugging Face's do).
    """
    found: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)
            else:
                walk(child)

    walk(model)
    return found


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's activations in backward (non-reentrant `torch.utils.checkpoint`); returns how many.

    The block's own `forward` is wrapped on the instance, so parameter names (and checkpoints) do not change.
    """
    from torch.utils.checkpoint import checkpoint

    units = blocks(model)
    for block in units:
        inner = block.forward

        def forward(*args: Any, _inner=inner, **kwargs: Any) -> Any:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return len(units)


# ----------------------------------------------------------------------------------------------------------------------
# One process


class Parallel:
    """A run on one process. `Distributed` overrides each method with its collective version."""

    rank, local_rank, world_size, is_main, strategy = 0, 0, 1, True, "single"
    grad_average = 1  # DDP and FSDP average gradients over ranks; the step then divides by count / grad_average

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.comm = CommTimer()

    def prepare(self, model: nn.Module, activation_checkpointing: bool, precision: str) -> nn.Module:
        """Move the model to this process's device and apply activation checkpointing (and sharding, when many)."""
        model.to(self.device)
        if activation_checkpointing and not apply_activation_checkpointing(model):
            raise PlinthError("system.activation_checkpointing: this model has no blocks in an nn.ModuleList to "
                              "checkpoint")
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module training steps call (DDP's wrapper when replicating)."""
        return model

    def evaluated(self, model: nn.Module) -> None:
        """Call after an evaluation ran forward passes outside the training step (see `Distributed`)."""

    def shard(self, batches: Any) -> Any:
        """Make the batch source yield this rank's part of each global batch."""
        return batches

    def no_sync(self, fwd: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: skip gradient communication unless it is the step's last."""
        return contextlib.nullcontext()

    def reduce_step(self, loss_sum: torch.Tensor, count: torch.Tensor | int, units: int) -> tuple[float, int, int]:
        """Summed loss, target count and units of a step over all ranks (one all-reduce when distributed)."""
        return loss_sum.item(), int(count), units

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        """Clip the global gradient norm to `max_norm` (0 = no clipping); return the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf")))

    def agree(self, elapsed_s: float, signum: int | None) -> tuple[float, int | None]:
        """The elapsed time and stop signal every rank acts on: the largest over ranks (any rank's signal stops all)."""
        return elapsed_s, signum

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects only; for small control messages)."""
        return obj

    def on_main(self, fn: Any) -> Any:
        """Run `fn()` on rank 0 only and hand every rank its result, or its PlinthError (so no rank waits forever)."""
        return fn()

    def locked(self, run_dir: Path) -> contextlib.AbstractContextManager:
        """Hold the run folder's lock (on rank 0: one lock per run, whatever the number of processes)."""
        return locked(run_dir)

    def save(self, run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             run_state: dict[str, Any], assets: dict[str, Path], keep: int) -> None:
        """Write checkpoint `step` (single-file format) atomically."""
        from plinth.training.checkpoint import save_checkpoint

        save_checkpoint(run_dir, step, model, optimizer, run_state, assets, keep)

    def restore(self, ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Load any checkpoint into the live model and optimizer: single-file, or sharded by any number of ranks."""
        from plinth.training.checkpoint import is_sharded, restore_checkpoint, restore_sharded

        if is_sharded(ckpt):
            return restore_sharded(ckpt, model, optimizer, self.rank)
        return restore_checkpoint(ckpt, model, optimizer)

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn a collective failing because another rank died into a one-line PlinthError (no-op on one process)."""
        yield

    def close(self) -> None:
        """Leave the process group (nothing to do on one process)."""


# ----------------------------------------------------------------------------------------------------------------------
# Several processes


class Distributed(Parallel):
    """A run on `world_size` processes started by torchrun; see the module docstring."""

    grad_average = 0  # set in __init__

    def __init__(self, dc: DistributedConfig, device_name: str) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.is_main, self.strategy, self.grad_average = self.rank == 0, dc.strategy, self.world_size
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        backend = dc.backend if dc.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise PlinthError("dist.backend nccl needs GPUs; use gloo (or auto) on CPU")
        super().__init__(device)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=dc.timeout_minutes))
        self._model: nn.Module | None = None

    # -- the model ------------------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, activation_checkpointing: bool, precision: str) -> nn.Module:
        model = super().prepare(model, activation_checkpointing, precision)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # bf16: parameters are gathered in bf16 (half the all-gather traffic), gradients reduced in fp32.
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if precision == "bf16" else MixedPrecisionPolicy()
            units = blocks(model)
            for i, block in enumerate(units):
                # The last block's parameters are needed again at once by backward: keep them gathered.
                fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(units) - 1)
            fully_shard(model, mp_policy=mp)
            self._time_fsdp_comms(model)
        self._model = model
        return model

    def _time_fsdp_comms(self, model: nn.Module) -> None:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

        timer = self.comm

        class TimedAllGather(DefaultAllGather):
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                return timer.track(time.perf_counter(), super().__call__(*args, **kwargs))

        class TimedReduceScatter(DefaultReduceScatter):
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                return timer.track(time.perf_counter(), super().__call__(*args, **kwargs))

        for module in model.modules():
            if hasattr(module, "set_custom_all_gather"):  # every fully_shard-ed module
                module.set_custom_all_gather(TimedAllGather())
                module.set_custom_reduce_scatter(TimedReduceScatter())

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.strategy != "ddp":
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        world, timer, dist = self.world_size, self.comm, self.dist

        def allreduce_mean(_state, bucket):  # noqa: ANN001 - DDP checks these annotations: none, or its own types
            # DDP's default hook (divide by world size, all-reduce), with the collective timed.
            tensor = bucket.buffer().div_(world)
            start = time.perf_counter()
            fut = dist.all_reduce(tensor, async_op=True).get_future()

            def done(f: torch.futures.Future) -> torch.Tensor:
                timer.record(start, time.perf_counter())
                return f.value()[0]

            return fut.then(done)

        ddp.register_comm_hook(None, allreduce_mean)
        return ddp

    def evaluated(self, model: nn.Module) -> None:
        if self.strategy != "fsdp":
            return
        from torch.distributed.fsdp import FSDPModule

        # FSDP2 keeps the root's and the last block's parameters gathered after a forward pass (backward needs them
        # at once). Gathered under evaluation's inference_mode they are inference tensors, and the next training
        # step would reuse them and lose their gradients: free them, so that step gathers afresh.
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def shard(self, batches: Any) -> Any:
        if not hasattr(batches, "shard"):
            raise PlinthError(f"{type(batches).__name__} cannot split its batches across processes (it has no "
                              "`shard(rank, world_size)`); run this objective on one process")
        batches.shard(self.rank, self.world_size)
        return batches

    def no_sync(self, fwd: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        if self.strategy == "ddp":
            return contextlib.nullcontext() if last else fwd.no_sync()
        self._model.set_requires_gradient_sync(last)  # FSDP2: accumulate unsharded gradients until the last
        return contextlib.nullcontext()

    # -- per-step agreement ---------------------------------------------------------------------------------------

    def _all_reduce(self, values: list[float], op: Any) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        self.dist.all_reduce(t, op=op)
        self.comm.record(start, time.perf_counter())
        return t.tolist()

    def reduce_step(self, loss_sum: torch.Tensor, count: torch.Tensor | int, units: int) -> tuple[float, int, int]:
        loss, n, u = self._all_reduce([loss_sum.item(), float(count), float(units)], self.dist.ReduceOp.SUM)
        return loss, int(n), int(u)

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, already reduced over the shards
            norm = norm.full_tensor()
        return float(norm)

    def agree(self, elapsed_s: float, signum: int | None) -> tuple[float, int | None]:
        elapsed_s, sig = self._all_reduce([elapsed_s, float(signum or 0)], self.dist.ReduceOp.MAX)
        return elapsed_s, int(sig) or None

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Any) -> Any:
        if not self.is_main:
            kind, value = self.broadcast(None)
            if kind == "error":
                raise PlinthError(value)
            return value
        try:
            value = fn()
        except PlinthError as e:
            self.broadcast(("error", str(e)))
            raise
        self.broadcast(("ok", value))
        return value

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, as a list on rank 0 (None elsewhere)."""
        out = [None] * self.world_size if self.is_main else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    # -- run folder and checkpoints -------------------------------------------------------------------------------

    def locked(self, run_dir: Path) -> contextlib.AbstractContextManager:
        return locked(run_dir) if self.is_main else contextlib.nullcontext()

    def save(self, run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             run_state: dict[str, Any], assets: dict[str, Path], keep: int) -> None:
        from plinth.training.checkpoint import save_sharded

        save_sharded(self, run_dir, step, model, optimizer, {**run_state, "world_size": self.world_size,
                                                             "strategy": self.strategy}, assets, keep)

    def restore(self, ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from plinth.training.checkpoint import is_sharded, restore_full_into, restore_sharded

        if is_sharded(ckpt):
            return restore_sharded(ckpt, model, optimizer, self.rank)
        return restore_full_into(ckpt, model, optimizer)  # a single-process checkpoint, now on W processes

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:  # a peer died or timed out: gloo/NCCL report it on the survivors
            if not isinstance(e, self.dist.DistError) and not any(w in str(e) for w in _PEER_FAILURE_WORDS):
                raise
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise PlinthError(f"rank {self.rank}: another process of this run stopped or timed out ({first}); "
                              "rerun the same command to resume from the last checkpoint") from None

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


# How gloo and NCCL word a collective that failed because another process died (not always as a DistError: DDP's
# reducer re-raises it as a plain RuntimeError from the backward pass).
_PEER_FAILURE_WORDS = ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out")


def setup(dc: DistributedConfig, device_name: str) -> Parallel:
    """The `Parallel` for this process: `Distributed` under torchrun with more than one process, else one process."""
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        return Distributed(dc, device_name)
    return Parallel(pick_device(device_name))


# ----------------------------------------------------------------------------------------------------------------------
# Launching: `--nproc N`


def requested_world_size(dc: DistributedConfig) -> int:
    """Processes the run will have: torchrun's WORLD_SIZE inside a launched process, else `dist.nproc`."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else dc.nproc


def check_batch_divides(batch_size: int, dc: DistributedConfig) -> None:
    """PlinthError before anything starts if `optim.batch_size` cannot be split evenly over the processes."""
    world = requested_world_size(dc)
    if batch_size % world:
        raise PlinthError(f"optim.batch_size ({batch_size}) must be a multiple of the number of processes ({world}): "
                          "each process takes an equal part of every batch")


def needs_launch(dc: DistributedConfig) -> bool:
    """True when the user asked for several processes and this is not one of them yet."""
    return dc.nproc > 1 and not under_torchrun()


def launch(words: list[str], config: dict[str, Any], nproc: int, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Run `plinth WORDS --config <config>` on `nproc` local processes under torchrun; return the run's summary.

    torchrun (standalone rendezvous on a free local port) starts the workers with OMP_NUM_THREADS=1 unless it is set,
    forwards SIGINT/SIGTERM to them (they checkpoint at the same step and exit) and stops them all when one fails.
    Raises PlinthError (one line) when a worker failed; the worker's own one-line error is printed above it.
    """
    import yaml
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="plinth-launch-", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.5", "-m", "plinth",
                       *words, "--config", f.name])
    print(f"launching {nproc} processes with torchrun (python -m torch.distributed.run --standalone "
          f"--nproc-per-node {nproc} -m plinth {' '.join(words)} ...)", file=sys.stderr, flush=True)
    os.environ[LAUNCHED_ENV] = "1"  # inherited by the workers: the launcher prints the summary, not rank 0 too
    started = time.time()
    try:
        _quiet_torchrun_logs()
        run(args)
    except SignalException as e:  # the launcher itself was signalled; workers were stopped with the same signal
        return _stopped_summary(run_dir, started, e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        what = (f"was killed by {signal.Signals(-code).name}" if code < 0
                else f"exited with code {code} (its message is above)")
        stopped = _stopped_summary(run_dir, started, None)
        if stopped is not None and stopped.get("signal") is not None and code > 128:
            return stopped  # a rank was signalled, and every rank checkpointed and stopped: not a failure
        raise PlinthError(f"process rank {rank} of {nproc} {what}; rerun the same command to resume from the last "
                          "checkpoint") from None
    finally:
        os.unlink(f.name)
        os.environ.pop(LAUNCHED_ENV, None)
    return read_json(Path(run_dir) / SUMMARY, "run summary")


def _stopped_summary(run_dir: str | os.PathLike, started: float, sigval: Any) -> dict[str, Any] | None:
    """The summary the workers wrote in this launch (None if none), with the launcher's signal when it had one."""
    path = Path(run_dir) / SUMMARY
    fresh = path.is_file() and path.stat().st_mtime >= started - 1
    summary = read_json(path, "run summary") if fresh else None
    if sigval is not None:
        summary = dict(summary or {"status": "stopped before the first checkpoint"})
        summary["signal"] = summary.get("signal") or int(sigval)
    return summary


def _quiet_torchrun_logs() -> None:
    import logging

    # torchrun's agent logs every rendezvous step, and each failure, which `launch` reports in one line itself.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
