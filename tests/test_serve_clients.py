"""Real clients against a real server on 127.0.0.1: the official `openai` package, lm-eval's `local-completions`
backend, `plinth chat --server`, a schema-driven fuzz run (schemathesis), and `plinth serve` as a process that
drains in-flight requests on SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from plinth.cli.main import main  # noqa: E402
from tests.lm_builders import bigram_lm, chain, save_lm  # noqa: E402
from tests.serve_helpers import running  # noqa: E402

REPLY = "Rome"
CYCLE = {"a": "b", "b": "c", "c": "a"}


@pytest.fixture(scope="module")
def lm():
    return bigram_lm({**chain(REPLY), **CYCLE}, seq_len=1024)


@pytest.fixture(scope="module")
def srv(lm):
    with running(lm, max_batch=8, api_key="k3y") as s:
        yield s


def test_openai_client(srv):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k3y", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "capital?"}],
                                          temperature=0, seed=1)
    assert chat.choices[0].message.content == REPLY and chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens == len(REPLY)
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "capital?"}],
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.completion_tokens == len(REPLY)
    with_lp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                             temperature=0, logprobs=True, top_logprobs=2)
    content = with_lp.choices[0].logprobs.content
    assert [c.token for c in content] == list(REPLY) and len(content[0].top_logprobs) == 2
    comp = client.completions.create(model="tiny", prompt="ab", max_tokens=4, temperature=0, echo=True, logprobs=1)
    assert comp.choices[0].text == "abcabc" and comp.choices[0].logprobs.token_logprobs[0] is None
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="a", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == "bcabc"
    emb = client.embeddings.create(model="tiny", input=["abc", "Rome"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == lm_width(srv)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="a", max_tokens=5000)
    assert err.value.code == "context_length_exceeded" and err.value.param == "max_tokens"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()


def lm_width(srv) -> int:
    return srv.app.state.server.lm.config.d_model


def test_lm_eval_local_completions_scores_through_the_server(tmp_path):
    """lm-eval's OpenAI-completions backend (echo + logprobs, remote tokenizer) gives the accuracy Plinth's own task
    scoring gives on the same model and task."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from plinth.config import EvalTasksConfig
    from plinth.evaluate.tasks import evaluate_tasks
    from tests.test_lm_eval import lm as lm_fixture
    from tests.test_lm_eval import task as task_fixture

    task = task_fixture.__wrapped__(_Factory(tmp_path))
    model = lm_fixture.__wrapped__()
    ours = evaluate_tasks(EvalTasksConfig(model="-", tasks=[str(task / "task.jsonl")], shots=[0],
                                          out=str(tmp_path / "o"), progress=False), lm=model)["results"][0]
    with running(model, max_batch=8) as s:
        # the class itself, not the name "local-completions": lm-eval's name registry depends on import order
        backend = LocalCompletionsAPI(base_url=f"{s.url}/v1/completions", model="tiny", tokenizer_backend="remote",
                                      num_concurrent=4, max_retries=1)
        result = lm_eval.simple_evaluate(model=backend, tasks=["plinth_local"], num_fewshot=0,
                                         task_manager=TaskManager(include_path=str(task / "yaml")))
    theirs = result["results"]["plinth_local"]
    assert theirs["acc,none"] == pytest.approx(ours["acc"]) and 0 < ours["acc"] < 1
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])


class _Factory:
    """Stands in for pytest's tmp_path_factory when a module fixture is called directly."""

    def __init__(self, root) -> None:
        self.root = root

    def mktemp(self, name: str):
        path = self.root / name
        path.mkdir()
        return path


def test_chat_with_a_server(srv, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"capital?\nagain\n/save {tmp_path / 'c.json'}\n/quit\n"))
    assert main(["chat", "--server", srv.url, "--api_key", "k3y", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == f"{REPLY}\n{REPLY}\n"
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [m["content"] for m in saved["messages"]] == ["capital?", REPLY, "again", REPLY]
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", "--server", srv.url, "--api_key", "nope"]) == 2
    assert "401" in capsys.readouterr().err
    assert main(["chat", "--server", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the server" in capsys.readouterr().err


def test_schema_driven_fuzz_finds_no_server_error(lm, tmp_path):
    """schemathesis on the server's own OpenAPI document, bounded in examples and time: no 5xx, no hang."""
    pytest.importorskip("schemathesis")
    st = os.path.join(os.path.dirname(sys.executable), "st")
    with running(lm, max_batch=4, timeout=20) as s:
        proc = subprocess.run([st, "run", f"{s.url}/openapi.json", "--checks", "not_a_server_error", "-n", "15",
                               "--max-time", "20", "--request-timeout", "20", "--generation-deterministic",
                               "--phases", "coverage,fuzzing", "--no-color"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout.lower().replace("0 failed", "")
        s.wait_idle(timeout=25)


def test_serve_command_drains_on_sigterm(lm, tmp_path):
    """`plinth serve` in its own process: a stream in flight when SIGTERM arrives runs to its end, then the process
    exits 0 and the port is closed."""
    folder = save_lm(lm, tmp_path / "model")
    env = {**os.environ, "PLINTH_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "plinth", "serve", str(folder), "--port", "0", "--name", "tiny"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        while line and "serving" not in line:
            line = proc.stderr.readline()
        assert "serving 'tiny' at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split("/v1")[0]
        body = {"model": "tiny", "prompt": "a", "max_tokens": 400, "temperature": 0, "stream": True}
        text = ""
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for raw in lines:
                if raw.startswith("data: {"):
                    text += json.loads(raw[6:])["choices"][0]["text"]
                    break
            proc.send_signal(signal.SIGTERM)
            finish = None
            for raw in lines:
                if raw.startswith("data: {"):
                    choice = json.loads(raw[6:])["choices"][0]
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
                elif raw == "data: [DONE]":
                    break
        assert len(text) == 400 and text.startswith("bcabc") and finish == "length"
        assert proc.wait(timeout=30) == 0
        assert "server stopped" in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    assert main(["serve", "x", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
