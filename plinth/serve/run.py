"""Running one request's sequences on the engine: engine events (on the engine thread) -> one asyncio queue ->
text pieces per choice, with stop strings applied (`TextStream`), usage counted, latency observed, and every
sequence cancelled when the request ends early (a disconnect, a timeout, an error).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from plinth.common import PlinthError
from plinth.pipelines.text import TextStream
from plinth.serve.engine import Done, PromptScores, QueueFull
from plinth.serve.engine import Request as EngineRequest
from plinth.serve.engine import Token as TokenEvent


class ClientError(Exception):
    """A request the server refuses: becomes an OpenAI-format error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


@dataclass
class Params:
    """A request's generation settings, resolved."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    presence: float
    frequency: float
    stop: list[str]
    logprobs: int | None  # None: off; k: chosen + k alternatives
    ignore_eos: bool = False
    prompt_logprobs: int | None = None
    adapter: int = 0  # the engine's index of the LoRA adapter the request names (0: the base model)


def busy(retry_after: int, e: Exception) -> ClientError:
    return ClientError(429, f"the server is busy ({e}); retry after {retry_after} s", None, "rate_limit_exceeded",
                       {"Retry-After": str(retry_after)})


@dataclass
class Piece:
    index: int
    text: str
    tokens: list[TokenEvent]
    finish: str | None = None


class Run:
    """The sequences of one request (one per choice), their text streams, and their usage."""

    def __init__(self, server: Any, request: Request, prompts: list[list[int]], params: Params, n: int = 1) -> None:
        """`prompts`: one per sequence (each distinct prompt repeated `n` times, for n choices)."""
        self.server, self.request, self.prompts, self.params = server, request, prompts, params
        self.completion_tokens = [0] * len(prompts)
        self.prompt_scores: list[PromptScores | None] = [None] * len(prompts)
        self.prompt_tokens = sum(len(p) for p in prompts) // n  # OpenAI counts a prompt once, whatever n is
        self.handles: list[Any] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = time.monotonic()

    def start(self) -> Run:
        """Submit every sequence to the engine, before any response is sent: a full queue is a 429 (Retry-After),
        a request the engine refuses a 400. On failure, what was submitted is cancelled."""
        server, p, lm = self.server, self.params, self.server.lm
        loop = asyncio.get_running_loop()
        deadline = self.started + server.opts.timeout
        try:
            for i, ids in enumerate(self.prompts):
                def on_event(event, i=i):
                    try:
                        loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))
                    except RuntimeError:
                        pass  # the event loop has closed (shutdown)

                seed = None if p.seed is None else p.seed + i
                stop_ids = frozenset() if p.ignore_eos else lm.stop_ids
                req = EngineRequest(ids, p.max_tokens, on_event, p.temperature, p.top_k, p.top_p, seed, p.presence,
                                    p.frequency, stop_ids, p.logprobs, p.prompt_logprobs, deadline, p.adapter)
                self.handles.append(server.engine.submit(req))
        except QueueFull as e:
            self.cancel()
            raise busy(server.opts.retry_after, e) from None
        except PlinthError as e:
            self.cancel()
            raise ClientError(400, str(e), "prompt", "invalid_value") from None
        server.metrics.prompt_tokens.inc(self.prompt_tokens)
        return self

    def cancel(self) -> None:
        """End every sequence of the request (a no-op for finished ones); rows are freed at the engine's next step."""
        for h in self.handles:
            h.cancel()

    async def pieces(self) -> AsyncIterator[Piece]:
        """Yield text pieces as they become final, until every choice has finished. Leaving early (a disconnect, an
        error) cancels what is still running."""
        server, p, lm, queue, started = self.server, self.params, self.server.lm, self.queue, self.started
        handles = self.handles
        streams = [TextStream(lm.tokenizer, p.stop, lm.stop_ids) for _ in self.prompts]
        try:
            live = set(range(len(self.prompts)))
            pending: list[list[TokenEvent]] = [[] for _ in self.prompts]
            last_token = [0.0] * len(self.prompts)
            first = True
            while live:
                i, event = await queue.get()
                if i not in live:
                    continue
                if isinstance(event, PromptScores):
                    self.prompt_scores[i] = event
                elif isinstance(event, TokenEvent):
                    now = time.monotonic()
                    if first:
                        server.metrics.ttft.observe(now - started)
                        first = False
                    elif last_token[i]:
                        server.metrics.itl.observe(now - last_token[i])
                    last_token[i] = now
                    self.completion_tokens[i] += 1
                    server.metrics.completion_tokens.inc()
                    pending[i].append(event)
                    text = streams[i].add(event.id)
                    if streams[i].ended:  # a stop string: this choice is over, whatever the engine does next
                        handles[i].cancel()
                        live.discard(i)
                        yield Piece(i, text, pending[i], "stop")
                        pending[i] = []
                    elif text:
                        yield Piece(i, text, pending[i])
                        pending[i] = []
                elif isinstance(event, Done):
                    live.discard(i)
                    if event.reason == "timeout":
                        raise ClientError(504, f"the request took longer than {server.opts.timeout:g} s", None,
                                          "timeout")
                    if event.reason in ("error", "cancelled"):
                        raise ClientError(500 if event.reason == "error" else 503,
                                          f"generation ended early: {event.message or event.reason}", None,
                                          "server_error")
                    yield Piece(i, streams[i].finish(), pending[i], "stop" if event.reason == "stop" else "length")
                    pending[i] = []
        finally:
            self.cancel()


async def collect(run: Run) -> list[list[Piece]]:
    """Every piece of every choice, waiting while watching for the client going away (which cancels the run)."""
    out: list[list[Piece]] = [[] for _ in run.prompts]

    async def consume() -> None:
        gen = run.pieces()
        try:
            async for piece in gen:
                out[piece.index].append(piece)
        finally:
            await gen.aclose()

    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                task.result()  # raises the run's ClientError, if any
                return out
            if await run.request.is_disconnected():
                task.cancel()
                raise ClientError(499, "the client closed the connection", None, "client_closed")
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, ClientError):
                pass


def usage(run: Run) -> dict[str, int]:
    completion = sum(run.completion_tokens)
    return {"prompt_tokens": run.prompt_tokens, "completion_tokens": completion,
            "total_tokens": run.prompt_tokens + completion}


