"""Soak: many concurrent clients for minutes on 127.0.0.1, some disconnecting mid-stream. Every response is
well-formed and right, none is lost or duplicated, and memory and the KV cache return to their baseline.

Slow: `pytest -m slow tests/test_serve_soak.py` (PLINTH_SOAK_SECONDS, default 150; PLINTH_SOAK_CLIENTS, default 32).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.lm_builders import bigram_lm, chain  # noqa: E402
from tests.serve_helpers import running  # noqa: E402

REPLY = "Hi, you!"


def rss_mb() -> float:
    """Resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def one(http: httpx.AsyncClient, rng: random.Random, stats: dict) -> None:
    chat = rng.random() < 0.5
    stream = rng.random() < 0.6
    drop = stream and rng.random() < 0.25  # disconnect after the first chunks
    max_tokens = rng.choice([3, 8, 40])
    if chat:
        path, body = "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        want = REPLY[:max_tokens]
    else:
        path, body = "/v1/completions", {"model": "tiny", "prompt": "a"}
        want = ("bca" * 20)[:max_tokens]
    body.update(temperature=0, max_tokens=max_tokens, stream=stream)
    stats["sent"] += 1
    if not stream:
        r = await http.post(path, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        text = out["choices"][0]["message"]["content"] if chat else out["choices"][0]["text"]
        assert text == want, (text, want)
        stats["ids"].append(out["id"])
        stats["ok"] += 1
        return
    async with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        text, seen, rid = "", 0, None
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            rid = rid or chunk["id"]
            assert chunk["id"] == rid
            choice = chunk["choices"][0]
            text += (choice["delta"].get("content") or "") if chat else choice["text"]
            seen += 1
            if drop and seen >= 2:
                stats["dropped"] += 1
                return  # leaving the block closes the connection mid-stream
        else:
            raise AssertionError("stream ended without [DONE]")
        assert text == want, (text, want)
        stats["ids"].append(rid)
        stats["ok"] += 1


@pytest.mark.slow
def test_soak():
    seconds = float(os.environ.get("PLINTH_SOAK_SECONDS", "150"))
    clients = int(os.environ.get("PLINTH_SOAK_CLIENTS", "32"))
    lm = bigram_lm({**chain(REPLY), "a": "b", "b": "c", "c": "a"}, seq_len=512)
    with running(lm, max_batch=16, max_queue=4096) as s:
        stats = {"sent": 0, "ok": 0, "dropped": 0, "ids": []}

        async def client(k: int, until: float) -> None:
            rng = random.Random(k)
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
                while time.monotonic() < until:
                    await one(http, rng, stats)

        asyncio.run(client(0, time.monotonic() + 3))  # warm-up
        s.wait_idle()
        gc.collect()
        base_rss, base_kv = rss_mb(), s.engine.stats()["kv_bytes"]
        t0 = time.monotonic()

        async def soak() -> None:
            await asyncio.gather(*(client(k, t0 + seconds) for k in range(1, clients + 1)))

        asyncio.run(soak())
        s.wait_idle(timeout=5)
        time.sleep(0.5)
        gc.collect()
        assert stats["ok"] + stats["dropped"] == stats["sent"]
        assert len(set(stats["ids"])) == len(stats["ids"]) == stats["ok"]  # nothing duplicated
        assert stats["sent"] > 10 * clients and stats["dropped"] > 0
        engine = s.engine.stats()
        assert engine["active"] == engine["waiting"] == engine["kv_tokens"] == 0
        assert engine["kv_bytes"] == base_kv  # grown memory released when idle
        metrics = httpx.get(f"{s.url}/metrics").text
        served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("plinth_requests_total{") and "/v1/" in line and 'status="200"' in line)
        assert served >= stats["sent"]  # every request the clients sent reached the server and got a 200
        grown = rss_mb() - base_rss
        print(f"soak: {stats['sent']} requests ({stats['dropped']} dropped mid-stream) from {clients} clients in "
              f"{time.monotonic() - t0:.0f} s; RSS {base_rss:.0f} -> {base_rss + grown:.0f} MiB")
        assert grown < 64, f"memory grew by {grown:.0f} MiB"
