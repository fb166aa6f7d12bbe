"""A real `plinth serve` app on 127.0.0.1 in a thread (uvicorn on a free port), for the serving tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import torch

from plinth.models import GPT, preset
from plinth.pipelines.text import LanguageModel
from tests.lm_builders import char_tokenizer


class Running:
    """A server running in this process: its base URL and its engine."""

    def __init__(self, app, server, thread, port: int) -> None:
        self.app, self.server, self.thread, self.port = app, server, thread, port
        self.url = f"http://127.0.0.1:{port}"
        self.engine = app.state.server.engine

    def wait_idle(self, timeout: float = 5.0) -> float:
        """Seconds until the engine has no live or waiting sequence (raises after `timeout`)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.engine.stats()
            if s["active"] == 0 and s["waiting"] == 0:
                return time.monotonic() - t0
            time.sleep(0.01)
        raise AssertionError(f"engine still busy after {timeout} s: {self.engine.stats()}")


@contextlib.contextmanager
def running(lm: LanguageModel, **options) -> Iterator[Running]:
    """Serve `lm` (ServeOptions fields as keywords; name defaults to 'tiny') until the block ends."""
    import uvicorn

    from plinth.serve.api import ServeOptions, create_app

    options.setdefault("name", "tiny")
    app = create_app(lm, ServeOptions(**options))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if time.monotonic() - t0 > 20 or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Running(app, server, thread, port)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def random_lm(seed: int = 0, seq_len: int = 256) -> LanguageModel:
    """A randomly initialised 2-layer model (real attention, no planted answers) with the test char tokenizer."""
    tok = char_tokenizer()
    torch.manual_seed(seed)
    model = GPT(preset("test", vocab_size=tok.vocab_size, seq_len=seq_len)).eval()
    return LanguageModel(model, tok, None)
