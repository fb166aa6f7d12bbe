"""Plinth's training step against a plain PyTorch GPT, and against Plinth at other git revisions: all in ONE process,
steps interleaved, so machine drift hits every variant alike.

    .venv/bin/python benchmarks/train_step_interleaved.py                          # defaults vs baseline, shapes a,b
    .venv/bin/python benchmarks/train_step_interleaved.py --variants baseline:fp32,2cfdd8c:fp32,WORK:fp32
    .venv/bin/python benchmarks/train_step_interleaved.py --threads 1 --cpu-time   # robust on a shared machine
    .venv/bin/python benchmarks/train_step_interleaved.py --quick

A variant is SOURCE:PRECISION[+compile]. SOURCE is `baseline` (the nanoGPT-style GPT of train_throughput.py:
LayerNorm, GELU, learned positions, SDPA, torch's default AdamW, eager), `WORK` (this working tree's plinth, through
`training.run.train_step` with the LM objective: what `plinth pretrain` runs) or a git revision (its `plinth/`
exported with `git archive` and imported under another name; the pre-refactor step API `training.lm.train_step` is
driven too). PRECISION is fp32, bf16 (autocast) or `default` (what `precision auto` picks on this machine);
`+compile` wraps the model in torch.compile, as `system.compile` does for a run long enough to pay for it (compiling
happens during warm-up, outside the timing). `WORK:default+compile` is therefore the step of a long `plinth pretrain`
with default settings. Each round times one step of every variant, in a rotating order; tables give medians.
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
DEFAULT_VARIANTS = "baseline:fp32,baseline:bf16,WORK:fp32,WORK:bf16,WORK:default+compile"


def export_revision(rev: str, root: Path) -> str:
    """Export `plinth/` at git revision `rev` into `root` as package `plinth_<sha>`; return the package name."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    name = f"plinth_{sha}"
    if (root / name).exists():
        return name
    data = subprocess.run(["git", "archive", rev, "plinth"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(root / "_x", filter="data")
    (root / "_x" / "plinth").rename(root / name)
    pattern = re.compile(r"(?<![\w.])plinth(?=\.|\s+import\b)")  # `plinth.x`, `from plinth import`, "plinth.x"
    for path in (root / name).rglob("*.py"):
        path.write_text(pattern.sub(name, path.read_text()))
    return name


def plinth_step(package: str, shape: dict, next_batch, precision: str, compile_: bool):
    """A step function for a plinth package: the current API (training.run) or the pre-refactor one (training.lm)."""
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
        fwd = torch.compile(model) if compile_ else model
        opt = optim.make_adamw(model, LR, WEIGHT_DECAY, BETAS)
        objective = run.Objective("pretrain", lm.lm_loss, type("B", (), {"next_batch": staticmethod(next_batch)})())
        return lambda: run.train_step(model, fwd, opt, objective, 1, device, precision, GRAD_CLIP).loss
    config = importlib.import_module(f"{package}.config")
    gpt = importlib.import_module(f"{package}.models.gpt")
    lm = importlib.import_module(f"{package}.training.lm")
    model = gpt.GPT(config.ModelConfig(**kwargs))
    fwd = torch.compile(model) if compile_ else model
    opt = optim.make_adamw(model, LR, WEIGHT_DECAY, BETAS)
    return lambda: lm.train_step(fwd, model, opt, next_batch, 1, device, precision, GRAD_CLIP)[0]


def baseline_step_fn(shape: dict, next_batch, precision: str, compile_: bool):
    import torch

    torch.manual_seed(SEED)
    base = build_baseline(shape["n_layer"], shape["n_head"], shape["d_model"], shape["seq_len"], shape["vocab"])
    opt = torch.optim.AdamW([{"params": [p for p in base.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                             {"params": [p for p in base.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)
    fwd = torch.compile(base) if compile_ else base
    return lambda: baseline_step(fwd, opt, next_batch, precision)


def parse_variant(spec: str, default_precision: str) -> tuple[str, str, bool]:
    source, _, rest = spec.partition(":")
    precision, _, flag = (rest or "default").partition("+")
    if flag not in ("", "compile") or precision not in ("fp32", "bf16", "default"):
        raise SystemExit(f"bad variant {spec!r}: expected SOURCE:fp32|bf16|default[+compile]")
    return source, default_precision if precision == "default" else precision, flag == "compile"


def measure(shape_name: str, variant_specs: list[str], packages: dict[str, str], default_precision: str,
            rounds: int, seconds: float, data, clock=time.perf_counter) -> list[list]:
    shape = SHAPES[shape_name]
    steps = {}
    for spec in variant_specs:
        source, precision, compile_ = parse_variant(spec, default_precision)
        batches = batch_sampler(data, shape["batch"], shape["seq_len"], SEED)
        label = f"{source} {precision}" + (" compiled" if compile_ else "")
        if source == "baseline":
            steps[label] = baseline_step_fn(shape, batches, precision, compile_)
        else:
            steps[label] = plinth_step(packages[source], shape, batches, precision, compile_)
    names = list(steps)
    for name in names:  # warm-up: thread pools, allocator, compilation (excluded from timing)
        for _ in range(3):
            steps[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    meter, start, r = OtherCpu(), time.perf_counter(), 0
    while r < rounds and (r < 5 or time.perf_counter() - start < seconds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no variant always runs first
        for name in order:
            t = clock()
            losses[name].append(steps[name]())
            times[name].append(clock() - t)
        r += 1
    other = meter.cores()
    tokens = shape["batch"] * shape["seq_len"]
    ref_ms = statistics.median(times[names[0]]) * 1e3
    rows = []
    for name in names:
        ms = statistics.median(times[name]) * 1e3
        q = statistics.quantiles(times[name], n=4)
        loss = f"{losses[name][0]:.3f}->{losses[name][-1]:.3f}"
        rows.append([f"({shape_name}) {name}", f"{ms:.1f}", f"{q[0] * 1e3:.1f}-{q[2] * 1e3:.1f}",
                     f"{tokens / ms * 1e3:,.0f}", f"{ref_ms / ms:.3f}", loss, str(len(times[name])), f"{other:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="a,b", help="comma-separated shapes (a, b; see train_throughput.py)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="comma-separated SOURCE:PRECISION[+compile]; the first is the reference for the ratios")
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
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from plinth.common import resolve_precision

    print_header("Interleaved training-step benchmark (benchmarks/train_step_interleaved.py)")
    default_precision = resolve_precision("auto", torch.device("cpu"))
    data, desc = char_data()
    print(f"data      {desc}\ndefaults  precision auto -> {default_precision} on this machine; compile auto compiles "
          "runs with more than 2 minutes of training left\n")
    specs = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="plinth-revs-") as tmp:
        sys.path.insert(0, tmp)
        packages = {"WORK": "plinth"}
        for source in {v.partition(":")[0] for v in specs} - {"WORK", "baseline"}:
            packages[source] = export_revision(source, Path(tmp))
        shapes = ["a"] if args.quick else [s.strip() for s in args.shapes.split(",")]
        rows = []
        for s in shapes:
            rows += measure(s, specs, packages, default_precision, 5 if args.quick else args.rounds,
                            0 if args.quick else args.seconds, data,
                            clock=time.thread_time if args.cpu_time else time.perf_counter)
    print_table(["variant", "step ms (median)", "IQR ms", "tok/s", "speed vs first", "loss first->last", "steps",
                 "other CPU"], rows)
    print(("\nStep times are this thread's CPU time (--cpu-time, 1 thread).\n" if args.cpu_time else "\n")
          + "speed vs first = the first variant's median step time / this one's; > 1 means faster. IQR = "
          "interquartile range of the step times.\nother CPU = cores used by other processes while the shape ran (0 = "
          f"the machine was ours). Load avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
