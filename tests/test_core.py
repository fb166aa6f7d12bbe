"""The core's seams (families, the shared run, init_from, reproducible config) and one regression test per fault of
the spine found by trying it as a new user (issue 5, faults 1-13)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import plinth
from plinth.artifacts import RunLock, list_checkpoints, resolve_checkpoint, write_manifest
from plinth.cli.args import parse
from plinth.cli.main import main
from plinth.common import PlinthError, PlinthWarning
from plinth.config import PrepareConfig, PretrainConfig, TokenizeConfig
from plinth.data.prepare import prepare
from plinth.data.shards import write_shards
from plinth.training import run as run_loop
from plinth.training.lm import pretrain
from tests.test_training import step_losses, tiny_config

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# ----------------------------------------------------------------------------------------------------------------------
# Seams


def test_a_second_objective_in_one_file_trains_and_resumes_bit_for_bit(tiny_data, tmp_path):
    src = REPO / "tests" / "objectives" / "prompt_masked_lm.py"
    assert len(src.read_text().splitlines()) < 100
    args = [sys.executable, "-m", "tests.objectives.prompt_masked_lm", str(tiny_data["shards"]),
            str(tiny_data["tokenizer"])]
    ref = subprocess.run([*args, str(tmp_path / "ref"), "24"], env=_env(), cwd=REPO, capture_output=True, timeout=600)
    assert ref.returncode == 0, ref.stderr.decode()[-2000:]
    ref_losses = step_losses(tmp_path / "ref")
    assert len(ref_losses) == 24 and ref_losses[-1] < ref_losses[0]
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["response_tokens"] < 4 * 32 for r in rows if "loss" in r)  # prompts really are masked

    proc = subprocess.Popen([*args, str(tmp_path / "killed"), "24"], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(600)
    assert len(step_losses(tmp_path / "killed")) < 24, "finished before the kill; make the run longer"
    again = subprocess.run([*args, str(tmp_path / "killed"), "24"], env=_env(), cwd=REPO, capture_output=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert step_losses(tmp_path / "killed") == ref_losses  # bitwise
    a = load_file(resolve_checkpoint(tmp_path / "ref") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "killed") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_normalises_by_all_counted_targets():
    """Two micro-batches with different numbers of counted targets give the gradient of their union."""
    from plinth.models import build_model, preset
    from tests.objectives.prompt_masked_lm import IGNORE, masked_lm_loss

    torch.manual_seed(0)
    x = torch.randint(0, 64, (4, 16))
    y = torch.randint(0, 64, (4, 16))
    y[:2, :12] = IGNORE  # first half: 8 counted targets; second half: 32
    deltas = []
    for parts in ([(x, y)], [(x[:2], y[:2]), (x[2:], y[2:])]):
        torch.manual_seed(1)
        model = build_model(preset("test", vocab_size=64, seq_len=16))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        source = type("Source", (), {"next_batch": staticmethod(iter(parts).__next__)})
        objective = run_loop.Objective("t", masked_lm_loss, source())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        r = run_loop.train_step(model, model, opt, objective, len(parts), torch.device("cpu"), "fp32", 0.0)
        assert r.bad is None
        deltas.append({k: model.state_dict()[k] - before[k] for k in before})
    for k in deltas[0]:
        torch.testing.assert_close(deltas[1][k], deltas[0][k], atol=2e-6, rtol=1e-4)


def test_init_from_starts_from_weights_with_a_fresh_optimizer(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "a", max_steps=4, eval_every=0))
    cfg = tiny_config(tiny_data, tmp_path / "b", max_steps=1, lr=1e-12, warmup_steps=0, eval_every=0)
    cfg.init_from = str(tmp_path / "a")
    cfg.model, cfg.arch = "tiny", {"n_layer": 7}  # ignored: the architecture comes from init_from
    summary = pretrain(cfg)
    assert summary["steps"] == 1
    a = load_file(resolve_checkpoint(tmp_path / "a") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    state = torch.load(resolve_checkpoint(tmp_path / "b") / "trainer_state.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}  # a fresh AdamW


def test_resolved_config_yaml_reproduces_the_run(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tiny_data, "run", max_steps=4, eval_every=0)  # a relative out_dir
    pretrain(cfg)
    resolved = parse(PretrainConfig, ["--config", "run/config.yaml"])
    assert resolved.run.out_dir == str(tmp_path / "run") and resolved.optim == cfg.optim
    assert main(["pretrain", "--config", "run/config.yaml", "--run.out_dir", "again"]) == 0
    assert step_losses(tmp_path / "again") == step_losses(tmp_path / "run")


def test_python_dash_m_plinth():
    proc = subprocess.run([sys.executable, "-m", "plinth", "--help"], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0 and "pretrain" in proc.stdout and "torchrun -m plinth" in proc.stdout


def test_family_registry_and_presets():
    from plinth.models import families, find_preset, get_family, make_config

    assert [f.name for f in families()] == ["gpt", "cnn", "vit", "bert", "clip", "captioner",
                                                "text_classifier"]
    fam, kwargs = find_preset("tiny")
    assert fam is get_family("gpt") and kwargs["n_layer"] == 4
    cfg = make_config("tiny", {"n_layer": "6", "tie_embeddings": "false"})  # command-line strings, typed here
    assert cfg.n_layer == 6 and cfg.tie_embeddings is False
    with pytest.raises(PlinthError, match="arch: unknown field 'n_layr' of the gpt family .did you mean 'n_layer'"):
        make_config("tiny", {"n_layr": 3})
    with pytest.raises(PlinthError, match="unknown model preset 'tinny'.*did you mean 'tiny'"):
        make_config("tinny")


# ----------------------------------------------------------------------------------------------------------------------
# Fault 1: a short or empty validation split never loses the run


def _shards_from(inputs: list[str], root: Path, tokenizer: Path, **prep) -> Path:
    prepare(PrepareConfig(inputs=inputs, out=str(root / "prepared"), progress=False, **prep))
    write_shards(TokenizeConfig(input=str(root / "prepared"), tokenizer=str(tokenizer), out=str(root / "shards"),
                                progress=False))
    return root / "shards"


def test_fault1_no_validation_split_still_trains_and_checkpoints(tiny_data, tmp_path):
    shards = _shards_from([str(tiny_data["raw"])], tmp_path, tiny_data["tokenizer"], val_fraction=0.0, max_docs=3)
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=5)
    cfg.data.shards = str(shards)
    with pytest.warns(PlinthWarning, match="no validation tokens"):
        summary = pretrain(cfg)
    assert summary["status"] == "completed" and "val_loss" not in summary
    assert json.loads((resolve_checkpoint(tmp_path / "run") / "run.json").read_text())["step"] == 5


def test_fault1_a_single_text_file_is_split_inside_and_trains(tiny_data, tmp_path):
    one = tmp_path / "book.txt"
    one.write_text("\n".join((tiny_data["raw"] / f"doc_{i:03d}.txt").read_text() for i in range(8)))
    report = prepare(PrepareConfig(inputs=[str(one)], out=str(tmp_path / "prepared"), progress=False))
    assert report["documents"] == {"train": 1, "val": 1} and report["single_document_split"]
    assert 0.05 < report["characters"]["val"] / sum(report["characters"].values()) < 0.2  # ~10%, at a line end
    shards = _shards_from([str(one)], tmp_path, tiny_data["tokenizer"])
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=3)
    cfg.data.shards = str(shards)
    assert pretrain(cfg)["val_loss"] > 0


def test_fault1_validation_shorter_than_a_context_is_scored_as_a_shorter_window(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=2)
    cfg.arch["seq_len"] = 64
    root = tmp_path / "d"
    prepare(PrepareConfig(inputs=[str(tiny_data["raw"])], out=str(root / "prepared"), progress=False))
    (root / "prepared" / "val.jsonl").write_text(json.dumps({"text": "the union"}) + "\n")  # ~10 tokens
    write_shards(TokenizeConfig(input=str(root / "prepared"), tokenizer=str(tiny_data["tokenizer"]),
                                out=str(root / "shards"), progress=False))
    cfg.data.shards = str(root / "shards")
    with pytest.warns(PlinthWarning, match="scored as one shorter window"):
        summary = pretrain(cfg)
    assert summary["val_loss"] > 0 and summary["val_tokens"] < 64


def test_fault1_the_final_checkpoint_is_written_before_the_final_evaluation(tiny_data, tmp_path, monkeypatch):
    def failing_eval(*args, **kwargs):
        raise RuntimeError("evaluation blew up")

    monkeypatch.setattr("plinth.training.lm.score_batches", failing_eval)
    with pytest.raises(RuntimeError, match="blew up"):
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=3, eval_every=0, ckpt_every=0))
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step_00000003"]


# ----------------------------------------------------------------------------------------------------------------------
# Fault 2: a user's mistake is one line and exit 2, before any file is written


@pytest.mark.parametrize("flags,needle", [
    (["--run.log_every", "0"], "'run.log_every' must be >= 1, got 0"),
    (["--optim.lr", "-1"], "'optim.lr' must be > 0, got -1"),
    (["--arch.d_model", "-64"], "arch: field 'd_model' must be >= 1, got -64"),
    (["--system.device", "cuda"], "device 'cuda' is not available"),
    (["--optim.beta2", "1"], "'optim.beta2' must be < 1"),
    (["--run.keep_checkpoints", "1"], "'run.keep_checkpoints' must be >= 2"),
    (["--arch.n_kv_head", "3"], "n_head (4) must be divisible by n_kv_head (3)"),
    (["--optim.lr", "nan"], "'optim.lr' must be a number, got nan"),
    (["--run.eval_batches", "0"], "'run.eval_batches' must be >= 1"),
])
def test_fault2_bad_options_are_one_line_and_write_nothing(tiny_data, tmp_path, capsys, flags, needle):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    argv = ["pretrain", "--model", "test", "--data.shards", str(tiny_data["shards"]), "--data.tokenizer",
            str(tiny_data["tokenizer"]), "--run.out_dir", str(out), "--no-run.progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_fault2_bad_options_of_other_verbs(tmp_path, capsys):
    for argv, needle in ((["generate", "x", "--top_p", "0"], "'sampling.top_p' must be > 0"),
                         (["generate", "x", "--temperature", "-1"], "'sampling.temperature' must be >= 0"),
                         (["data", "prepare", "a", "--val_fraction", "1"], "'val_fraction' must be < 1"),
                         (["tokenizer", "train", "--vocab_size", "10"], "'vocab_size' must be >= 258"),
                         (["evaluate", "x", "--batch_size", "0"], "'batch_size' must be >= 1")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)


# ----------------------------------------------------------------------------------------------------------------------
# Faults 3 and 4: messages that blame the right thing; settings that cannot take effect are capped, and say so


def test_fault3_generation_defaults_work_on_a_short_context(tiny_data, tmp_path, capsys):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))  # context 32 < the default 100 new tokens
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompts", "the people " * 40, "--max_new_tokens", "0"]) == 0
    assert main(["generate", str(tmp_path / "run"), "--prompts", "the"]) == 0
    out = capsys.readouterr()
    assert out.err.count("warning:") == 2 and "max_new_tokens" not in out.err.split("warning:")[1]


def test_fault4_warmup_longer_than_the_run_is_capped(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=5, warmup_steps=50, lr=1e-2, min_lr_ratio=0.1)
    with pytest.warns(PlinthWarning, match=r"warmup_steps \(50\).*using 2"):
        pretrain(cfg)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if "lr" in json.loads(x)]
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 0.5e-2  # reaches the peak, then decays


# ----------------------------------------------------------------------------------------------------------------------
# Faults 5 and 6: a rerun changes nothing; paths resolve from anywhere


def test_fault5_rerunning_a_finished_run_reports_it_and_changes_nothing(tiny_data, tmp_path, capsys):
    first = pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4))
    before = _snapshot(tmp_path / "run")
    again = pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4))
    assert again == json.loads(json.dumps(first)) and "val_loss" in again
    assert _snapshot(tmp_path / "run") == before
    assert "already finished at step 4" in capsys.readouterr().out


def test_fault6_a_run_works_from_any_directory_and_after_moving_with_its_data(tiny_data, tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(tiny_data["shards"], root / "data" / "shards")
    shutil.copy(tiny_data["tokenizer"], root / "data" / "tokenizer.json")
    monkeypatch.chdir(root)
    cfg = tiny_config(tiny_data, "runs/r", max_steps=2)
    cfg.data.shards, cfg.data.tokenizer = "data/shards", "data/tokenizer.json"
    pretrain(cfg)
    proc = subprocess.run([sys.executable, "-m", "plinth", "evaluate", str(root / "runs" / "r")], cwd="/",
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and '"bpb"' in proc.stdout, proc.stderr
    monkeypatch.chdir(tmp_path)
    root.rename(tmp_path / "moved")
    assert plinth.evaluate(tmp_path / "moved" / "runs" / "r")["tokens"] > 0  # found through the run-relative path


# ----------------------------------------------------------------------------------------------------------------------
# Fault 8: progress in a log, not only on a terminal


def test_fault8_plain_progress_lines_when_not_a_terminal(tiny_data, tmp_path):
    import yaml

    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=30, progress=True, progress_seconds=0.05, eval_every=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plinth.config.to_dict(cfg)))
    proc = subprocess.run([sys.executable, "-m", "plinth", "pretrain", "--config", str(tmp_path / "c.yaml")],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("pretrain ")]
    assert len(lines) >= 3
    assert all(" step/s" in x and "elapsed" in x and "eta" in x for x in lines[:-1])
    assert "loss" in lines[-2] and "tok/s" in lines[-2]
    assert "30/30" in lines[-1] and "completed" in lines[-1] and "eta" not in lines[-1]  # no stale ETA at the end


# ----------------------------------------------------------------------------------------------------------------------
# Fault 9: damaged run state is one line naming the file; the previous checkpoint stays valid


def _damage(ckpt: Path, name: str, data: bytes) -> None:
    (ckpt / name).write_bytes(data)
    write_manifest(ckpt, step=int(ckpt.name.split("_")[1]))  # a consistent manifest: the damage is in the content


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name,make,needle", [
    ("trainer_state.pt", lambda p: torch.save({"x": _Evil()}, p), "not a readable trainer state"),
    ("trainer_state.pt", lambda p: torch.save({"x": torch.zeros(1)}, p), "lacks 'optimizer'/'rng'"),
    ("trainer_state.pt", lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable trainer state"),
    ("run.json", lambda p: p.write_text("{not json"), "run state is not valid JSON"),
    ("run.json", lambda p: p.write_text('{"step": 2}'), "run state lacks 'tokens', 'elapsed_s', 'data'"),
    ("config.json", lambda p: p.write_text(p.read_text().replace('"d_model": 64', '"d_model": 64.0')),
     "config.json: field 'd_model': expects an integer, got 64.0"),
])
def test_fault9_damaged_checkpoint_files_are_one_line(tiny_data, tmp_path, capsys, name, make, needle):
    import yaml

    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=2, ckpt_every=0, eval_every=0)
    pretrain(cfg)
    ckpt = resolve_checkpoint(tmp_path / "run")
    path = ckpt / name
    make(path)
    _damage(ckpt, name, path.read_bytes())
    cfg.run.max_steps = 4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plinth.config.to_dict(cfg)))
    capsys.readouterr()
    assert main(["pretrain", "--config", str(tmp_path / "c.yaml")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("plinth: warning:")]
    assert len(err) == 1 and needle in err[0] and str(path) in err[0] and "pwned" not in err[0], err


def test_fault9_disk_full_while_checkpointing_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2, ckpt_every=0, eval_every=0))
    real = torch.save

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(PlinthError, match=r"step_00000004: could not write the checkpoint \(disk full\); the "
                                          r"previous checkpoint \(step_00000002\) is intact"):
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, ckpt_every=0, eval_every=0))
    monkeypatch.setattr(torch, "save", real)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, ckpt_every=0))["steps"] == 4


# ----------------------------------------------------------------------------------------------------------------------
# Fault 10: a non-finite streak names the right quantity and never produces a checkpoint


def test_fault10_diverging_run_names_the_gradient_and_the_checkpoint_before_the_streak(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=40, lr=1e6, warmup_steps=0, ckpt_every=1,
                      eval_every=0, max_bad_steps=3, keep_checkpoints=100)
    with pytest.raises(PlinthError) as err:
        pretrain(cfg)
    msg = str(err.value)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("skipped")]
    assert len(skipped) == 3 and len([r for r in rows if r["step"] == skipped[0]["step"]]) == 1  # logged once
    streak_start = skipped[0]["step"]
    assert f"steps {streak_start}-{streak_start + 2}" in msg
    quantity = skipped[0]["nonfinite"]
    assert f"the {quantity} was not finite" in msg
    if quantity == "gradient norm":
        assert skipped[0]["loss"] is not None  # the loss itself was finite
    steps = [int(c.name.split("_")[1]) for c in list_checkpoints(tmp_path / "run")]
    assert steps and max(steps) < streak_start  # never a checkpoint inside the streak
    assert f"step_{max(steps):08d}" in msg
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == f"stopped: {quantity} not finite"


# ----------------------------------------------------------------------------------------------------------------------
# Faults 11 and 12: one process per run folder; no leftovers; the umask decides permissions


def test_fault11_a_second_run_on_the_same_folder_is_refused_naming_the_holder(tiny_data, tmp_path):
    with RunLock(tmp_path / "run"), pytest.raises(PlinthError, match=rf"another Plinth process \(pid {os.getpid()}\)"):
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))
    assert pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2))["steps"] == 2  # released


def test_fault11_between_processes(tiny_data, tmp_path):
    import yaml

    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=100000, ckpt_every=0, eval_every=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plinth.config.to_dict(cfg)))
    cmd = [sys.executable, "-m", "plinth", "pretrain", "--config", str(tmp_path / "c.yaml")]
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "run" / "metrics.jsonl").exists():
            time.sleep(0.05)
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert second.returncode == 2 and f"(pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(600)


def test_fault12_leftover_temp_folders_are_removed_and_the_umask_is_respected(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2, ckpt_every=0))
    leftover = tmp_path / "run" / "checkpoints" / ".step_00000004.abc123.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    old = os.umask(0o022)
    try:
        pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, ckpt_every=0))
    finally:
        os.umask(old)
    assert not leftover.exists()
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert oct(ckpt.stat().st_mode & 0o777) == oct(0o755)
    assert {oct(p.stat().st_mode & 0o777) for p in ckpt.iterdir()} == {oct(0o644)}
    old = os.umask(0o077)
    try:
        prepare(PrepareConfig(inputs=[str(tiny_data["raw"])], out=str(tmp_path / "private"), progress=False))
    finally:
        os.umask(old)
    assert oct((tmp_path / "private").stat().st_mode & 0o777) == oct(0o700)
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "private").iterdir()} == {oct(0o600)}


# ----------------------------------------------------------------------------------------------------------------------
# Fault 13: bits per byte is defined in the docs exactly as computed


def test_fault13_bits_per_byte_is_documented():
    doc = (REPO / "docs" / "metrics.md").read_text()
    assert "bits per byte" in doc and "ln 2" in doc and "UTF-8" in doc and "special" in doc
    assert "docs/metrics.md" in (REPO / "README.md").read_text()


def test_compile_auto_decides_after_timing_the_first_steps(monkeypatch):
    from types import SimpleNamespace

    from plinth.config import RunConfig, SystemConfig, apply_mapping
    from plinth.training import run as r

    monkeypatch.setattr(torch, "compile", lambda m: SimpleNamespace(compiled=m))
    model = torch.nn.Linear(2, 2)
    short, long = r._Compile(model, "auto", None), r._Compile(model, "auto", None)
    for step in (1, 2, 3):
        short.after_step(step, 0.5, RunConfig(max_steps=100), elapsed_s=step * 0.5)  # ~50 s left: not worth it
        long.after_step(step, 0.5, RunConfig(max_steps=10_000), elapsed_s=step * 0.5)  # ~83 min left
    assert short.decided is False and short.fwd is model
    assert long.decided is True and long.fwd.compiled is model
    capped = r._Compile(model, "auto", None)
    for step in (1, 2, 3):
        capped.after_step(step, 0.5, RunConfig(max_steps=10_000, max_minutes=1), elapsed_s=step * 0.5)
    assert capped.decided is False  # the time limit leaves under 2 minutes
    assert r._Compile(model, "auto", True).fwd.compiled is model  # a resumed run keeps the stored decision
    assert r._Compile(model, "off", True).fwd is model and r._Compile(model, "on", None).decided is True
    assert parse(PretrainConfig, ["--system.compile", "off"]).system.compile == "off"
    sc = SystemConfig()
    apply_mapping(sc, {"compile": False}, "config.yaml")  # YAML reads `compile: off` as a boolean
    assert sc.compile == "off"


def test_compile_auto_decision_is_stored_in_checkpoints(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, eval_every=0))
    assert json.loads((resolve_checkpoint(tmp_path / "run") / "run.json").read_text())["compiled"] is False


def test_progress_plain_and_live():
    import io

    from plinth.common import Progress

    out = io.StringIO()
    with Progress("prepare", total=4e6, unit="B", interval=0.0, stream=out) as bar:
        bar.update(advance=1e6, info="1/4 files")
        time.sleep(0.01)
        bar.update(advance=1e6, info="2/4 files")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("prepare 1.0 MB/4.0 MB (25%) | 1/4 files |") and "MB/s" in lines[0] and "eta" in lines[0]
    live = io.StringIO()
    with Progress("pretrain", total=10, stream=live, live=True) as bar:
        bar.update(completed=5, info="loss 3.2")
    assert "pretrain" in live.getvalue() and "5/10" in live.getvalue()
    quiet = io.StringIO()
    with Progress("x", total=10, stream=quiet, enabled=False) as bar:
        bar.update(completed=10)
    assert quiet.getvalue() == ""


def test_a_damaged_newest_checkpoint_is_skipped_everywhere_with_a_warning(tiny_data, tmp_path, capsys):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=4, ckpt_every=2, eval_every=0))
    newest = resolve_checkpoint(tmp_path / "run")
    assert newest.name == "step_00000004"
    with open(newest / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.warns(PlinthWarning, match="skipping damaged checkpoint.*step_00000004"):
        lm = plinth.load(tmp_path / "run")
    assert lm.path.name == "step_00000002"
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompts", "the", "--max_new_tokens", "3"]) == 0
    assert "warning: skipping damaged checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--max_tokens", "200"]) == 0
    assert "warning: skipping damaged checkpoint" in capsys.readouterr().err


def test_a_newer_format_is_refused_with_a_clear_error(tiny_data, tmp_path):
    pretrain(tiny_config(tiny_data, tmp_path / "run", max_steps=2, eval_every=0))
    ckpt = resolve_checkpoint(tmp_path / "run")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(PlinthError, match="format_version 99 is newer than this Plinth reads .1.; upgrade plinth"):
        plinth.load(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "format_version": 7}))
    from plinth.models.io import read_model_config

    with pytest.raises(PlinthError, match="config.json: format_version 7 is newer"):
        read_model_config(ckpt)
