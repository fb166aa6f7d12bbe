"""The batching engine: token ids in, token ids out, many sequences decoded together (continuous batching).

One thread owns the model. Between decode steps it admits waiting sequences into free rows of a `SlotCache`
(their prompts are read in chunks of `prefill_chunk` tokens, at most about one chunk's worth per step, so a long
prompt, or a crowd of new ones, never stalls the others' decoding for more than one chunk), runs one forward pass
that advances every decoding sequence by one token, samples each row with its own options and seed
(`generate.sample_rows`, the sampling of the one decoding loop), and removes finished, cancelled or timed-out
sequences at once, freeing their row. Results go back through each request's `on_event` callback, called on the
engine thread. The engine knows nothing of text or HTTP.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from plinth.common import PlinthError, warn
from plinth.models.cache import SlotCache
from plinth.models.generate import sample_rows

TopLogprobs = list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass
class Token:
    """One generated token, with its log-probability under the model and the most likely alternatives."""

    id: int
    logprob: float | None = None
    top: TopLogprobs | None = None


@dataclass
class PromptScores:
    """Log-probabilities of the prompt's tokens (None for the first, which nothing predicts), and alternatives."""

    logprobs: list[float | None]
    top: list[TopLogprobs | None]


@dataclass
class Done:
    """The end of a sequence: reason is 'stop' (a stop id), 'length', 'cancelled', 'timeout' or 'error'."""

    reason: str
    message: str = ""


Event = Token | PromptScores | Done


@dataclass
class Request:
    """A sequence to continue. `on_event` receives Token events, at most one PromptScores (when asked for, before
    the first Token), and exactly one Done, in that order, on the engine thread."""

    prompt: list[int]
    max_tokens: int
    on_event: Callable[[Event], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_ids: frozenset[int] = frozenset()
    logprobs: int | None = None  # None: no log-probabilities; k >= 0: the chosen token's and k alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens
    deadline: float | None = None  # time.monotonic() after which the sequence ends with reason 'timeout'
    adapter: int = 0  # the LoRA adapter this sequence decodes with (index in the engine's AdapterSet; 0: the base)


@dataclass
class EmbedRequest:
    """Token ids to embed; `on_done(vector or None, error message)` is called on the engine thread."""

    ids: list[int]
    on_done: Callable[[list[float] | None, str], None]
    cancelled: bool = False
    adapter: int = 0

    def cancel(self) -> None:
        self.cancelled = True


class QueueFull(PlinthError):
    """The waiting queue is full; retry later."""


@dataclass
class _Seq:
    req: Request
    generator: torch.Generator
    fed: int = 0  # prompt tokens already in the cache
    generated: int = 0
    last: int = -1  # the token to feed at the next decode step
    counts: torch.Tensor | None = None  # (V,) generated-token counts, for the penalties
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    prompt_scores: tuple[list, list] | None = None  # (logprobs, tops) of the prompt so far, when asked for


class Handle:
    """What `Engine.submit` returns: `cancel()` ends the sequence at the next step boundary (its row is freed)."""

    def __init__(self, engine: Engine, seq: _Seq) -> None:
        self._engine, self._seq = engine, seq

    def cancel(self) -> None:
        self._seq.cancelled = True
        self._engine._wake()


class Engine:
    """Continuous batching over a `GPT`-like decoder (`config`, `new_cache`-free: the engine makes a SlotCache).

    `max_batch` rows decode together; `max_queue` sequences may wait for a row (`submit` raises QueueFull beyond);
    `max_len` bounds prompt + generated tokens per sequence (default: the model's context). `adapters`: the LoRA
    adapters attached to `model` (`adapt.multi_lora.attach_adapters`); each request names its own (`Request.adapter`)
    and rows with different adapters decode in the same step.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int = 16, max_queue: int = 256, prefill_chunk: int = 128,
                 max_len: int | None = None, adapters: Any = None) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise PlinthError("engine: max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        self.model = model.eval()
        self.adapters = adapters
        self.n_adapters = len(adapters.names) if adapters is not None else 0
        c = model.config
        self.max_len = min(max_len or c.seq_len, c.seq_len)
        self.vocab_size = c.vocab_size
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        w = next(model.parameters())
        self.device = w.device
        self.cache = SlotCache(c.n_layer, max_batch, c.n_kv_head, c.head_dim, self.max_len, capacity=64,
                               device=w.device, dtype=w.dtype)
        self._cv = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._embeds: deque[EmbedRequest] = deque()
        self._rows: list[_Seq] = []  # live sequences in cache-row order: decoding ones first, then prefilling ones
        self._n_dec = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.tokens_out = 0

    # ------------------------------------------------------------------------------------------------------------------
    # The caller's side (any thread)

    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="plinth-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End every sequence (reason 'cancelled') and stop the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, req: Request) -> Handle:
        """Queue a sequence; raises QueueFull when `max_queue` are already waiting, PlinthError on a bad request."""
        n = len(req.prompt)
        if n == 0:
            raise PlinthError("the prompt is empty: give at least one token")
        if n + req.max_tokens > self.max_len:
            raise PlinthError(f"prompt ({n} tokens) + max_tokens ({req.max_tokens}) exceed the context of "
                              f"{self.max_len} tokens")
        if any(not 0 <= t < self.vocab_size for t in req.prompt):
            raise PlinthError(f"prompt token ids must be in [0, {self.vocab_size})")
        if not 0 <= req.adapter <= self.n_adapters:
            raise PlinthError(f"adapter {req.adapter} does not exist (this engine has {self.n_adapters})")
        seed = req.seed if req.seed is not None else secrets.randbits(62)
        seq = _Seq(req, torch.Generator(device=self.device).manual_seed(seed))
        with self._cv:
            if self._stop:
                raise PlinthError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(seq)
            self._cv.notify_all()
        return Handle(self, seq)

    def embed(self, req: EmbedRequest) -> EmbedRequest:
        """Queue token ids for an embedding (their mean final hidden state, L2-normalised)."""
        if not req.ids or len(req.ids) > self.max_len:
            raise PlinthError(f"an input to embed must have 1 to {self.max_len} tokens, not {len(req.ids)}")
        if not 0 <= req.adapter <= self.n_adapters:
            raise PlinthError(f"adapter {req.adapter} does not exist (this engine has {self.n_adapters})")
        with self._cv:
            if len(self._waiting) + len(self._embeds) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            self._embeds.append(req)
            self._cv.notify_all()
        return req

    def stats(self) -> dict[str, Any]:
        """Queue depth, live sequences, and the KV memory in use."""
        return {"waiting": len(self._waiting), "active": len(self._rows), "max_batch": self.max_batch,
                "kv_tokens": sum(self.cache.lengths), "kv_bytes": self.cache.nbytes(), "steps": self.steps}

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------------------------------
    # The engine thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._rows and not self._waiting and not self._embeds:
                    self.cache.shrink()  # idle: give back memory grown for long sequences
                    self._cv.wait()
                if self._stop:
                    break
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as e:  # never let one bad step kill the server: fail what was live, go on
                warn(f"engine step failed: {type(e).__name__}: {e}")
                for seq in list(self._rows):
                    self._finish(seq, Done("error", f"{type(e).__name__}: {e}"))
        with self._cv:
            leftover = list(self._rows) + list(self._waiting)
            self._waiting.clear()
        for seq in leftover:
            if seq in self._rows:
                self._finish(seq, Done("cancelled", "the server is shutting down"))
            else:
                seq.req.on_event(Done("cancelled", "the server is shutting down"))

    def _step(self) -> None:
        self._drop_ended()
        self._admit()
        self._run_embeds()
        self._prefill()
        self._decode()

    def _drop_ended(self) -> None:
        now = time.monotonic()
        with self._cv:
            for seq in [s for s in self._waiting if s.cancelled or _late(s, now)]:
                self._waiting.remove(seq)
                seq.req.on_event(Done("cancelled") if seq.cancelled else _timeout(seq))
        for seq in list(self._rows):
            if seq.cancelled:
                self._finish(seq, Done("cancelled"))
            elif _late(seq, now):
                self._finish(seq, _timeout(seq))

    def _admit(self) -> None:
        with self._cv:
            while self._waiting and len(self._rows) < self.max_batch:
                self._rows.append(self._waiting.popleft())  # prefilling: after the decoding rows

    def _run_embeds(self) -> None:
        with self._cv:
            jobs = list(self._embeds)
            self._embeds.clear()
        for job in jobs:
            if job.cancelled:
                continue
            try:
                ids = torch.tensor([job.ids], device=self.device)
                self._select([job.adapter])
                hidden = self.model.model(ids)[0].float()  # (T, d_model): the final-normed hidden states
                vec = hidden.mean(0)
                vec = vec / vec.norm().clamp(min=1e-12)
                job.on_done(vec.tolist(), "")
            except Exception as e:
                job.on_done(None, f"{type(e).__name__}: {e}")

    def _prefill(self) -> None:
        """Prompt chunks, oldest sequence first, up to `prefill_chunk` tokens in all per step (at least one chunk),
        so the decoding rows wait for at most about one chunk's work. A chunk is always the next `prefill_chunk`
        tokens of its prompt: its boundaries never depend on the rest of the batch. A sequence whose prompt is all
        in starts decoding."""
        budget = self.prefill_chunk
        for seq in list(self._rows[self._n_dec:]):
            if budget <= 0:
                break
            row = self._rows.index(seq)
            prompt = seq.req.prompt
            chunk = prompt[seq.fed:seq.fed + self.prefill_chunk]
            T = len(chunk)
            budget -= T
            scores = seq.req.prompt_logprobs is not None
            view = self.cache.prefill(row, T)
            ids = torch.tensor([chunk], device=self.device)
            self._select([seq.req.adapter])
            logits = self.model(ids, cache=view, logits_to_keep=0 if scores else 1)[0]  # (T or 1, V)
            if scores:
                self._score_prompt(seq, logits)
            seq.fed += T
            if seq.fed < len(prompt):
                continue
            if scores:
                seq.req.on_event(PromptScores(*seq.prompt_scores))
            # the prompt is in: promote the row into the decoding block and take its first token
            self.cache.swap_rows(row, self._n_dec)
            self._rows[row], self._rows[self._n_dec] = self._rows[self._n_dec], self._rows[row]
            self._n_dec += 1
            if seq.req.max_tokens == 0:
                self._finish(seq, Done("length"))
                continue
            self._emit([seq], logits[-1:])

    def _score_prompt(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens this chunk's positions predict."""
        if seq.fed == 0:
            seq.prompt_scores = ([None], [None])
        prompt, k = seq.req.prompt, seq.req.prompt_logprobs or 0
        targets = prompt[seq.fed + 1:seq.fed + logits.shape[0] + 1]  # the next prompt token of each position
        if not targets:
            return
        logp = logits[:len(targets)].float().log_softmax(-1)  # (n, V)
        chosen = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0].tolist()
        tops = _tops(logp, k) if k else [None] * len(targets)
        seq.prompt_scores[0].extend(chosen)
        seq.prompt_scores[1].extend(tops)

    def _decode(self) -> None:
        n = self._n_dec
        if n == 0:
            return
        rows = self._rows[:n]
        if any(self.cache.lengths[i] >= self.max_len for i in range(n)):  # cannot happen: submit checks the budget
            for seq in [s for i, s in enumerate(rows) if self.cache.lengths[i] >= self.max_len]:
                self._finish(seq, Done("length"))
            return
        view = self.cache.decode(n)
        ids = torch.tensor([[s.last] for s in rows], device=self.device)  # (n, 1)
        self._select([s.req.adapter for s in rows])
        logits = self.model(ids, cache=view, logits_to_keep=1)[:, -1]  # (n, V)
        self.steps += 1
        self._emit(rows, logits)

    def _select(self, adapters: list[int]) -> None:
        """Route each row of the next forward pass through its sequence's adapter."""
        if self.adapters is not None:
            self.adapters.select(adapters)

    def _emit(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Sample the next token of each sequence from its logits row (n, V); send events; finish the done ones."""
        raw = logits
        logits = logits.float()
        penalised = [i for i, s in enumerate(seqs) if s.counts is not None]
        if penalised:
            logits = logits.clone()  # keep `raw` the model's own distribution, for logprobs
        for i in penalised:
            # OpenAI's penalties, on the tokens generated so far (not the prompt's)
            r, counts = seqs[i].req, seqs[i].counts
            logits[i] -= r.frequency_penalty * counts + r.presence_penalty * (counts > 0).float()
        options = [(s.req.temperature, s.req.top_k, s.req.top_p) for s in seqs]
        tokens = sample_rows(logits, options, [s.generator for s in seqs]).tolist()
        want = [i for i, s in enumerate(seqs) if s.req.logprobs is not None]
        logp = raw[want].float().log_softmax(-1) if want else None  # the model's own distribution
        done: list[tuple[_Seq, Done]] = []
        for i, (seq, tok) in enumerate(zip(seqs, tokens)):
            r = seq.req
            if tok in r.stop_ids:
                done.append((seq, Done("stop")))
                continue
            event = Token(tok)
            if logp is not None and i in want:
                j = want.index(i)
                event.logprob = float(logp[j, tok])
                event.top = _tops(logp[j:j + 1], r.logprobs)[0] if r.logprobs else None
            seq.generated += 1
            seq.last = tok
            self.tokens_out += 1
            if r.presence_penalty or r.frequency_penalty:
                if seq.counts is None:
                    seq.counts = torch.zeros(logits.shape[-1], device=logits.device)
                seq.counts[tok] += 1
            r.on_event(event)
            if seq.generated >= r.max_tokens:
                done.append((seq, Done("length")))
        for seq, d in done:
            self._finish(seq, d)

    def _finish(self, seq: _Seq, done: Done) -> None:
        """Remove a live sequence: its row is refilled by moving the last rows down; then tell the caller."""
        if seq not in self._rows:
            return
        row = self._rows.index(seq)
        last_dec = self._n_dec - 1
        if row <= last_dec:  # a decoding row: the last decoding row fills the gap, the last prefilling one fills its
            self.cache.move_row(last_dec, row)
            self._rows[row] = self._rows[last_dec]
            last = len(self._rows) - 1
            self.cache.move_row(last, last_dec)
            self._rows[last_dec] = self._rows[last]
            self._n_dec -= 1
        else:
            last = len(self._rows) - 1
            self.cache.move_row(last, row)
            self._rows[row] = self._rows[last]
        self._rows.pop()
        self.cache.clear_row(len(self._rows))
        seq.req.on_event(done)


def _late(seq: _Seq, now: float) -> bool:
    return seq.req.deadline is not None and now > seq.req.deadline


def _timeout(seq: _Seq) -> Done:
    return Done("timeout", f"the request took longer than its {math.ceil(time.monotonic() - seq.started)} s limit")


def _tops(logp: torch.Tensor, k: int) -> list[TopLogprobs]:
    """The k most likely (id, log-probability) pairs of each row of logp (n, V)."""
    values, ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
