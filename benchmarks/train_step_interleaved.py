"""Plinth's default training step against a plain PyTorch GPT, and against Plinth at other git revisions: all in ONE
process, steps interleaved, so machine drift hits every variant alike.

    .venv/bin/python benchmarks/train_step_interleaved.py                      # shapes a,b; this tree vs baseline
    .venv/bin/python benchmarks/train_step_interleaved.py --revs 2cfdd8c,WORK  # + Plinth as of commit 2cfdd8c
    .venv/bin/python benchmarks/train_step_interleaved.py --quick

Variants: `baseline` (the nanoGPT-style GPT of train_throughput.py: LayerNorm, GELU, learned positions, SDPA, torch's
default AdamW), `WORK` (the plinth package of this working tree, through `training.run.train_step` with the LM
objective, i.e. what `plinth pretrain` runs with default settings: eager, fp32 on a CPU without bf16 units), and any
git revision (its `plinth/` exported with `git archive` and imported under another name; both the current step API
and the pre-refactor one, `training.lm.train_step`, are driven). Each round times one step of every variant, in a
rotating order; the table gives medians over rounds. Same seed, same shapes, same data for all.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _bench import OtherCpu, load_avg, print_table
from train_throughput import (
    BETAS,
    GRAD_CLIP,
    LR,
    SEED,
    SHAPES,
    WEIGHT_DECAY,
    baseline_step,
    batch_sampler,
    build_baseline,
    char_data,
    print_header,
)

REPO = Path(__file__).resolve().parents[1]


def export_revision(rev: str, root: Path) -> str:
    """Export `plinth/` at git revision `rev` into `root` as package `plinth_<sha>`; return the package name."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    name = f"plinth_{sha}"
    data = subprocess.run(["git", "archive", rev, "plinth"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(root / "_x", filter="data")
    (root / "_x" / "plinth").rename(root / name)
    pattern = re.compile(r"(?<![\w.])plinth(?=\.|\s+import\b)")  # `plinth.x`, `from plinth import`, "plinth.x"
    for path in (root / name).rglob("*.py"):
        path.write_text(pattern.sub(name, path.read_text()))
    return name


def plinth_variant(package: str, shape: dict, next_batch):
    """(model, step) for a plinth package: the current API (training.run) or the pre-refactor one (training.lm)."""
    import torch

    optim = importlib.import_module(f"{package}.training.optim")
    device = torch.device("cpu")
    torch.manual_seed(SEED)
    kwargs = dict(vocab_size=shape["vocab"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                  n_kv_head=shape["n_head"], d_model=shape["d_model"], seq_len=shape["seq_len"])
    try:
        run = importlib.import_module(f"{package}.training.run")
    except ModuleNotFoundError:
        run = None
    if run is not None:
        models = importlib.import_module(f"{package}.models")
        lm = importlib.import_module(f"{package}.training.lm")
        model = models.GPT(models.GPTConfig(**kwargs))
        opt = optim.make_adamw(model, LR, WEIGHT_DECAY, BETAS)
        objective = run.Objective("pretrain", lm.lm_loss, type("B", (), {"next_batch": staticmethod(next_batch)})())
        return model, lambda: run.train_step(model, model, opt, objective, 1, device, "fp32", GRAD_CLIP).loss
    config = importlib.import_module(f"{package}.config")
    gpt = importlib.import_module(f"{package}.models.gpt")
    lm = importlib.import_module(f"{package}.training.lm")
    model = gpt.GPT(config.ModelConfig(**kwargs))
    opt = optim.make_adamw(model, LR, WEIGHT_DECAY, BETAS)
    return model, lambda: lm.train_step(model, model, opt, next_batch, 1, device, "fp32", GRAD_CLIP)[0]


def measure(shape_name: str, packages: dict[str, str], rounds: int, seconds: float, data,
            clock=time.perf_counter) -> list[list]:
    import torch

    shape = SHAPES[shape_name]
    variants = {}
    torch.manual_seed(SEED)
    base = build_baseline(shape["n_layer"], shape["n_head"], shape["d_model"], shape["seq_len"], shape["vocab"])
    bopt = torch.optim.AdamW([{"params": [p for p in base.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                              {"params": [p for p in base.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=LR, betas=BETAS)
    base_batches = batch_sampler(data, shape["batch"], shape["seq_len"], SEED)
    variants["baseline"] = lambda: baseline_step(base, bopt, base_batches, "fp32")
    for label, package in packages.items():
        _, step = plinth_variant(package, shape, batch_sampler(data, shape["batch"], shape["seq_len"], SEED))
        variants[label] = step
    names = list(variants)
    for name in names:  # warm-up: thread pools, allocator, first-call dispatch
        for _ in range(2):
            variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    meter, start, r = OtherCpu(), time.perf_counter(), 0
    while r < rounds and (r < 5 or time.perf_counter() - start < seconds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no variant always runs first
        for name in order:
            t = clock()
            losses[name].append(variants[name]())
            times[name].append(clock() - t)
        r += 1
    other = meter.cores()
    tokens = shape["batch"] * shape["seq_len"]
    base_ms = statistics.median(times["baseline"]) * 1e3
    first_plinth = next((n for n in names if n != "baseline"), None)
    ref_ms = statistics.median(times[first_plinth]) * 1e3 if first_plinth else None
    rows = []
    for name in names:
        ms = statistics.median(times[name]) * 1e3
        q1, q3 = statistics.quantiles(times[name], n=4)[0] * 1e3, statistics.quantiles(times[name], n=4)[2] * 1e3
        rows.append([f"({shape_name}) {name}", f"{ms:.1f}", f"{q1:.1f}-{q3:.1f}", f"{tokens / ms * 1e3:,.0f}",
                     f"{base_ms / ms:.3f}", f"{ref_ms / ms:.3f}" if ref_ms else "-",
                     f"{losses[name][0]:.3f}->{losses[name][-1]:.3f}", str(len(times[name])), f"{other:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="a,b", help="comma-separated shapes (a, b; see train_throughput.py)")
    ap.add_argument("--revs", default="WORK", help="comma-separated git revisions; WORK = this working tree")
    ap.add_argument("--rounds", type=int, default=200, help="at most this many rounds per shape")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop a shape after this long (at least 5 rounds)")
    ap.add_argument("--quick", action="store_true", help="shape a, 5 rounds")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default: one per core)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time steps by this thread's CPU time (with --threads 1): robust when other processes share "
                         "the cores, since time spent descheduled is not counted")
    args = ap.parse_args()
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time needs --threads 1 (other threads' CPU time is not this thread's)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print_header("Interleaved training-step benchmark (benchmarks/train_step_interleaved.py)")
    data, desc = char_data()
    print(f"data      {desc}\n")
    with tempfile.TemporaryDirectory(prefix="plinth-revs-") as tmp:
        sys.path.insert(0, tmp)
        packages = {}
        for rev in [r.strip() for r in args.revs.split(",") if r.strip()]:
            packages[rev if rev == "WORK" else f"plinth@{rev}"] = "plinth" if rev == "WORK" else \
                export_revision(rev, Path(tmp))
        shapes = ["a"] if args.quick else [s.strip() for s in args.shapes.split(",")]
        rows = []
        for s in shapes:
            rows += measure(s, packages, 5 if args.quick else args.rounds, 0 if args.quick else args.seconds, data,
                            clock=time.thread_time if args.cpu_time else time.perf_counter)
    first = next(iter(packages))
    print_table(["variant", "step ms (median)", "IQR ms", "tok/s", "speed vs baseline",
                 f"speed vs {first}", "loss first->last", "steps", "other CPU"], rows)
    print(("\nStep times are this thread's CPU time (--cpu-time, 1 thread).\n" if args.cpu_time else "\n")
          + "speed = baseline (or reference) median step time / this variant's; > 1 means faster. IQR = interquartile "
          "range of the step times.\nother CPU = cores used by other processes while the shape ran (0 = the machine "
          f"was ours). Load avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
