"""The pretraining loop: golden loss curve, exact resume after SIGKILL, non-finite steps, checkpoint integrity."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from plinth.artifacts import list_checkpoints, resolve_checkpoint
from plinth.common import PlinthError
from plinth.config import DataConfig, OptimConfig, PretrainConfig, RunConfig, SystemConfig, field_names
from plinth.training import lm as lm_loop
from plinth.training import run as run_loop
from plinth.training.lm import pretrain


def tiny_config(tiny_data, out_dir, **opts) -> PretrainConfig:
    """The test preset on the tiny corpus; keyword options go to whichever section (optim, run, system) owns them."""
    values = dict(out_dir=str(out_dir), max_steps=8, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=4,
                  eval_batches=2, ckpt_every=2, log_every=1, progress=False, device="cpu", precision="fp32", seed=7)
    values.update(opts)
    sections = {cls: {k: v for k, v in values.items() if k in field_names(cls)}
                for cls in (OptimConfig, RunConfig, SystemConfig)}
    unknown = set(values) - {k for part in sections.values() for k in part}
    assert not unknown, unknown
    return PretrainConfig(model="test", arch={"seq_len": 32},
                          data=DataConfig(shards=str(tiny_data["shards"]), tokenizer=str(tiny_data["tokenizer"])),
                          optim=OptimConfig(**sections[OptimConfig]), run=RunConfig(**sections[RunConfig]),
                          system=SystemConfig(**sections[SystemConfig]))


def step_losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# Pinned from a run of this exact config; a change here means the loop, model init, data order or tokenizer changed.
GOLDEN_4_STEPS = [5.727314, 5.155011, 4.513610, 3.744454]


def test_golden_four_step_loss_curve(tiny_data, tmp_path):
    summary = pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, ckpt_every=0, eval_every=0))
    losses = step_losses(tmp_path / "run")
    assert losses == pytest.approx(GOLDEN_4_STEPS, abs=2e-4), losses
    assert summary["steps"] == 4 and summary["status"] == "completed"
    assert (tmp_path / "run" / "tb").is_dir() and any((tmp_path / "run" / "tb").iterdir())


def test_run_folder_is_self_describing(tiny_data, tmp_path):
    started = time.perf_counter()
    summary = pretrain(tiny_config(tiny_data, tmp_path / "run", keep_checkpoints=2))
    assert 0 < summary["wall_s"] <= time.perf_counter() - started
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step_00000006", "step_00000008"]  # keeps the newest two
    files = {p.name for p in ckpts[-1].iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "run.json",
            "manifest.json"} <= files
    run = json.loads((ckpts[-1] / "run.json").read_text())
    assert run["step"] == 8 and run["data"]["batch_index"] == 8
    assert "val_loss" in summary and summary["val_bpb"] > 0
    assert summary["train_flops"] > 0


def test_rerun_resumes_instead_of_restarting(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4))
    summary = pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=6))
    assert summary["steps"] == 6
    assert len(step_losses(tmp_path / "run")) == 6


def _write_yaml(cfg: PretrainConfig, path: Path) -> Path:
    import dataclasses

    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    return path


def _run_cli(config_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "plinth.cli.main", "pretrain", "--config", str(config_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Return once the run has logged `step` (or the process ended); fail loudly if neither happens in `timeout` s
    (generous: a loaded 2-core machine needs a minute or more to start torch and reach step 3)."""
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if lines and any(json.loads(x).get("step", 0) >= step for x in lines[-3:] if x.endswith("}")):
                return
        time.sleep(0.002)
    if proc.poll() is None:
        proc.kill()
        pytest.fail(f"the run did not reach step {step} within {timeout:.0f} s")


def test_sigkill_at_random_steps_resumes_bitwise(tiny_data, tmp_path):
    steps = 40
    ref_cfg = _write_yaml(tiny_config(tiny_data, tmp_path / "ref", max_steps=steps, ckpt_every=3), tmp_path / "r.yaml")
    ref = _run_cli(ref_cfg)
    assert ref.wait(600) == 0, ref.stderr.read().decode()

    cfg = _write_yaml(tiny_config(tiny_data, tmp_path / "killed", max_steps=steps, ckpt_every=3), tmp_path / "k.yaml")
    rng = random.Random(1234)
    kills = 0
    for target in sorted(rng.sample(range(4, steps - 4), 3)):
        proc = _run_cli(cfg)
        _wait_for_step(tmp_path / "killed", target, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(600)
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    final = _run_cli(cfg)
    assert final.wait(600) == 0, final.stderr.read().decode()

    assert step_losses(tmp_path / "killed") == step_losses(tmp_path / "ref")  # bitwise: floats compare exactly
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "killed") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_checkpoint_write_keeps_previous(tiny_data, tmp_path):
    cfg = _write_yaml(tiny_config(tiny_data, tmp_path / "run", max_steps=6), tmp_path / "c.yaml")
    # Die (as SIGKILL would: no cleanup) in the middle of writing the second checkpoint.
    script = (
        "import os, sys\n"
        "import plinth.artifacts as ck\n"
        "real = ck.write_manifest\n"
        "calls = []\n"
        "def dying(folder, **kw):\n"
        "    calls.append(folder)\n"
        "    if len(calls) == 2: os._exit(9)\n"
        "    return real(folder, **kw)\n"
        "ck.write_manifest = dying\n"
        "from plinth.cli.main import main\n"
        f"sys.exit(main(['pretrain', '--config', {str(cfg)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
    assert proc.returncode == 9
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step_00000002"]
    import plinth

    assert plinth.load(tmp_path / "run").generate("the", max_new_tokens=3, temperature=0) is not None
    summary = pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=6))
    assert summary["steps"] == 6


def test_sigterm_saves_and_exits_cleanly(tiny_data, tmp_path):
    cfg = _write_yaml(tiny_config(tiny_data, tmp_path / "run", max_steps=100000, ckpt_every=0), tmp_path / "t.yaml")
    proc = _run_cli(cfg)
    _wait_for_step(tmp_path / "run", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(600) == 128 + signal.SIGTERM
    assert b"Traceback" not in proc.stderr.read()
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert json.loads((ckpt / "run.json").read_text())["step"] >= 3


def test_non_finite_losses_skip_then_stop(tiny_data, tmp_path, monkeypatch):
    real = lm_loop.lm_loss
    calls = {"n": 0}

    def sometimes_nan(model, batch):
        calls["n"] += 1
        loss, count, metrics = real(model, batch)
        return (loss * float("nan") if calls["n"] in (3,) or calls["n"] >= 6 else loss), count, metrics

    monkeypatch.setattr(lm_loop, "lm_loss", sometimes_nan)
    with pytest.raises(PlinthError, match="loss was not finite for 3 steps in a row"):
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=20, max_bad_steps=3, ckpt_every=4))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [3, 6, 7, 8]
    # The last good checkpoint is intact and holds finite weights.
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_00000004"
    weights = load_file(ckpt / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_tampered_checkpoint_is_refused_naming_the_file(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))
    ckpt = resolve_checkpoint(tmp_path / "run")
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    import plinth

    with pytest.raises(PlinthError, match="model.safetensors: sha256 does not match"):
        plinth.load(ckpt)
    with pytest.raises(PlinthError, match="model.safetensors: sha256 does not match"):
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, resume=str(ckpt)))


def test_mismatched_model_settings_on_resume(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=4)
    cfg.arch["n_layer"] = 3
    with pytest.raises(PlinthError, match="different model config"):
        pretrain(cfg)


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_data, tmp_path):
    """torch.compile takes ~1 min on 2 CPU cores, hence opt-in (`pytest -m slow`)."""
    eager = pretrain(tiny_config(tiny_data, tmp_path / "eager", max_steps=3, ckpt_every=0, eval_every=0))
    compiled = pretrain(tiny_config(tiny_data, tmp_path / "compiled", max_steps=3, ckpt_every=0, eval_every=0,
                                    compile="on"))
    assert step_losses(tmp_path / "compiled") == pytest.approx(step_losses(tmp_path / "eager"), abs=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-3)


def test_time_limit_drives_the_schedule():
    from types import SimpleNamespace

    tc = SimpleNamespace(max_minutes=10.0, max_steps=1000)
    assert run_loop.schedule_step(100, tc, elapsed_s=0) == 100
    assert run_loop.schedule_step(100, tc, elapsed_s=300) == 500  # half the time gone: half-way down the cosine
    assert run_loop.schedule_step(100, tc, elapsed_s=9999) == 1000
    assert run_loop.schedule_step(100, SimpleNamespace(max_minutes=0, max_steps=1000), elapsed_s=300) == 100
