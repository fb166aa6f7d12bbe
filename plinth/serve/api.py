"""The OpenAI-compatible HTTP API over the batching engine: text in and out, chat templates, streaming, logprobs.

`create_app(lm, options)` returns a FastAPI app serving one `LanguageModel`: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, `/v1/embeddings`, `/health`, `/metrics`. Requests become token ids (`LanguageModel.encode`,
the model's chat template) and go to the `Engine`; its events come back through one asyncio queue per request and
become text with `TextStream` (stop strings matched on the text, never leaked to a stream). Every error a client can
cause is a 4xx in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from plinth.adapt.multi_lora import attach_adapters
from plinth.common import PlinthError
from plinth.pipelines.text import LanguageModel
from plinth.serve.engine import EmbedRequest, Engine, QueueFull
from plinth.serve.formats import ChatFormat, CompletionFormat, sse
from plinth.serve.guard import Guard, api_error
from plinth.serve.metrics import Metrics
from plinth.serve.run import ClientError, Params, Run, busy
from plinth.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    unsupported_field,
)

SAMPLING_EPS = 1e-5  # temperatures below this decode greedily (as vLLM does): logits / 1e-300 are inf


@dataclass
class ServeOptions:
    """How the app serves (the HTTP side of `ServeConfig`)."""

    name: str = "plinth"
    api_key: str = ""
    max_batch: int = 16
    max_queue: int = 256
    prefill_chunk: int = 128
    max_len: int = 0  # 0: the model's context
    timeout: float = 600.0  # seconds per request, queueing included
    max_body_bytes: int = 1_000_000
    cors_origins: tuple[str, ...] = ()
    retry_after: int = 1  # seconds, in a 429's Retry-After
    adapters: tuple[tuple[str, str], ...] = ()  # (name, folder) of each LoRA adapter, served under its own name


def create_app(lm: LanguageModel, options: ServeOptions | None = None, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving `lm`; the engine thread starts and stops with the app's lifespan."""
    opts = options or ServeOptions()
    adapters = None
    if opts.adapters:
        names = [n for n, _ in opts.adapters]
        if opts.name in names or len(set(names)) < len(names):
            raise PlinthError(f"adapter names must be distinct and differ from the model's ({opts.name!r}): "
                              f"{', '.join(names)}")
        adapters = attach_adapters(lm.model, dict(opts.adapters))
    engine = engine or Engine(lm.model, opts.max_batch, opts.max_queue, opts.prefill_chunk, opts.max_len or None,
                              adapters)
    metrics = Metrics(engine)
    server = _Server(lm, engine, opts, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="Plinth", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible API for a Plinth language model.")
    app.state.server = server
    app.add_middleware(Guard, api_key=opts.api_key, max_body_bytes=opts.max_body_bytes, metrics=metrics,
                       cors_origins=opts.cors_origins)

    _publish_limits(app, [opts.name, *(n for n, _ in opts.adapters)], engine.max_len)

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
        return api_error(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return api_error(400, *_validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return api_error(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load: always answers, without an API key."""
        return {"status": "ok", **engine.stats()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics: requests by status, tokens, latency histograms, queue depth, active sequences."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model, then its LoRA adapters (each with `parent`: the base model's name)."""
        return {"object": "list", "data": [server.model_card(n) for n in server.names]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        """One model by name."""
        server.check_model(model_id)
        return server.model_card(model_id)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        """The tokenizer's special tokens and chat template (vLLM's route; lm-eval's `remote` tokenizer reads it)."""
        st = lm.settings
        eos = st.eos_token or (lm.tokenizer.backend.id_to_token(lm.tokenizer.eos_id) if lm.tokenizer.eos_id >= 0
                               else None)
        return {"eos_token": eos, "bos_token": st.bos_token, "pad_token": None, "chat_template": st.chat_template,
                "model_max_length": engine.max_len}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """Token ids of a text (vLLM's route): the plain tokenizer, plus the model's BOS with add_special_tokens."""
        ids = lm.encode(body.prompt, bos=None if body.add_special_tokens else False)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        """The text of token ids (vLLM's route)."""
        if any(not 0 <= t < lm.config.vocab_size for t in body.tokens):
            raise ClientError(400, f"token ids must be in [0, {lm.config.vocab_size})", "tokens", "invalid_value")
        return {"prompt": lm.tokenizer.decode(body.tokens)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Continue text prompts (OpenAI legacy completions), with echo and logprobs."""
        return await server.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """Reply to a conversation through the model's chat template; `stream: true` sends server-sent events."""
        return await server.chat(body, request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
        """Mean-pooled final hidden states, L2-normalised."""
        return await server.embeddings(body, request)

    return app


def _publish_limits(app: FastAPI, names: list[str], max_len: int) -> None:
    """Put what this server accepts into its OpenAPI document: `model` is the served name, token counts are bounded
    by the context (clients and schema-driven fuzzers then send what can succeed)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for props in (c.get("properties", {}) for c in schema.get("components", {}).get("schemas", {}).values()):
                if "model" in props:
                    props["model"] = {"type": "string", "enum": names, "title": "Model"}
                for field in ("max_tokens", "max_completion_tokens"):
                    for option in props.get(field, {}).get("anyOf", [props.get(field, {})]):
                        if option.get("type") == "integer":
                            option["maximum"] = max_len
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|.*[\[\]-].*)$")


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(message, param, code) for pydantic's errors: the first one, naming the field as OpenAI does."""
    if not errors:
        return "invalid request", None, None
    err = errors[0]
    # pydantic names the branch of a union in the location ("stop.list[constrained-str].0"); OpenAI's param is the
    # field path alone
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON", None, "invalid_json"
    param = ".".join(loc) or None
    if err.get("type") == "missing" and param:
        return f"missing required parameter {param!r}", param, "missing_required_parameter"
    msg = str(err.get("msg", "invalid value"))
    return (f"invalid value for {param!r}: {msg}" if param else msg), param, "invalid_value"


# ----------------------------------------------------------------------------------------------------------------------


class _Server:
    def __init__(self, lm: LanguageModel, engine: Engine, opts: ServeOptions, metrics: Metrics) -> None:
        self.lm, self.engine, self.opts, self.metrics = lm, engine, opts, metrics
        self.created = int(time.time())
        self.fingerprint = f"plinth-{lm.config.n_layer}l-{lm.config.d_model}d"
        self.names = [opts.name, *(n for n, _ in opts.adapters)]  # index i: adapter i of the engine (0: the base)

    def model_card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "plinth",
                "max_model_len": self.engine.max_len}
        if name != self.opts.name:
            card["parent"] = card["root"] = self.opts.name  # vLLM's fields for a LoRA adapter on a base
        return card

    def check_model(self, name: str) -> int:
        """The engine's adapter index for a `model` field (0: the base); 404 for a name this server does not serve."""
        try:
            return self.names.index(name)
        except ValueError:
            served = ", ".join(repr(n) for n in self.names)
            raise ClientError(404, f"the model {name!r} does not exist; this server serves {served}",
                              "model", "model_not_found") from None

    def _common(self, body: Any) -> None:
        self.check_model(body.model)
        bad = unsupported_field(body)
        if bad:
            raise ClientError(400, f"{bad!r} is not supported by this server", bad, "unsupported_parameter")

    def _params(self, body: Any, prompt_len: int, max_tokens: int | None, param: str, logprobs: int | None) -> Params:
        budget = self.engine.max_len - prompt_len
        if budget < 0 or (max_tokens is not None and max_tokens > budget):
            asked = max_tokens if max_tokens is not None else 0
            raise ClientError(400, f"this model's context is {self.engine.max_len} tokens; the prompt has "
                                   f"{prompt_len} and {asked} more were asked for: shorten the prompt or lower "
                                   f"max_tokens", param, "context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        if top_p == 0.0 or temperature < SAMPLING_EPS:
            # top_p 0: only the most likely token has any mass; a vanishing temperature would overflow the logits
            temperature = 0.0
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return Params(max_tokens=budget if max_tokens is None else max_tokens, temperature=temperature,
                       top_k=body.top_k or 0, top_p=top_p, seed=body.seed, presence=body.presence_penalty,
                       frequency=body.frequency_penalty, stop=[s for s in stop if s], logprobs=logprobs,
                      ignore_eos=body.ignore_eos, adapter=self.check_model(body.model))

    # ------------------------------------------------------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self._common(body)
        if body.best_of not in (None, 1, body.n):
            raise ClientError(400, "best_of other than n is not supported", "best_of", "unsupported_parameter")
        prompts = self._prompt_ids(body.prompt)
        if len(prompts) * body.n > 64:
            raise ClientError(400, "at most 64 choices per request (prompts x n)", "n", "invalid_value")
        longest = max(len(p) for p in prompts)
        params = self._params(body, longest, body.max_tokens, "max_tokens", body.logprobs)
        if body.echo and body.logprobs is not None:
            params.prompt_logprobs = body.logprobs
        rid = f"cmpl-{uuid.uuid4().hex}"
        seqs = [(p, i * body.n + j) for i, p in enumerate(prompts) for j in range(body.n)]
        run = Run(self, request, [p for p, _ in seqs], params, body.n).start()
        fmt = CompletionFormat(self, rid, body, seqs)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(run, fmt, include_usage)
        return await fmt.whole(run)

    def _prompt_ids(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            return self.lm.encode_prompts([prompt])
        if not prompt:
            raise ClientError(400, "the prompt list is empty", "prompt", "invalid_value")
        if all(isinstance(p, str) for p in prompt):
            return self.lm.encode_prompts(list(prompt))
        rows = [prompt] if all(isinstance(t, int) for t in prompt) else list(prompt)
        vocab = self.lm.config.vocab_size
        for row in rows:
            if not row:
                raise ClientError(400, "a prompt of token ids is empty", "prompt", "invalid_value")
            if any(not 0 <= t < vocab for t in row):
                raise ClientError(400, f"token ids must be in [0, {vocab})", "prompt", "invalid_value")
        return [list(r) for r in rows]

    async def chat(self, body: ChatRequest, request: Request) -> Any:
        self._common(body)
        if body.response_format is not None and body.response_format.type != "text":
            raise ClientError(400, "only response_format type 'text' is supported", "response_format",
                              "unsupported_parameter")
        messages = []
        for m in body.messages:
            content = m.content if isinstance(m.content, str) or m.content is None else "".join(
                p.text for p in m.content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        try:
            ids = self.lm.chat_ids(messages)
        except PlinthError as e:
            raise ClientError(400, str(e), "messages", "invalid_value") from None
        if body.max_tokens is not None and body.max_completion_tokens is not None \
                and body.max_tokens != body.max_completion_tokens:
            raise ClientError(400, "max_tokens and max_completion_tokens disagree: give one", "max_tokens",
                              "invalid_value")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        k = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs and not body.logprobs:
            raise ClientError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
        params = self._params(body, len(ids), max_tokens, "messages", k)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        run = Run(self, request, [ids] * body.n, params, body.n).start()
        fmt = ChatFormat(self, rid, body, len(ids))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(run, fmt, include_usage)
        return await fmt.whole(run)

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Any:
        adapter = self.check_model(body.model)
        inputs = body.input
        if isinstance(inputs, str):
            rows = [self.lm.encode(inputs)]
        elif inputs and all(isinstance(x, str) for x in inputs):
            rows = [self.lm.encode(x) for x in inputs]
        else:
            rows = self._prompt_ids(inputs)
        if len(rows) > 256:
            raise ClientError(400, "at most 256 inputs per request", "input", "invalid_value")
        for row in rows:
            if not row:
                raise ClientError(400, "an input is empty", "input", "invalid_value")
            if len(row) > self.engine.max_len:
                raise ClientError(400, f"an input has {len(row)} tokens; this model's context is "
                                       f"{self.engine.max_len}", "input", "context_length_exceeded")
        loop = asyncio.get_running_loop()
        futures = []
        jobs = []
        for row in rows:
            fut = loop.create_future()
            futures.append(fut)

            def done(vec, err, fut=fut):
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result((vec, err)))

            try:
                jobs.append(self.engine.embed(EmbedRequest(row, done, adapter=adapter)))
            except QueueFull as e:
                for j in jobs:
                    j.cancel()
                raise busy(self.opts.retry_after, e) from None
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), self.opts.timeout)
        except asyncio.TimeoutError:
            for j in jobs:
                j.cancel()
            raise ClientError(504, f"the request took longer than {self.opts.timeout:g} s", None, "timeout") from None
        data = []
        for i, (vec, err) in enumerate(results):
            if vec is None:
                raise ClientError(500, f"embedding failed: {err}", None, "server_error")
            emb: Any = vec
            if body.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(r) for r in rows)
        self.metrics.prompt_tokens.inc(n)
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": n, "total_tokens": n}}
