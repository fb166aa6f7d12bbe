"""Training on several processes: torchrun + gloo on CPU, through `plinth pretrain --nproc 2`.

The gates: two processes follow the one-process loss curve (same global batch, fp32) within 1e-5 for DDP and for
FSDP2; a checkpoint written by two processes resumes on one and vice versa on the same curve; SIGKILL of one rank
leaves the last committed checkpoint, from which the same command resumes; SIGTERM to one rank stops every rank at
the same step with a checkpoint.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from plinth.artifacts import latest_verified_checkpoint, list_checkpoints, verify_manifest
from plinth.training.checkpoint import is_sharded

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend")

STEPS = 8
TOL = 1e-5


def _args(tiny_data, out: Path, steps: int = STEPS, **opts) -> list[str]:
    """`plinth pretrain` on the tiny corpus: the same settings as tests/test_training.py's golden curve."""
    values = {"run.max_steps": steps, "run.eval_every": 4, "run.eval_batches": 2, "run.ckpt_every": 2,
              "run.keep_checkpoints": 10, "run.log_every": 1, "optim.batch_size": 4, "optim.lr": 1e-2,
              "optim.warmup_steps": 2, "system.device": "cpu", "system.precision": "fp32", "system.seed": 7,
              "arch.seq_len": 32, **opts}
    argv = ["pretrain", "--model", "test", "--data.shards", str(tiny_data["shards"]), "--data.tokenizer",
            str(tiny_data["tokenizer"]), "--run.out_dir", str(out), "--no-run.progress", "--system.compile", "off"]
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return argv


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _plinth(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plinth", *argv], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in _rows(run) if key in r]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= TOL


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """The one-process reference and the two-process runs (DDP, FSDP2) of the same config, made once."""
    root = tmp_path_factory.mktemp("dist")
    made = {"one": root / "one", "ddp": root / "ddp", "fsdp": root / "fsdp"}
    _ok(_plinth(_args(tiny_data, made["one"])))
    for strategy in ("ddp", "fsdp"):
        _ok(_plinth([*_args(tiny_data, made[strategy]), "--nproc", "2", "--strategy", strategy]))
    return made


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_curve(runs, strategy):
    one, two = runs["one"], runs[strategy]
    assert len(_losses(one)) == STEPS
    assert _close(_losses(two), _losses(one)), (_losses(two), _losses(one))
    assert _close(_losses(two, "val_loss"), _losses(one, "val_loss"))
    # Written once: one row per step (plus evaluations), not one per process.
    assert len([r for r in _rows(two) if "loss" in r]) == STEPS
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == strategy and summary["steps"] == STEPS
    assert 0 < summary["comm_share"] < 1 and summary["comm_s"] > 0
    assert summary["train_flops"] == summary["flops_per_tok"] * summary["tokens"] > 0
    assert 0 < summary["mfu"] < 1
    assert all("comm_share" in r for r in _rows(two) if "loss" in r)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sharded_checkpoint_is_committed_verified_and_loadable(runs, strategy):
    import plinth

    ckpt = latest_verified_checkpoint(runs[strategy])
    assert is_sharded(ckpt) and not (ckpt / "trainer_state.pt").exists()
    manifest = verify_manifest(ckpt)
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "model.safetensors", "rng.pt"} <= set(manifest["files"])
    assert json.loads((ckpt / "run.json").read_text())["world_size"] == 2
    x = torch.randint(0, 200, (2, 16))
    a = plinth.load(runs[strategy]).model(x)
    b = plinth.load(runs["one"]).model(x)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def _truncate_to(run: Path, copy: Path, step: int) -> Path:
    """A copy of a finished run folder as if it had stopped right after checkpoint `step`."""
    shutil.copytree(run, copy)
    for ckpt in list_checkpoints(copy):
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    (copy / "summary.json").unlink()
    return copy


# Default suite: 2 -> 1 from FSDP2 shards and 1 -> 2 into FSDP2; the DDP directions are opt-in (`-m slow`) to keep
# the suite's budget (each case starts 2-3 Python processes).
@pytest.mark.parametrize(("source", "nproc", "strategy", "extra"), [
    ("fsdp", 1, "ddp", []), pytest.param("ddp", 1, "ddp", [], marks=pytest.mark.slow),
    pytest.param("one", 2, "ddp", [], marks=pytest.mark.slow),
    ("one", 2, "fsdp", ["--system.activation_checkpointing"]),  # recomputation changes no number
])
def test_resume_on_a_different_number_of_processes(runs, tiny_data, tmp_path, source, nproc, strategy, extra):
    run = _truncate_to(runs[source], tmp_path / "run", 4)
    proc = _ok(_plinth([*_args(tiny_data, run), "--nproc", str(nproc), "--strategy", strategy, *extra]))
    assert "resuming from" in proc.stdout and "(step 4)" in proc.stdout
    assert _close(_losses(run), _losses(runs["one"])), (_losses(run), _losses(runs["one"]))
    assert json.loads((run / "summary.json").read_text())["world_size"] == nproc


def test_activation_checkpointing_changes_no_number(runs, tiny_data, tmp_path):
    from plinth.training.lm import pretrain
    from tests.test_training import tiny_config

    cfg = tiny_config(tiny_data, tmp_path / "ac", max_steps=STEPS, eval_every=4, ckpt_every=0)
    cfg.system.activation_checkpointing = True
    pretrain(cfg)
    assert _losses(tmp_path / "ac") == pytest.approx(_losses(runs["one"]), abs=1e-6)


@pytest.mark.slow  # the default suite runs FSDP2 in bf16 in the SIGTERM test below
def test_fsdp_mixed_precision_stays_near_the_fp32_curve(runs, tiny_data, tmp_path):
    run = tmp_path / "bf16"
    _ok(_plinth([*_args(tiny_data, run, **{"system.precision": "bf16"}), "--nproc", "2", "--strategy", "fsdp"]))
    bf16, fp32 = _losses(run), _losses(runs["one"])
    assert len(bf16) == STEPS and max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.05, (bf16, fp32)
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"


def test_batch_must_split_evenly_over_processes(tiny_data, tmp_path):
    proc = _plinth([*_args(tiny_data, tmp_path / "run"), "--nproc", "2", "--optim.batch_size", "3"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("plinth: error: optim.batch_size (3) must be a multiple")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Signals and kills


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "plinth", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            done = [json.loads(x)["step"] for x in metrics.read_text().splitlines()[-2:] if x.endswith("}")]
            if done and max(done) >= step:
                return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {step}: {proc.poll()}")


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started under the launcher."""
    kids = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in kids:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = int(pid)
    return ranks


LONG = 60


def _long_args(tiny_data, run: Path) -> list[str]:
    return [*_args(tiny_data, run, steps=LONG, **{"run.ckpt_every": 5, "run.eval_every": 0}), "--nproc", "2"]


@pytest.fixture(scope="module")
def long_reference(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted two-process run (over 60 steps the fp32 rounding of 1 vs 2 processes grows past 1e-5)."""
    run = tmp_path_factory.mktemp("long") / "two"
    _ok(_plinth(_long_args(tiny_data, run)))
    return run


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_sigkill_one_rank_then_rerun_resumes_from_the_last_checkpoint(tiny_data, tmp_path, long_reference):
    run = tmp_path / "run"
    argv = _long_args(tiny_data, run)
    launcher = _start(argv)
    _wait_for_step(run, 12, launcher)
    os.kill(_workers(launcher)[1], signal.SIGKILL)
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode != 0 and "Traceback" not in err
    assert "process rank 1 of 2 was killed by SIGKILL" in err.strip().splitlines()[-1]
    last = latest_verified_checkpoint(run)
    assert last is not None and is_sharded(last)
    step = int(last.name.split("_")[1])
    assert step >= 10
    rerun = _ok(_plinth(argv))
    assert f"(step {step})" in rerun.stdout
    assert _losses(run) == _losses(long_reference)  # the same reductions in the same order: bitwise


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tiny_data, tmp_path):
    run = tmp_path / "run"
    launcher = _start([*_args(tiny_data, run, steps=2000, **{"run.ckpt_every": 1000, "run.eval_every": 0,
                                                             "system.precision": "bf16"}),
                       "--nproc", "2", "--strategy", "fsdp"])
    _wait_for_step(run, 5, launcher)
    os.kill(_workers(launcher)[1], signal.SIGTERM)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped by signal SIGTERM" and json.loads(out[out.index("{"):]) == summary
    last = latest_verified_checkpoint(run)
    assert int(last.name.split("_")[1]) == summary["steps"] < 1000  # saved at the step every rank stopped at
    assert json.loads((last / "run.json").read_text())["world_size"] == 2
    assert summary["precision"] == "bf16" and all(map(math.isfinite, _losses(run)))  # FSDP2 mixed precision
