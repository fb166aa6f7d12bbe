"""Render a model's Jinja chat template the way transformers' `apply_chat_template(..., tokenize=False)` does.

Templates come with downloaded models and are untrusted code, so they run in jinja2's immutable sandbox. The
environment matches transformers': trim_blocks and lstrip_blocks, the loopcontrols extension, a `{% generation
%}` tag (transformers uses it to mask assistant tokens; here it only renders its body), `raise_exception`,
`strftime_now`, and a `tojson` filter that does not HTML-escape and takes json.dumps' options.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from plinth.common import PlinthError

# Names a message's reasoning may come under; transformers fills "reasoning_content" and "thinking" from them.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja's own tojson HTML-escapes <, >, & and ' -- wrong for prompts, and not what transformers does
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _prepare(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the messages as transformers hands them to a template.

    Keys whose value is None are dropped (templates test `'key' in message`, and would print "None"), and a
    reasoning given under any of its names is also offered as `thinking` and `reasoning_content`.
    """
    prepared = []
    for message in messages:
        if not isinstance(message, dict):
            raise PlinthError(f"chat message must be a mapping, got {type(message).__name__}")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_KEYS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    bos_token: str | None,
    eos_token: str | None,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """The prompt text `template` makes of `messages`, identical to transformers' apply_chat_template.

    `tools` are JSON-schema dicts; `extra` is passed to the template as further variables (e.g. pad_token,
    enable_thinking). A template that fails to parse or calls raise_exception gives a one-line PlinthError.
    """
    if not messages:
        raise PlinthError("chat has no messages")
    if tools is not None and not all(isinstance(tool, dict) for tool in tools):
        raise PlinthError("chat tools must be JSON-schema mappings")
    variables = {"bos_token": bos_token, "eos_token": eos_token, **extra}
    try:
        return _compile(template).render(
            messages=_prepare(messages),
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as error:
        raise PlinthError("chat template: " + " ".join(str(error).split())) from None
