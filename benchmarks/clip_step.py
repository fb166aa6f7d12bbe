"""A contrastive training step of a small CLIP: Plinth against the same model built from `transformers`' `CLIPModel`,
in ONE process, steps interleaved (so machine drift and neighbours hit both alike); and the image loader alone.

    nice -n 10 .venv/bin/python benchmarks/clip_step.py               # 32x32 images, batch 64, fp32 and bf16
    nice -n 10 .venv/bin/python benchmarks/clip_step.py --size 64 --patch 8
    nice -n 10 .venv/bin/python benchmarks/clip_step.py --quick
    nice -n 10 .venv/bin/python benchmarks/clip_step.py --profile    # where the step's CPU time goes, GEMM rate
    nice -n 10 .venv/bin/python benchmarks/clip_step.py --compile --precisions fp32   # + Plinth under torch.compile

Same shapes for both: ViT image tower (4 layers, width 128, 4 heads, MLP 512, GELU), text tower of 2 layers, width
128, 4 heads, captions of 16 tokens, vocabulary 1024, embedding 128, learned temperature. Plinth's text tower is its
decoder body (RMSNorm, RoPE, SwiGLU 352 wide); HF's is CLIP's text transformer with its MLP set to 528 so both text
towers hold the same number of weights. Same loss (symmetric InfoNCE, mean over the batch; HF's `return_loss=True`),
same optimizer (fused AdamW, decay on matrices), same data. Each step is timed by wall clock and by this thread's CPU
time (`time.thread_time`, one torch thread), which a busy neighbour cannot inflate; medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bench import OtherCpu, load_avg, print_machine_header, print_table  # noqa: E402

BATCH, SEQ, VOCAB = 64, 16, 1024


def build_plinth(size: int, patch: int):
    from plinth.models import build_model, preset

    return build_model(preset("clip-tiny", image_size=size, patch_size=patch, vocab_size=VOCAB, text_seq_len=SEQ))


def build_hf(size: int, patch: int):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=size, patch_size=patch, hidden_act="gelu"),
        text_config=dict(hidden_size=128, intermediate_size=528, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=VOCAB, max_position_embeddings=SEQ, hidden_act="gelu", bos_token_id=0,
                         eos_token_id=1, pad_token_id=0),
        projection_dim=128)
    return CLIPModel(cfg)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    from plinth.training.optim import make_adamw

    return make_adamw(model, 1e-3, 0.1, (0.9, 0.98))


def make_batch(size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(BATCH, 3, size, size, generator=g)
    ids = torch.randint(2, VOCAB, (BATCH, SEQ), generator=g)
    lengths = torch.randint(6, SEQ + 1, (BATCH,), generator=g)
    mask = torch.arange(SEQ)[None, :] < lengths[:, None]
    ids[torch.arange(BATCH), lengths - 1] = 1  # end-of-text id last, where HF's tower pools (eos_token_id = 1)
    return pixels, ids.masked_fill(~mask, 0), mask


def plinth_step(model, opt, batch, precision: str) -> float:
    from plinth.multimodal.contrastive import contrastive_loss

    pixels, ids, mask = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        img, txt, scale = model(pixels, ids, mask)
        loss, _ = contrastive_loss(img, txt, scale)
        loss = loss / BATCH
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def hf_step(model, opt, batch, precision: str) -> float:
    pixels, ids, mask = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(input_ids=ids, pixel_values=pixels, attention_mask=mask.long(), return_loss=True).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_step(fn, *args) -> tuple[float, float]:
    w, c = time.perf_counter(), time.thread_time()
    fn(*args)
    return time.perf_counter() - w, time.thread_time() - c


def bench_models(size: int, patch: int, precision: str, rounds: int, compiled: bool = False) -> list[list[object]]:
    torch.manual_seed(0)
    ours, hf = build_plinth(size, patch), build_hf(size, patch)
    n_ours, n_hf = (sum(p.numel() for p in m.parameters()) for m in (ours, hf))
    variants = {"plinth": (plinth_step, ours, adamw(ours)), "transformers": (hf_step, hf, adamw(hf))}
    if compiled:  # a third variant: a copy of Plinth's model under torch.compile (compile time reported apart)
        twin = build_plinth(size, patch)
        twin.load_state_dict(ours.state_dict())
        fn = torch.compile(twin)
        w, c = time.perf_counter(), time.thread_time()
        opt = adamw(twin)
        plinth_step(fn, opt, make_batch(size, 0), precision)
        print(f"torch.compile ({precision}): first step {time.perf_counter() - w:.0f} s wall, "
              f"{time.thread_time() - c:.0f} s CPU of this thread", flush=True)
        variants["plinth compiled"] = (plinth_step, fn, opt)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for r in range(rounds + 2):
        batch = make_batch(size, r)
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            fn, model, opt = variants[name]
            t = time_step(fn, model, opt, batch, precision)
            if r >= 2:  # two warm-up rounds
                times[name].append(t)
    rows = []
    for name, ts in times.items():
        wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        rows.append([name, precision, f"{size}x{size}/{patch}", f"{n_hf if name == 'transformers' else n_ours:,}",
                     f"{wall * 1000:.0f}", f"{BATCH / wall:.0f}", f"{cpu * 1000:.0f}", f"{BATCH / cpu:.0f}"])
    cpu_ratio = (statistics.median(t[1] for t in times["transformers"]) /
                 statistics.median(t[1] for t in times["plinth"]))
    wall_ratio = (statistics.median(t[0] for t in times["transformers"]) /
                  statistics.median(t[0] for t in times["plinth"]))
    rows.append(["plinth / transformers", precision, "", "", "", f"{wall_ratio:.2f}x", "", f"{cpu_ratio:.2f}x"])
    if compiled:
        hf_wall, hf_cpu = (statistics.median(t[i] for t in times["transformers"]) for i in (0, 1))
        c_wall, c_cpu = (statistics.median(t[i] for t in times["plinth compiled"]) for i in (0, 1))
        rows.append(["plinth compiled / transformers", precision, "", "", "", f"{hf_wall / c_wall:.2f}x", "",
                     f"{hf_cpu / c_cpu:.2f}x"])
    return rows


def bench_loader(size: int, n_batches: int) -> list[list[object]]:
    """Images/s of the training loader alone (random resized crop from the stored 48x48, normalise), and of
    `images prepare` decoding PNG files."""
    from PIL import Image

    from plinth.config import ImagesPrepareConfig
    from plinth.data.image_prep import ImageBatches, ImageSet, prepare_images
    from plinth.data.image_sources import draw_shapes
    from plinth.data.images import Preprocess

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "png" / "shapes"
        folder.mkdir(parents=True)
        import numpy as np

        for i in range(600):
            pixels, colour, kind, _ = draw_shapes(np.random.default_rng([0, i]))
            Image.fromarray(pixels).save(folder / f"{i}.png")
        t, c = time.perf_counter(), time.thread_time()
        prepare_images(ImagesPrepareConfig(inputs=[str(Path(tmp) / "png")], out=str(Path(tmp) / "set"), size=48,
                                           progress=False, val_fraction=0.0))
        wall, cpu = time.perf_counter() - t, time.thread_time() - c
        rows.append(["images prepare (decode 64x64 PNG, check, resize to 48, write)", f"{600 / wall:.0f}",
                     f"{600 / cpu:.0f}"])
        split = ImageSet(Path(tmp) / "set").split("train")
        for augment in (True, False):
            batches = ImageBatches(split, BATCH, 0, Preprocess(size), augment=augment)
            batches.next_batch()
            t, c = time.perf_counter(), time.thread_time()
            for _ in range(n_batches):
                batches.next_batch()
            wall, cpu = time.perf_counter() - t, time.thread_time() - c
            what = "random resized crop" if augment else "resize only"
            rows.append([f"training batches ({what} to {size}px, normalise, captions)",
                         f"{n_batches * BATCH / wall:.0f}", f"{n_batches * BATCH / cpu:.0f}"])
    return rows


def profile(size: int, patch: int, steps: int = 3) -> None:
    """Share of each step's CPU time in matrix multiplies (torch.profiler, self time of aten::mm/addmm/bmm), and the
    rate of the ViT's widest linear layer (tokens x 128 -> 512) alone, forward and backward, fp32."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    ours, hf = build_plinth(size, patch), build_hf(size, patch)
    for name, fn, model in (("plinth", plinth_step, ours), ("transformers", hf_step, hf)):
        opt = adamw(model)
        fn(model, opt, make_batch(size, 0), "fp32")  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(steps):
                fn(model, opt, make_batch(size, s + 1), "fp32")
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
        print(f"{name:13s} {steps} steps: {mm / total:.0%} of self CPU time in aten::mm/addmm/bmm")
    tokens = BATCH * ((size // patch) ** 2 + 1)
    layer = torch.nn.Linear(128, 512)
    x = torch.randn(tokens, 128, requires_grad=True)
    for _ in range(2):
        layer(x).sum().backward()
    c, n = time.thread_time(), 10
    for _ in range(n):
        layer(x).sum().backward()
    flops = 3 * 2 * tokens * 128 * 512 * n  # forward, grad of input, grad of weight
    print(f"linear {tokens}x128 -> 512, forward + backward: {flops / (time.thread_time() - c) / 1e9:.0f} GFLOP/s "
          f"(CPU time, one thread)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--quick", action="store_true", help="3 rounds, fp32 only, fewer loader batches")
    p.add_argument("--profile", action="store_true", help="only: where the CPU time goes, and the GEMM rate")
    p.add_argument("--compile", action="store_true", help="add Plinth's model under torch.compile as a third variant")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        return profile(args.size, args.patch)
    rounds = 3 if args.quick else args.rounds
    precisions = ["fp32"] if args.quick else args.precisions.split(",")
    import transformers

    print_machine_header("CLIP contrastive training step: Plinth vs transformers.CLIPModel",
                         f"torch {torch.__version__}, transformers {transformers.__version__}, 1 torch thread")
    meter = OtherCpu()
    rows = []
    for precision in precisions:
        rows += bench_models(args.size, args.patch, precision, rounds, args.compile)
    print(f"\nbatch {BATCH}, captions of {SEQ} tokens; medians over {rounds} interleaved rounds\n")
    print_table(["model", "precision", "image/patch", "parameters", "wall ms/step", "wall img/s", "CPU ms/step",
                 "CPU img/s"], rows)
    print()
    print_table(["image loader (1 thread)", "wall img/s", "CPU img/s"], bench_loader(args.size, 5 if args.quick
                                                                                       else 30))
    print(f"\nduring the run other processes used {meter.cores():.2f} cores on average; load avg {load_avg()}")


if __name__ == "__main__":
    main()
