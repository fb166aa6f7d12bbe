"""`plinth serve`: load a model, build the app, run it under uvicorn until SIGTERM/Ctrl-C, then drain.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and lets requests in flight finish (streams included)
for up to `drain_seconds`; then the app's lifespan stops the engine, which ends anything left with a clean error
event, and the process exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from plinth.common import PlinthError
from plinth.config import ServeConfig

SWITCH_INTERVAL = float(os.environ.get("PLINTH_SWITCH_INTERVAL", "0.001"))


def _import_web():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise PlinthError(f"plinth serve needs the 'serve' extra ({e.name} is missing): "
                          "pip install -e '.[serve]'") from None
    return uvicorn


def served_name(cfg: ServeConfig) -> str:
    """The model's name in the API: --name, else the model folder's (or file's) name."""
    if cfg.name:
        return cfg.name
    if cfg.model.startswith("builtin:"):
        return cfg.model.split(":", 1)[1]
    return Path(cfg.model.rstrip("/")).stem or "plinth"


def options_from(cfg: ServeConfig):
    from plinth.serve.api import ServeOptions

    return ServeOptions(name=served_name(cfg), api_key=cfg.api_key or os.environ.get("PLINTH_API_KEY", ""),
                        max_batch=cfg.max_batch, max_queue=cfg.max_queue, prefill_chunk=cfg.prefill_chunk,
                        max_len=cfg.max_len, timeout=cfg.timeout, max_body_bytes=cfg.max_body_bytes,
                        cors_origins=tuple(cfg.cors_origins), adapters=adapter_pairs(cfg.adapter))


def adapter_pairs(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=DIR` words -> ((name, dir), ...); PlinthError naming the word that is not of that form."""
    pairs = []
    for spec in specs:
        name, eq, folder = spec.partition("=")
        if not eq or not name.strip() or not folder.strip():
            raise PlinthError(f"--adapter {spec!r}: write NAME=DIR (the name requests use as `model`, then the "
                              "adapter folder)")
        if not Path(folder).is_dir():
            raise PlinthError(f"--adapter {spec!r}: {folder} is not a folder")
        pairs.append((name.strip(), folder))
    return tuple(pairs)


def serve(cfg: ServeConfig) -> int:
    """Serve `cfg.model` until stopped; returns 0 after a clean drain. PlinthError for bad options."""
    uvicorn = _import_web()
    import torch

    from plinth.pipelines import load
    from plinth.pipelines.text import LanguageModel
    from plinth.serve.api import create_app

    if not cfg.model:
        raise PlinthError("serve: give a model (a run, model folder, .gguf file or builtin:NAME)")
    opts = options_from(cfg)
    sock = _bind(cfg.host, cfg.port)  # before loading: a taken port fails in a second, not after the model loads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # The engine thread and the event loop share the GIL: at the default 5 ms switch interval a token can wait that
    # long to reach its stream; 1 ms hands it over sooner.
    sys.setswitchinterval(SWITCH_INTERVAL)
    lm = load(cfg.model, device=cfg.device)
    if not isinstance(lm, LanguageModel):
        raise PlinthError(f"{cfg.model}: plinth serve serves language models, not {type(lm).__name__}")
    if opts.max_len and opts.max_len > lm.config.seq_len:
        raise PlinthError(f"--max_len {opts.max_len} is longer than the model's context ({lm.config.seq_len})")
    app = create_app(lm, opts)
    host, port = sock.getsockname()[:2]
    key = "on" if opts.api_key else "off"
    engine = app.state.server.engine
    c, w = lm.config, next(lm.model.parameters())
    kv_max = 2 * c.n_layer * c.n_kv_head * c.head_dim * w.element_size() * engine.max_len * cfg.max_batch
    served = ", ".join(repr(n) for n in app.state.server.names)
    print(f"serving {served} at http://{host}:{port}/v1 (API key {key}; batch {cfg.max_batch}, "
          f"queue {cfg.max_queue}, context {engine.max_len}, KV cache at most {kv_max / 2**20:.0f} MiB)",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(cfg.drain_seconds) or None,
                            access_log=False)
    _server_class(uvicorn)(config).run(sockets=[sock])
    print("server stopped", file=sys.stderr, flush=True)
    return 0


def _server_class(uvicorn):
    class DrainingServer(uvicorn.Server):
        """uvicorn's server, except that a drained shutdown exits 0: uvicorn re-raises the signal it caught once it
        has shut down (so the process dies of SIGTERM); a supervisor should see a clean stop instead."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for requests in flight
            self.should_exit = True

    return DrainingServer


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PlinthError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
