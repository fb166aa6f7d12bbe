"""Serving: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over a continuous-batching engine.

`engine.py` knows token ids only; `api.py` (routes), `run.py` (a request's sequences), `formats.py` (OpenAI's
response shapes), `guard.py` (API key, body limit, CORS, request counting) and `metrics.py` do the HTTP side;
`server.py` is `plinth serve`; `client.py` is `plinth chat --server`. The web libraries are the optional extra
`serve`; importing this package does not need them.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import importlib

    where = {"Engine": "plinth.serve.engine", "create_app": "plinth.serve.api", "ServeOptions": "plinth.serve.api",
             "serve": "plinth.serve.server", "RemoteChatSession": "plinth.serve.client"}
    if name not in where:
        raise AttributeError(f"module 'plinth.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(where[name]), name)


__all__ = ["Engine", "RemoteChatSession", "ServeOptions", "create_app", "serve"]
