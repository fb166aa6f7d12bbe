"""The batching engine (token ids only): continuous batching gives each sequence exactly what it would get alone,
chunked prefill equals one prefill, rows are freed at once, and the queue is bounded."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from plinth.common import PlinthError
from plinth.models.cache import SlotCache
from plinth.models.generate import generate, sample_next_token, sample_rows
from plinth.serve.engine import Done, Engine, PromptScores, QueueFull, Request, Token
from tests.serve_helpers import random_lm


class Collector:
    """Events of one request, and an Event set at its Done."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.logprobs: list[float | None] = []
        self.scores: PromptScores | None = None
        self.done: Done | None = None
        self.finished = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Token):
            self.tokens.append(event.id)
            self.logprobs.append(event.logprob)
        elif isinstance(event, PromptScores):
            self.scores = event
        else:
            self.done = event
            self.finished.set()

    def wait(self, timeout: float = 60) -> Collector:
        assert self.finished.wait(timeout), "the request never finished"
        return self


def _prompts(n: int, vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 41, 7, 90, 15, 1, 64, 22, 5, 33][:n]
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture(scope="module")
def lm():
    return random_lm(seed=3)


def test_slot_cache_decode_matches_a_plain_cache(lm):
    """Rows of different lengths decoded together give the logits each row gets with its own KVCache."""
    model = lm.model
    c = model.config
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19]]
    cache = SlotCache(c.n_layer, 4, c.n_kv_head, c.head_dim, c.seq_len, capacity=4)
    with torch.no_grad():
        for row, p in enumerate(prompts):
            model(torch.tensor([p[:3]]), cache=cache.prefill(row, len(p[:3])))  # chunked: 3 tokens, then the rest
            if len(p) > 3:
                model(torch.tensor([p[3:]]), cache=cache.prefill(row, len(p) - 3))
        batched = model(torch.tensor([[20], [21], [22]]), cache=cache.decode(3), logits_to_keep=1)[:, -1]
        for row, p in enumerate(prompts):
            alone = model(torch.tensor([p + [20 + row]]))[0, -1]
            torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-4)
    assert cache.lengths[:3] == [6, 3, 9] and cache.capacity == 16  # grew from 4 by doubling


def test_sample_rows_gives_each_row_what_it_gets_alone():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    options = [(0.0, 0, 1.0), (0.8, 0, 0.9), (1.0, 5, 1.0), (0.8, 0, 0.9), (1.3, 0, 1.0)]
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    together = sample_rows(logits, options, gens).tolist()
    alone = [int(sample_next_token(logits[i:i + 1], *options[i], torch.Generator().manual_seed(10 + i))[0])
             for i in range(5)]
    assert together == alone


def test_engine_alone_equals_generate(lm):
    """Chunked prefill + slot cache decode: the same greedy tokens as the one decoding loop."""
    engine = Engine(lm.model, max_batch=4, prefill_chunk=16).start()
    try:
        for p in _prompts(4, lm.config.vocab_size):
            got = Collector()
            engine.submit(Request(p, 12, got))
            got.wait()
            assert got.tokens == generate(lm.model, [p], 12, temperature=0)[0]
            assert got.done.reason == "length"
    finally:
        engine.stop()


def _run(engine: Engine, req_args: dict, prompt: list[int]) -> Collector:
    got = Collector()
    engine.submit(Request(prompt, on_event=got, **req_args))
    return got


def test_output_alone_equals_output_in_a_busy_batch(lm):
    """A greedy request and a seeded sampled one give the same tokens alone and among 9 others that join and leave
    at different steps (long prompts prefilled in chunks meanwhile, sampling with penalties, early stops)."""
    vocab = lm.config.vocab_size
    target_prompt = _prompts(10, vocab, seed=7)[3]  # 90 tokens: several prefill chunks
    greedy = dict(max_tokens=30, temperature=0.0)
    sampled = dict(max_tokens=30, temperature=0.9, top_p=0.9, seed=1234, presence_penalty=0.5,
                   frequency_penalty=0.3)
    engine = Engine(lm.model, max_batch=6, max_queue=64, prefill_chunk=16).start()
    try:
        alone_greedy = _run(engine, greedy, target_prompt).wait().tokens
        alone_sampled = _run(engine, sampled, target_prompt).wait().tokens
        steps_before = engine.steps
        others = []
        for i, p in enumerate(_prompts(10, vocab, seed=11)):
            others.append(_run(engine, dict(max_tokens=5 + 7 * i, temperature=0.7 * (i % 3), seed=i, top_k=i,
                                            frequency_penalty=0.2 * (i % 2)), p))
            if i == 3:
                busy_greedy = _run(engine, greedy, target_prompt)
                busy_sampled = _run(engine, sampled, target_prompt)
            time.sleep(0.003 * i)  # joins at different steps
        assert busy_greedy.wait().tokens == alone_greedy
        assert busy_sampled.wait().tokens == alone_sampled
        for o in others:
            o.wait()
        batched_steps = engine.steps - steps_before
        assert batched_steps < sum(len(o.tokens) for o in others)  # they really decoded together
        assert engine.stats()["active"] == 0 and engine.stats()["kv_tokens"] == 0
    finally:
        engine.stop()


def test_cancel_frees_the_row_at_the_next_step(lm):
    engine = Engine(lm.model, max_batch=2, prefill_chunk=8).start()
    try:
        long = Collector()
        handle = engine.submit(Request([5] * 10, 200, long))
        while len(long.tokens) < 3:
            time.sleep(0.001)
        handle.cancel()
        long.wait(5)
        assert long.done.reason == "cancelled" and len(long.tokens) < 200
        assert engine.stats()["active"] == 0 and engine.stats()["kv_tokens"] == 0
    finally:
        engine.stop()


def test_queue_is_bounded_and_requests_checked(lm):
    engine = Engine(lm.model, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    engine.submit(Request([5], 4, Collector()))
    engine.submit(Request([5], 4, Collector()))
    with pytest.raises(QueueFull):
        engine.submit(Request([5], 4, Collector()))
    with pytest.raises(PlinthError, match="exceed the context"):
        engine.submit(Request([5] * 200, 100, Collector()))
    with pytest.raises(PlinthError, match="empty"):
        engine.submit(Request([], 4, Collector()))
    with pytest.raises(PlinthError, match="token ids"):
        engine.submit(Request([10**6], 4, Collector()))
    engine.start()
    engine.stop()


def test_deadline_ends_a_sequence_with_timeout(lm):
    engine = Engine(lm.model, max_batch=1).start()
    try:
        got = _run(engine, dict(max_tokens=200, deadline=time.monotonic() + 0.05), [5] * 4)
        assert got.wait(5).done.reason == "timeout"
    finally:
        engine.stop()


def test_prompt_and_token_logprobs_are_the_models(lm):
    """Prompt log-probabilities (read in chunks) and generated-token ones equal a plain forward pass's."""
    prompt = _prompts(4, lm.config.vocab_size)[1]  # 41 tokens, chunks of 16
    engine = Engine(lm.model, max_batch=2, prefill_chunk=16).start()
    try:
        got = _run(engine, dict(max_tokens=3, logprobs=2, prompt_logprobs=2), prompt).wait()
    finally:
        engine.stop()
    full = prompt + got.tokens
    with torch.no_grad():
        logp = lm.model(torch.tensor([full]))[0].log_softmax(-1)
    want = [None] + [float(logp[i, full[i + 1]]) for i in range(len(full) - 1)]
    assert got.scores.logprobs[0] is None and len(got.scores.logprobs) == len(prompt)
    assert got.scores.logprobs[1:] == pytest.approx(want[1:len(prompt)], abs=1e-4)
    assert got.logprobs == pytest.approx(want[len(prompt):], abs=1e-4)
    assert got.scores.top[1][0][0] == int(logp[0].argmax())


def test_a_vanishing_top_p_keeps_the_top_token():
    """Found by the fuzz run: top_p = 4e-85 rounds to 0 in float32, which used to drop every token (NaN probs)."""
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(0)) * 5
    token = sample_next_token(logits, temperature=1.0, top_p=4.2e-85, generator=torch.Generator().manual_seed(0))
    assert token.tolist() == logits.argmax(-1).tolist()
