"""OpenAI's response shapes: chat completions and (legacy) completions, whole or as server-sent event chunks, with
usage, finish reasons and log-probabilities. Field order and separators follow what api.openai.com sends, so a
stream is byte-for-byte what an OpenAI client expects (tests/test_serve.py checks it).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from plinth.serve.engine import Token
from plinth.serve.run import ClientError, Piece, Run, collect, usage


def dumps(obj: Any) -> str:
    """Compact JSON, as OpenAI sends it (no spaces, UTF-8 not escaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(run: Run, fmt: Any, include_usage: bool) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: `data: {json}\\n\\n` per chunk, then `data: [DONE]\\n\\n`.

    The generator's `finally` runs when the client disconnects (the server cancels the response), which cancels
    the request's sequences: their batch rows and KV cache are free at the engine's next step.
    """

    async def events() -> AsyncIterator[bytes]:
        gen = run.pieces()
        try:
            for chunk in fmt.opening(include_usage):
                yield f"data: {dumps(chunk)}\n\n".encode()
            async for piece in gen:
                for chunk in fmt.chunks(piece, include_usage):
                    yield f"data: {dumps(chunk)}\n\n".encode()
            if include_usage:
                yield f"data: {dumps(fmt.usage_chunk(usage(run)))}\n\n".encode()
        except ClientError as e:  # after the 200 is sent an error can only be an event (the openai client raises it)
            error = {"message": e.message, "type": "server_error", "param": e.param, "code": e.code}
            yield f"data: {dumps({'error': error})}\n\n".encode()
        finally:
            await gen.aclose()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Format:
    object_name = ""

    def __init__(self, server: Any, rid: str, body: Any) -> None:
        self.server, self.rid, self.body = server, rid, body
        self.created = int(time.time())
        self.tokenizer = server.lm.tokenizer

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.body.model,
                "system_fingerprint": self.server.fingerprint}

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class ChatFormat(_Format):
    """`chat.completion` and `chat.completion.chunk` objects."""

    def __init__(self, server: Any, rid: str, body: Any, prompt_len: int) -> None:
        super().__init__(server, rid, body)
        self.logprobs = bool(body.logprobs)

    def _entry(self, token_id: int, logprob: float | None) -> dict[str, Any]:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = []
        for t in tokens:
            entry = self._entry(t.id, t.logprob)
            entry["top_logprobs"] = [self._entry(i, lp) for i, lp in (t.top or [])]
            content.append(entry)
        return {"content": content, "refusal": None}

    async def whole(self, run: Run) -> dict[str, Any]:
        per_choice = await collect(run)
        choices = []
        for i, pieces in enumerate(per_choice):
            text = "".join(p.text for p in pieces)
            tokens = [t for p in pieces for t in p.tokens]
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": self._logprobs(tokens), "finish_reason": pieces[-1].finish if pieces else
                            "length"})
        return {**self._head("chat.completion"), "choices": choices, "usage": usage(run)}

    def _chunk(self, choice: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return out

    def opening(self, include_usage: bool) -> list[dict[str, Any]]:
        return [self._chunk({"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                             "logprobs": None, "finish_reason": None}, include_usage) for i in range(self.body.n)]

    def chunks(self, piece: Piece, include_usage: bool) -> list[dict[str, Any]]:
        out = []
        if piece.text or (self.logprobs and piece.tokens):
            out.append(self._chunk({"index": piece.index, "delta": {"content": piece.text},
                                    "logprobs": self._logprobs(piece.tokens), "finish_reason": None}, include_usage))
        if piece.finish:
            out.append(self._chunk({"index": piece.index, "delta": {}, "logprobs": None,
                                    "finish_reason": piece.finish}, include_usage))
        return out

    def usage_chunk(self, use: dict[str, int]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": use}


class CompletionFormat(_Format):
    """`text_completion` objects, whole or streamed; `echo` puts the prompt first, with its logprobs."""

    def __init__(self, server: Any, rid: str, body: Any, seqs: list[tuple[list[int], int]]) -> None:
        super().__init__(server, rid, body)
        self.prompts = [p for p, _ in seqs]
        self.echo, self.k = body.echo, body.logprobs
        self.offsets = [0] * len(seqs)  # text offset of each choice's next token

    def _prompt_text(self, i: int) -> str:
        return self.tokenizer.decode(self.prompts[i])

    def _logprobs(self, i: int, ids: list[int], lps: list[float | None], tops: list[Any]) -> dict[str, Any]:
        tokens, offsets = [], []
        for t in ids:
            s = self.token_text(t)
            tokens.append(s)
            offsets.append(self.offsets[i])
            self.offsets[i] += len(s)
        top = None
        if self.k:
            top = [None if alt is None else {self.token_text(a): lp for a, lp in alt} for alt in tops]
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}

    def _gen_logprobs(self, i: int, tokens: list[Token]) -> dict[str, Any] | None:
        if self.k is None:
            return None
        return self._logprobs(i, [t.id for t in tokens], [t.logprob for t in tokens], [t.top for t in tokens])

    def _echo_logprobs(self, i: int, run: Run) -> dict[str, Any] | None:
        if self.k is None:
            return None
        scores = run.prompt_scores[i]
        n = len(self.prompts[i])
        lps = scores.logprobs if scores else [None] * n
        tops = scores.top if scores else [None] * n
        return self._logprobs(i, self.prompts[i], lps, tops)

    async def whole(self, run: Run) -> dict[str, Any]:
        if not self.echo:
            self.offsets = [len(self._prompt_text(i)) for i in range(len(self.prompts))]
        per_choice = await collect(run)
        choices = []
        for i, pieces in enumerate(per_choice):
            text = "".join(p.text for p in pieces)
            lp = None
            if self.k is not None:
                echoed = self._echo_logprobs(i, run) if self.echo else None  # first: offsets run prompt -> reply
                lp = self._gen_logprobs(i, [t for p in pieces for t in p.tokens])
                if echoed is not None:
                    lp = {key: None if echoed[key] is None else echoed[key] + lp[key] for key in lp}
            if self.echo:
                text = self._prompt_text(i) + text
            choices.append({"text": text, "index": i, "logprobs": lp,
                            "finish_reason": pieces[-1].finish if pieces else "length"})
        return {**self._head("text_completion"), "choices": choices, "usage": usage(run)}

    def _chunk(self, i: int, text: str, logprobs: Any, finish: str | None, include_usage: bool) -> dict[str, Any]:
        out = {**self._head("text_completion"),
               "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    def opening(self, include_usage: bool) -> list[dict[str, Any]]:
        self.offsets = [0 if self.echo else len(self._prompt_text(i)) for i in range(len(self.prompts))]
        if not self.echo:
            return []
        # streamed echo carries the prompt's text (its logprobs need the prefill: only in a whole response)
        out = []
        for i in range(len(self.prompts)):
            text = self._prompt_text(i)
            lp = None if self.k is None else {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                              "text_offset": []}
            self.offsets[i] = len(text)
            out.append(self._chunk(i, text, lp, None, include_usage))
        return out

    def chunks(self, piece: Piece, include_usage: bool) -> list[dict[str, Any]]:
        out = []
        if piece.text or (self.k is not None and piece.tokens):
            out.append(self._chunk(piece.index, piece.text, self._gen_logprobs(piece.index, piece.tokens), None,
                                   include_usage))
        if piece.finish:
            out.append(self._chunk(piece.index, "", None, piece.finish, include_usage))
        return out

    def usage_chunk(self, use: dict[str, int]) -> dict[str, Any]:
        return {**self._head("text_completion"), "choices": [], "usage": use}
