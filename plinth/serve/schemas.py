"""Request bodies of the OpenAI-compatible API, as pydantic models: FastAPI validates each request against them (a
mistake becomes a 400 in OpenAI's error format, naming the field) and publishes them in `/openapi.json`.

Types are strict (`"5"` is not a number, `true` is not 1), ranges are OpenAI's, and fields OpenAI defines that
Plinth does not implement (`tools`, `logit_bias`, ...) are refused by name rather than silently ignored; unknown
fields are ignored, as OpenAI-compatible servers usually do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per request
# A stop string is matched against each new tail of the text: bounded, so matching stays cheap per token.
StopString = Annotated[str, Field(max_length=256)]
MAX_STOP = 16  # stop strings per request
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
SEED_MAX = 2**63 - 1

# Fields OpenAI defines that this server does not implement: refused with a 400 naming the field when set.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "suffix", "audio", "modalities",
               "prediction", "dimensions")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Options shared by completions and chat completions."""

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="keep only the k most likely tokens (0 = off; an extension)")
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = Field(False, description="keep generating past the model's stop tokens (vLLM's extension, "
                                               "for benchmarks)")


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, several texts, token ids, or several lists of token ids")
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Body):
    """POST /v1/embeddings."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=256)


class TokenizeRequest(_Body):
    """POST /tokenize (vLLM's extension, used by lm-eval's remote tokenizer)."""

    prompt: str = Field(max_length=1_000_000)
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    tokens: list[int] = Field(max_length=1_000_000)


def unsupported_field(body: BaseModel) -> str | None:
    """The first set field this server does not implement, if any."""
    extra: dict[str, Any] = body.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name) not in (None, [], {}):
            if name == "tool_choice" and extra[name] == "none":
                continue
            return name
    return None
