"""A second objective through the shared training run, as one small file: a prompt-masked language-model loss.

Each example is a window of the tiny corpus split into a "prompt" (the first half) and a "response" (the rest); only
response tokens are predicted. This is the shape of supervised fine-tuning, and proves the seam: a new objective is
a loss and a batch source handed to `plinth.training.run.train`, with resume, signals and checkpoints for free.

    python -m tests.objectives.prompt_masked_lm SHARDS TOKENIZER OUT_DIR MAX_STEPS
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plinth.config import OptimConfig, RunConfig, SystemConfig
from plinth.data.shards import TokenShards
from plinth.models import build_model, preset
from plinth.training.run import Objective, RunSpec, train

IGNORE = -100


def masked_lm_loss(model, batch):
    """Summed cross-entropy over response tokens only (targets of prompt positions are IGNORE)."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (y != IGNORE).sum(), {"response_tokens": float((y != IGNORE).sum())}


class PromptResponseBatches:
    """Batch i is a pure function of (seed, i), so the whole position is one integer."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int):
        self.shards, self.seq_len, self.batch_size, self.seed, self.index = shards, seq_len, batch_size, seed, 0

    def next_batch(self):
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        starts = rng.integers(0, len(self.shards) - self.seq_len, size=self.batch_size)
        rows = np.stack([self.shards.window(int(s), self.seq_len + 1) for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
        prompt_len = torch.from_numpy(rng.integers(2, self.seq_len // 2, size=self.batch_size))  # (B,)
        y[torch.arange(self.seq_len)[None, :] < prompt_len[:, None] - 1] = IGNORE  # predict the response only
        return x, y

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def run(shards: str, tokenizer: str, out_dir: str, max_steps: int) -> dict:
    torch.manual_seed(0)
    train_split = TokenShards(Path(shards) / "train")
    model = build_model(preset("test", vocab_size=train_split.vocab_size, seq_len=32))
    objective = Objective("prompt-masked-lm", masked_lm_loss, PromptResponseBatches(train_split, 32, 4, seed=3))
    spec = RunSpec(OptimConfig(lr=1e-2, warmup_steps=2, batch_size=4, grad_accum=2),
                   RunConfig(out_dir=out_dir, max_steps=max_steps, ckpt_every=3, log_every=1, progress=False),
                   SystemConfig(device="cpu", precision="fp32"), assets={"tokenizer.json": Path(tokenizer)})
    return train(model, objective, spec)


if __name__ == "__main__":
    torch.set_num_threads(1)
    summary = run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    sys.exit(0 if summary["signal"] is None else 128 + summary["signal"])
