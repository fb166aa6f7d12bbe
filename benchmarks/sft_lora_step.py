"""One SFT training step on SmolLM2-135M (builtin:smollm2-135m-instruct): Plinth LoRA, Plinth full fine-tuning, and
`transformers` + `peft` LoRA with the same weights, settings and data.

    .venv/bin/python benchmarks/sft_lora_step.py            # 2 warm-up + 5 timed steps per setup (long on 2 cores)
    .venv/bin/python benchmarks/sft_lora_step.py --quick    # 1 warm-up + 2 timed steps

Each setup runs in its own subprocess (so peak RSS is its own: the process's `ru_maxrss` after the steps, minus
nothing: it includes the ~0.5 GB of Python + torch + loaded weights every setup pays), three times, interleaved
(A B C A B C ...), and the median step time over all timed steps is reported. A step is what the shared training run
does: forward on a batch of 4 rows x 256 tokens, loss summed over assistant tokens, backward, AdamW step, zero_grad.
Data: rows of examples/sft/sotu_presidents.jsonl rendered with the model's chat template, packed into 256-token rows
(Plinth's SFT batches), attended with plain causal attention in every setup (transformers has no segment ids; Plinth's
block-diagonal mask is not timed here); the transformers setup gets the very same (x, y) tensors. Each side's loss is
what its training computes: Plinth's `sft_loss` (logits at the assistant positions only), transformers' logits at
every position then the cross-entropy masked to the assistant positions (the same value).
LoRA: rank 16, alpha 32, dropout 0.05, all seven projection matrices.
fp32 on CPU, no torch.compile (both eager).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SETUPS = ("plinth-lora", "plinth-full", "hf-peft-lora")
BATCH, SEQ = 4, 256


def _batch(lm):
    from plinth.data.sft import load_sft_data
    from plinth.training.sft import SFTBatches

    s = lm.settings
    data = load_sft_data(REPO / "examples" / "sft" / "sotu_presidents.jsonl", s.chat_template, lm.tokenizer, SEQ,
                         s.bos_token, s.eos_token, val_fraction=0.0)
    x, y, seg = SFTBatches(data.train, BATCH, seed=0, pad_id=0, packed_len=SEQ).next_batch()
    return x, y, seg


def run_setup(name: str, warmup: int, steps: int) -> dict:
    """Time `steps` optimizer steps of setup `name` after `warmup` untimed ones; return times and peak RSS."""
    import torch
    import torch.nn.functional as F

    import plinth
    from plinth.adapt.lora import apply_lora
    from plinth.config import LoraOptions
    from plinth.training.optim import make_adamw
    from plinth.training.sft import sft_loss

    torch.manual_seed(0)
    lm = plinth.load("builtin:smollm2-135m-instruct", device="cpu")
    x, y, _ = _batch(lm)
    model = lm.model.float().train()
    opts = LoraOptions(rank=16, alpha=32.0, dropout=0.05)
    seg = torch.zeros(0, dtype=torch.long)  # plain causal attention (see the module docstring)
    if name == "plinth-lora":
        apply_lora(model, opts)
        loss_fn = lambda: sft_loss(model, (x, y, seg))[0]  # noqa: E731
    elif name == "plinth-full":
        model.requires_grad_(True)
        loss_fn = lambda: sft_loss(model, (x, y, seg))[0]  # noqa: E731
    else:
        import peft
        import transformers

        from plinth.models.hf import hf_config_from_gpt

        config = transformers.LlamaConfig(**{k: v for k, v in hf_config_from_gpt(model.config).items()
                                             if k not in ("architectures", "model_type")})
        hf = transformers.LlamaForCausalLM(config)
        hf.load_state_dict(model.state_dict(), strict=False)
        hf.tie_weights()
        del model, lm
        model = peft.get_peft_model(hf, peft.LoraConfig(r=opts.rank, lora_alpha=opts.alpha,
                                                        lora_dropout=opts.dropout, target_modules=opts.targets))
        model.train()
        # what a transformers + peft SFT loop computes: the logits at every position, then the masked loss
        loss_fn = lambda: F.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(), y.flatten(),  # noqa: E731
                                          ignore_index=-100, reduction="sum")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = make_adamw(model, 1e-4, 0.0, (0.9, 0.95))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = loss_fn()
        (loss / (y != -100).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"setup": name, "times": times, "peak_mib": peak_mib, "trainable": trainable,
            "tokens": int(x.numel()), "targets": int((y != -100).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warmup, steps = (1, 2) if args.quick else (2, 5)
    if args.one:
        print(json.dumps(run_setup(args.one, warmup, steps)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from _bench import print_machine_header, print_table

    print_machine_header("SFT step on SmolLM2-135M: Plinth LoRA / full vs transformers + peft LoRA",
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, list[dict]] = {s: [] for s in SETUPS}
    for _ in range(1 if args.quick else args.rounds):
        for s in SETUPS:
            proc = subprocess.run([sys.executable, __file__, "--one", s, *(["--quick"] if args.quick else [])],
                                  capture_output=True, text=True, check=True)
            results[s].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows, ref = [], None
    for s in SETUPS:
        times = [t for r in results[s] for t in r["times"]]
        med = statistics.median(times)
        rate = results[s][0]["tokens"] / med
        ref = rate if s == "hf-peft-lora" else ref
        rows.append([s, f"{results[s][0]['trainable'] / 1e6:.2f}M", f"{med:.2f}", f"{rate:.0f}",
                     f"{max(r['peak_mib'] for r in results[s]):.0f}", len(times)])
    for row in rows:
        row.insert(4, f"{float(row[3]) / ref:.2f}x")
    print_table(["setup", "trainable", "step s (median)", "tok/s", "vs hf+peft", "peak RSS MiB", "timed steps"],
                rows)


if __name__ == "__main__":
    main()
