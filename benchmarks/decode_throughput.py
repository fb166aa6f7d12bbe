"""Decoding throughput of Plinth's `generate_tokens` (KV cache, greedy) against HF `LlamaForCausalLM.generate`.

    .venv/bin/python benchmarks/decode_throughput.py            # full run (~1 minute on 2 cores)
    .venv/bin/python benchmarks/decode_throughput.py --quick    # smoke run: 40 new tokens, 2 repeats
    .venv/bin/python benchmarks/decode_throughput.py --profile  # torch.profiler top ops of both, batch 1

Both models have shape (a) of the training benchmark (4 layers, 4 heads, d_model 128, vocab 65) with a 256-token
context, and the same weights: the HF model is built from `plinth.models.io.to_hf_llama_config(cfg)` and loads the
Plinth state dict (the key names are HF's), so both compute the same function and their greedy tokens are compared.
Prompts are 16 tokens (tiny shakespeare characters when ../shared/data/tinyshakespeare.txt exists, else seeded
random ids); each call generates exactly 200 new tokens per row (no EOS). Timing covers the whole call, prefill
included; the median of the timed repeats is reported after a warm-up call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

from _bench import OtherCpu, load_avg, print_machine_header, print_table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
SHAPE = dict(vocab_size=65, n_layer=4, n_head=4, n_kv_head=4, d_model=128, seq_len=256)
PROMPT_LEN, NEW_TOKENS, BATCHES = 16, 200, (1, 16)
TARGET_RATIO_B1 = 2.0  # Plinth / HF tokens per second at batch 1, from the issue
SEED = 1337


# ----------------------------------------------------------------------------------------------------------------------
# Machine description (shared helpers live in _bench.py)


def print_header(title: str) -> None:
    import torch
    import transformers

    print_machine_header(title, f"python {platform.python_version()}, torch {torch.__version__} "
                                f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], float]:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` untimed ones, all the times, and the cores
    other processes used meanwhile."""
    for _ in range(warmup):
        fn()
    times, other = [], OtherCpu()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, other.cores()


# ----------------------------------------------------------------------------------------------------------------------
# Models and prompts


def build_models():
    """(Plinth GPT, HF LlamaForCausalLM) with identical weights, both fp32 in eval mode."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from plinth.config import ModelConfig
    from plinth.models.gpt import GPT
    from plinth.models.io import to_hf_llama_config

    transformers.logging.set_verbosity_error()
    cfg = ModelConfig(**SHAPE)
    torch.manual_seed(SEED)
    plinth_model = GPT(cfg).eval()
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_llama_config(cfg))).eval()
    missing, unexpected = hf.load_state_dict(plinth_model.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    hf.generation_config.eos_token_id = None  # exactly NEW_TOKENS per row, as Plinth with eos_id=None
    hf.generation_config.pad_token_id = 0
    return plinth_model, hf


def make_prompts(batch: int) -> tuple[list[list[int]], str]:
    import torch

    g = torch.Generator().manual_seed(SEED)
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")
        stoi = {c: i for i, c in enumerate(sorted(set(text)))}
        starts = torch.randint(len(text) - PROMPT_LEN, (batch,), generator=g).tolist()
        return [[stoi[c] for c in text[s : s + PROMPT_LEN]] for s in starts], "tiny shakespeare characters"
    return torch.randint(SHAPE["vocab_size"], (batch, PROMPT_LEN), generator=g).tolist(), "seeded random token ids"


def plinth_decode(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from plinth.models.generate import generate_tokens

    rows: list[list[int]] = [[] for _ in prompts]
    for step in generate_tokens(model, prompts, new_tokens, temperature=0, seed=SEED):
        for row, t in zip(rows, step):
            row.append(t)
    return rows


def hf_decode(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)  # (B, PROMPT_LEN): equal lengths, no padding
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens)
    return out[:, ids.shape[1] :].tolist()


# ----------------------------------------------------------------------------------------------------------------------


def profile(new_tokens: int) -> None:
    from torch.profiler import profile as torch_profile

    plinth_model, hf = build_models()
    prompts, _ = make_prompts(1)
    for name, fn in (("plinth generate_tokens", lambda: plinth_decode(plinth_model, prompts, new_tokens)),
                     ("HF LlamaForCausalLM.generate", lambda: hf_decode(hf, prompts, new_tokens))):
        fn()
        with torch_profile() as prof:
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
        print(f"\n## {name}, batch 1, {new_tokens} new tokens: {wall * 1e3:.0f} ms with the profiler on "
              f"({wall / new_tokens * 1e3:.2f} ms/token)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 new tokens, 2 timed repeats")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top ops at batch 1 and exit")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    new_tokens = 40 if args.quick else NEW_TOKENS
    repeats = 2 if args.quick else args.repeats
    print_header("Plinth decoding throughput (benchmarks/decode_throughput.py" + (" --quick)" if args.quick else ")"))
    if args.profile:
        profile(new_tokens)
        return
    plinth_model, hf = build_models()
    _, prompt_desc = make_prompts(1)
    print(f"model     {SHAPE}, {sum(p.numel() for p in plinth_model.parameters()) / 1e6:.2f} M parameters, fp32, "
          f"eval mode; HF attention: {hf.config._attn_implementation}")
    print(f"prompts   {PROMPT_LEN} tokens ({prompt_desc}), {new_tokens} new tokens per row, greedy, "
          f"median of {repeats} calls after 1 warm-up\n")

    rows, ratios = [], {}
    for batch in BATCHES:
        prompts, _ = make_prompts(batch)
        plinth_out = plinth_decode(plinth_model, prompts, new_tokens)
        hf_out = hf_decode(hf, prompts, new_tokens)
        same = sum(a == b for pr, hr in zip(plinth_out, hf_out) for a, b in zip(pr, hr))
        total = batch * new_tokens
        t_plinth, times_p, other_p = median_time(lambda p=prompts: plinth_decode(plinth_model, p, new_tokens), repeats)
        t_hf, times_h, other_h = median_time(lambda p=prompts: hf_decode(hf, p, new_tokens), repeats)
        ratios[batch] = t_hf / t_plinth
        for name, t, times, other in (("plinth generate_tokens", t_plinth, times_p, other_p),
                                      ("HF generate", t_hf, times_h, other_h)):
            rows.append([batch, name, f"{total / t:,.0f}", f"{t / new_tokens * 1e3:.2f}", f"{t * 1e3:,.0f}",
                         f"{(max(times) - min(times)) / t:.0%}",
                         f"{same}/{total}" if name.startswith("plinth") else "", f"{ratios[batch]:.2f}x"
                         if name.startswith("plinth") else "1", f"{other:.2f}"])
    print_table(["batch", "decoder", "tokens/s", "ms per step", "call ms (median)", "spread",
                 "tokens equal to HF", "Plinth/HF", "other CPU"], rows)
    ok = ratios[1] >= TARGET_RATIO_B1
    print(f"\nTarget: Plinth/HF >= {TARGET_RATIO_B1:g}x at batch 1 -> {ratios[1]:.2f}x: {'PASS' if ok else 'MISS'}")
    print("tokens/s = batch x new tokens / call time (prefill of the 16-token prompt included); "
          "'ms per step' = call time / new tokens;\nspread = (max-min)/median of the timed calls; other CPU = cores "
          "busy with other processes meanwhile (0 = machine was ours).")
    print(f"\nload avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
