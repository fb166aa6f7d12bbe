"""The server's outer layer, before any route: API key (constant-time), body size limit, CORS (off unless origins
are given), requests counted by route and status, and every refusal in OpenAI's error format.

A plain ASGI middleware rather than FastAPI dependencies, so it covers every route (including unknown ones and the
OpenAPI document) and reads the body once, bounded, before FastAPI parses it.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = ("/health",)  # answered without an API key (load balancers, probes)
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def api_error(status: int, message: str, param: str | None = None, code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response in OpenAI's format."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, api_key: str = "", max_body_bytes: int = 1_000_000, metrics: Any = None,
                 cors_origins: tuple[str, ...] = ()) -> None:
        self.app: ASGIApp = app
        if cors_origins:
            self.app = CORSMiddleware(app, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                      allow_headers=["Authorization", "Content-Type"])
        self.key = api_key.encode("utf-8")
        self.max_body = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_counted)
        finally:
            if self.metrics is not None:
                self.metrics.count_request(scope.get("path", ""), status["code"])

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope.get("path") not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            if not hmac.compare_digest(_bearer(scope), self.key):
                await api_error(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", None,
                                "invalid_api_key")(scope, receive, send)
                return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await api_error(413, f"the request body is larger than {self.max_body} bytes", None,
                            "request_too_large")(scope, receive, send)
            return
        # Read the body now, bounded (a chunked upload has no content-length), then hand it on as one message.
        body = bytearray()
        more = scope.get("method") in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await api_error(413, f"the request body is larger than {self.max_body} bytes", None,
                                "request_too_large")(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later: the disconnect a streaming response listens for

        await self.app(scope, replay, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _bearer(scope: Scope) -> bytes:
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""

