"""`plinth serve` over real HTTP on 127.0.0.1: every route, OpenAI's formats (the stream byte for byte), bad input as
OpenAI-format 4xx, auth, the bounded queue, disconnects, timeouts, greedy output alone vs in a busy batch."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tests.lm_builders import bigram_lm, chain  # noqa: E402
from tests.serve_helpers import random_lm, running  # noqa: E402

REPLY = "Hi, you!"
CYCLE = {"a": "b", "b": "c", "c": "a"}  # never ends on its own: "abcabc..."


@pytest.fixture(scope="module")
def lm():
    return bigram_lm({**chain(REPLY), **CYCLE}, seq_len=4096)


@pytest.fixture(scope="module")
def srv(lm):
    with running(lm, max_batch=8) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def chat_body(**kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": "hey"}], "temperature": 0, **kw}


def error_of(r, status: int, param=None, code=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_models_and_health(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == "tiny" and data["data"][0]["object"] == "model"
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    error_of(client.get("/v1/models/other"), 404, "model", "model_not_found")
    assert client.get("/health").json()["status"] == "ok"


def test_chat_completion(client):
    r = client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert choice["finish_reason"] == "stop"
    u = out["usage"]
    assert u["completion_tokens"] == len(REPLY) and u["total_tokens"] == u["prompt_tokens"] + len(REPLY)


def test_chat_max_tokens_and_n(client):
    out = client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=3, n=2)).json()
    assert [c["message"]["content"] for c in out["choices"]] == ["Hi,", "Hi,"]
    assert [c["finish_reason"] for c in out["choices"]] == ["length", "length"]
    assert [c["index"] for c in out["choices"]] == [0, 1] and out["usage"]["completion_tokens"] == 6


def test_ignore_eos_runs_to_max_tokens(client):
    out = client.post("/v1/chat/completions", json=chat_body(max_tokens=12, ignore_eos=True)).json()
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 12
    assert out["choices"][0]["message"]["content"].startswith(REPLY)


def test_stream_is_byte_for_byte_openais_format(client):
    r = client.post("/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    first = json.loads(r.text.split("\n\n")[0][len("data: "):])
    head = (f'"id":"{first["id"]}","object":"chat.completion.chunk","created":{first["created"]},'
            f'"model":"tiny","system_fingerprint":"{first["system_fingerprint"]}"')
    prompt = first_usage = None  # filled from the last chunk
    last = json.loads(r.text.split("\n\n")[-3][len("data: "):])
    prompt, first_usage = last["usage"]["prompt_tokens"], last["usage"]
    chunks = ['{' + head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
              '"logprobs":null,"finish_reason":null}],"usage":null}']
    for ch in REPLY:
        chunks.append('{' + head + ',"choices":[{"index":0,"delta":{"content":' + json.dumps(ch) + '},'
                      '"logprobs":null,"finish_reason":null}],"usage":null}')
    chunks.append('{' + head + ',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
                  '"usage":null}')
    chunks.append('{' + head + ',"choices":[],"usage":{"prompt_tokens":' + str(prompt) +
                  f',"completion_tokens":{len(REPLY)},"total_tokens":{prompt + len(REPLY)}' + '}}')
    expected = "".join(f"data: {c}\n\n" for c in chunks) + "data: [DONE]\n\n"
    assert r.content == expected.encode()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", first["id"]) and first_usage["completion_tokens"] == len(REPLY)


def test_stop_strings_across_tokens_never_leak_into_a_stream(client):
    body = chat_body(stop=[", y", "zzz"], stream=True)
    r = client.post("/v1/chat/completions", json=body)
    deltas = [json.loads(line[6:])["choices"][0] for line in r.text.split("\n\n") if line.startswith("data: {")]
    pieces = [d["delta"].get("content", "") for d in deltas]
    assert "".join(pieces) == "Hi" and not any("," in p for p in pieces)
    assert deltas[-1]["finish_reason"] == "stop"
    whole = client.post("/v1/chat/completions", json=chat_body(stop=", y")).json()
    assert whole["choices"][0]["message"]["content"] == "Hi"


def test_completions_echo_and_logprobs(client, lm):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "ab", "max_tokens": 4, "temperature": 0,
                                             "echo": True, "logprobs": 1})
    out = r.json()
    choice = out["choices"][0]
    assert choice["text"] == "abcabc" and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == list("abcabc") and lp["token_logprobs"][0] is None
    assert all(x < 0 for x in lp["token_logprobs"][1:]) and lp["text_offset"] == [0, 1, 2, 3, 4, 5]
    assert lp["top_logprobs"][0] is None and list(lp["top_logprobs"][1]) == ["b"]  # 'b' is what follows 'a'
    assert lp["token_logprobs"][1] == lp["top_logprobs"][1]["b"]  # how lm-eval decides "greedy"
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    # token-id prompts, several prompts, and a stream
    ids = lm.tokenizer.encode("ab")
    out = client.post("/v1/completions", json={"model": "tiny", "prompt": [ids, ids[1:]], "max_tokens": 2,
                                               "temperature": 0}).json()
    assert [c["text"] for c in out["choices"]] == ["ca", "ca"]
    out = client.post("/v1/completions", json={"model": "tiny", "prompt": ["ab", "c"], "max_tokens": 2,
                                               "temperature": 0}).json()
    assert [c["text"] for c in out["choices"]] == ["ca", "ab"]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3, "temperature": 0,
                                             "stream": True})
    texts = [json.loads(x[6:])["choices"][0]["text"] for x in r.text.split("\n\n") if x.startswith("data: {")]
    assert "".join(texts) == "bca" and r.text.endswith("data: [DONE]\n\n")


def test_embeddings(client):
    out = client.post("/v1/embeddings", json={"model": "tiny", "input": ["abc", "Hi"]}).json()
    vecs = [d["embedding"] for d in out["data"]]
    assert len(vecs) == 2 and all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs) and vecs[0] != vecs[1]
    assert out["usage"]["prompt_tokens"] == 5
    b64 = client.post("/v1/embeddings", json={"model": "tiny", "input": "abc", "encoding_format": "base64"}).json()
    assert isinstance(b64["data"][0]["embedding"], str)


def test_metrics(client):
    client.post("/v1/chat/completions", json=chat_body())
    text = client.get("/metrics").text
    for name in ("plinth_requests_total", "plinth_prompt_tokens_total", "plinth_completion_tokens_total",
                 "plinth_time_to_first_token_seconds_bucket", "plinth_inter_token_latency_seconds_bucket",
                 "plinth_queue_depth", "plinth_active_sequences"):
        assert name in text, name
    assert 'plinth_requests_total{route="/v1/chat/completions",status="200"}' in text


@pytest.mark.parametrize("body,status,param", [
    ("{not json", 400, None),
    ('{"model": "tiny"}', 400, "messages"),
    ('{"model": "tiny", "messages": "hi"}', 400, "messages"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', 400, "max_tokens"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400, "temperature"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 0}', 400, "n"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
    ('{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}', 400,
     "tools"),
    ('{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}', 400, "messages"),
    ('[1, 2]', 400, None),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["' + "s" * 300 + '"]}', 400, "stop"),
])
def test_bad_input_is_a_4xx_in_openai_format(client, body, status, param):
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error_of(r, status, param)


def test_bad_completion_and_embedding_input(client):
    error_of(client.post("/v1/completions", json={"model": "tiny", "prompt": [], "max_tokens": 1}), 400, "prompt")
    error_of(client.post("/v1/completions", json={"model": "tiny", "prompt": [[1, 10**9]]}), 400, "prompt")
    error_of(client.post("/v1/completions", json={"model": "tiny", "prompt": "a" * 4097}), 400, "max_tokens",
             "context_length_exceeded")
    error_of(client.post("/v1/embeddings", json={"model": "tiny", "input": ""}), 400, "input")
    error_of(client.get("/v1/nothing"), 404)
    error_of(client.get("/v1/completions"), 405)


def test_greedy_output_alone_equals_output_in_a_busy_batch():
    """Over HTTP, with a random model: one greedy request alone, then the same among 12 concurrent ones."""
    lm = random_lm(seed=5)
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0}
    with running(lm, max_batch=8, prefill_chunk=8) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        alone = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        results: dict[int, str] = {}

        def one(i: int) -> None:
            b = dict(body) if i == 6 else {"model": "tiny", "prompt": "x" * (3 + 11 * i), "max_tokens": 4 + 3 * i,
                                           "temperature": 0.8, "seed": i}
            with httpx.Client(base_url=s.url, timeout=60) as ci:
                results[i] = ci.post("/v1/completions", json=b).json()["choices"][0]["text"]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert results[6] == alone and len(results) == 12


def test_disconnect_mid_stream_frees_the_slot_within_a_second(srv):
    body = {"model": "tiny", "prompt": "a", "max_tokens": 4000, "temperature": 0, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        assert srv.engine.stats()["active"] == 1
        closed = time.monotonic()
    # the connection is closed here
    srv.wait_idle(timeout=1.0)
    assert time.monotonic() - closed < 1.0
    assert srv.engine.stats()["kv_tokens"] == 0


def test_disconnect_while_waiting_for_a_whole_response(srv):
    body = {"model": "tiny", "prompt": "a", "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.url}/v1/completions", json=body, timeout=0.3)
    srv.wait_idle(timeout=1.0)


def test_full_queue_is_429_with_retry_after(lm):
    with running(lm, max_batch=1, max_queue=1) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        long = {"model": "tiny", "prompt": "a", "max_tokens": 3000, "temperature": 0, "stream": True}
        with c.stream("POST", "/v1/completions", json=long) as r1:
            lines1 = r1.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
            next(lines1)
            with httpx.Client(base_url=s.url, timeout=30) as c2, c2.stream("POST", "/v1/completions",
                                                                         json=long) as r2:
                t0 = time.monotonic()
                while s.engine.stats()["waiting"] < 1 and time.monotonic() - t0 < 5:
                    time.sleep(0.01)
                r3 = c.post("/v1/chat/completions", json=chat_body())
                err = error_of(r3, 429, code="rate_limit_exceeded")
                assert r3.headers["retry-after"] == "1" and err["type"] == "rate_limit_error"
                assert r2.status_code == 200
        s.wait_idle(timeout=2.0)


def test_per_request_timeout_is_504(lm):
    with running(lm, timeout=0.3) as s:
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 4000,
                                                        "temperature": 0}, timeout=30)
        error_of(r, 504, code="timeout")
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 4000,
                                                        "temperature": 0, "stream": True}, timeout=30)
        events = [x for x in r.text.split("\n\n") if x]
        assert json.loads(events[-2][6:])["error"]["code"] == "timeout" and events[-1] == "data: [DONE]"
        s.wait_idle(1.0)


def test_api_key_body_limit_and_cors(lm):
    with running(lm, api_key="s3cret", max_body_bytes=2048) as s:
        error_of(httpx.get(f"{s.url}/v1/models"), 401, code="invalid_api_key")
        error_of(httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        error_of(httpx.get(f"{s.url}/metrics"), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{s.url}/v1/models", headers=ok).status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200  # probes need no key
        big = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 5000}]))
        error_of(httpx.post(f"{s.url}/v1/chat/completions", content=big, headers=ok), 413)

        def chunked():
            yield big[:1000].encode()
            yield big[1000:].encode()

        error_of(httpx.post(f"{s.url}/v1/chat/completions", content=chunked(), headers=ok), 413)
        pre = httpx.options(f"{s.url}/v1/models", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in pre.headers
    with running(lm, cors_origins=("http://app.example",)) as s:
        r = httpx.get(f"{s.url}/v1/models", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
