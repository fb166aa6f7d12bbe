"""Supervised fine-tuning: the next-token loss on assistant tokens only, over rendered conversations, handed to the
shared training run. Full fine-tuning, or LoRA (`--lora.rank R`) applied to the model before the run.

The shift: an example's tokens t_0..t_{n-1} become inputs t_0..t_{n-2} and targets t_1..t_{n-1}; target j is kept
when token j+1 is an assistant token. So the first response token is trained (predicted from the last prompt token)
and no prompt token is (tests/test_sft.py checks both edges on the gradient).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plinth.adapt.lora import ADAPTER_CONFIG, apply_lora, base_fingerprint, save_adapter, write_adapter_config
from plinth.artifacts import CHAT_TEMPLATE, GENERATION, TOKENIZER
from plinth.common import PlinthError, atomic_write_json, pick_device, resolve_precision, seed_everything, warn
from plinth.config import SFTConfig, to_dict, validate
from plinth.data.sft import PLAIN_TEMPLATE, SFTData, SFTExample, load_sft_data
from plinth.models.generate import generate_tokens
from plinth.pipelines import load
from plinth.pipelines.text import LanguageModel
from plinth.training.run import Objective, RunSpec, train

IGNORE_INDEX = -100
SAMPLES = "samples.jsonl"


def example_arrays(ex: SFTExample) -> tuple[list[int], list[int]]:
    """Inputs and targets of one example after the shift: targets of non-assistant tokens are IGNORE_INDEX."""
    x = ex.ids[:-1]
    y = [t if keep else IGNORE_INDEX for t, keep in zip(ex.ids[1:], ex.trained[1:])]
    return x, y


def collate(examples: list[SFTExample], pad_id: int, packed_len: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch (x, y, segment_ids) of int64 tensors (B, T).

    Unpacked (`packed_len` 0): one example per row, right-padded to the longest (a causal model never attends to the
    padding after a token, so no mask is needed) and segment_ids is an empty tensor. Packed: examples are laid end to
    end in rows of `packed_len` tokens, a new row starting when the next example does not fit; each example is its own
    segment (the model keeps attention and RoPE positions inside it) and the padding another.
    """
    pairs = [example_arrays(e) for e in examples]
    if not packed_len:
        T = max(len(x) for x, _ in pairs)
        xs = [x + [pad_id] * (T - len(x)) for x, _ in pairs]
        ys = [y + [IGNORE_INDEX] * (T - len(y)) for _, y in pairs]
        return torch.tensor(xs), torch.tensor(ys), torch.zeros(0, dtype=torch.long)
    rows: list[tuple[list[int], list[int], list[int]]] = []
    for x, y in pairs:
        if not rows or len(rows[-1][0]) + len(x) > packed_len:
            rows.append(([], [], []))
        seg = len(rows[-1][0]) and rows[-1][2][-1] + 1
        rows[-1][0].extend(x)
        rows[-1][1].extend(y)
        rows[-1][2].extend([seg] * len(x))
    xs, ys, ss = [], [], []
    for x, y, s in rows:
        pad = packed_len - len(x)
        xs.append(x + [pad_id] * pad)
        ys.append(y + [IGNORE_INDEX] * pad)
        ss.append(s + [s[-1] + 1] * pad)
    return torch.tensor(xs), torch.tensor(ys), torch.tensor(ss)


def sft_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                dict[str, float]]:
    """Summed cross-entropy over the assistant targets of a batch (x, y, segment_ids) and their count.

    Logits are computed at the scored positions only (`GPT.forward(logits_at=...)`): the same loss as masking a full
    (B, T, vocab) tensor, without the vocabulary projection, softmax and gradients at the prompt tokens.
    """
    x, y, seg = batch
    scored = y != IGNORE_INDEX  # (B, T)
    logits = model(x, segment_ids=seg if seg.numel() else None, logits_at=scored)  # (N, V)
    loss = F.cross_entropy(logits, y[scored], reduction="sum")
    return loss, scored.sum(), {}


class SFTBatches:
    """Examples in a fresh seeded order each epoch; a packed batch takes examples until its rows are full.

    The position is (epoch, index in that epoch's order), plus the early-stopping record, so a resumed run draws the
    same batches and stops at the same evaluation as an uninterrupted one.
    """

    def __init__(self, examples: list[SFTExample], batch_size: int, seed: int, pad_id: int, packed_len: int = 0):
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.packed_len = packed_len
        self.epoch, self.index, self.drawn = 0, 0, 0  # drawn: batches handed out (optimizer steps x grad_accum)
        self.best_loss, self.best_step, self.bad_evals = float("inf"), 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def _peek(self) -> SFTExample:
        """The next example (starting the next epoch's order when this one is used up)."""
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        return self.examples[int(self._order[self.index])]

    def _take(self) -> SFTExample:
        ex = self._peek()
        self.index += 1
        return ex

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        self.drawn += 1
        if not self.packed_len:
            return collate([self._take() for _ in range(self.batch_size)], self.pad_id)
        chosen, rows, used = [], 1, 0
        while True:
            n = len(self._peek().ids) - 1
            if used + n > self.packed_len:  # the next example starts a new row (collate's rule)
                if rows == self.batch_size:
                    break
                rows, used = rows + 1, 0
            chosen.append(self._take())
            used += n
        return collate(chosen, self.pad_id, self.packed_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "drawn": self.drawn, "best_loss": self.best_loss,
                "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.drawn = int(state["epoch"]), int(state["index"]), int(state["drawn"])
        self.best_loss, self.best_step = float(state["best_loss"]), int(state["best_step"])
        self.bad_evals = int(state["bad_evals"])
        self._order = self._permutation()


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[SFTExample], pad_id: int, batch_size: int,
                 precision: str) -> tuple[float, int]:
    """Mean loss (nats per assistant token) over `examples`, and the number of tokens scored."""
    from plinth.common import autocast

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        x, y, seg = (t.to(device) for t in collate(examples[i:i + batch_size], pad_id))
        with autocast(device, precision):
            loss, n, _ = sft_loss(model, (x, y, seg))
        total, count = total + loss.item(), count + int(n)
    return total / max(count, 1), count


def _samples(model, lm: LanguageModel, examples: list[SFTExample], template: str, n_tokens: int) -> list[dict]:
    """Greedy replies to the first held-out prompts (the conversation up to its last assistant turn)."""
    out = []
    for ex in examples:
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        prompt = ex.messages[:last]
        ids = lm.chat_ids(prompt, template)[-(lm.config.seq_len - n_tokens):]
        steps = generate_tokens(model, [ids], n_tokens, temperature=0.0, eos_id=lm.stop_ids)
        new = [t[0] for t in steps if t[0] is not None and t[0] not in lm.stop_ids]
        out.append({"prompt": prompt[-1]["content"], "reference": ex.messages[last]["content"],
                    "reply": lm.tokenizer.decode(new)})
    return out


def _same(reply: str, reference: str) -> bool:
    """A reply matches its reference when equal after stripping and case-folding."""
    return reply.strip().casefold() == reference.strip().casefold()


def _before(out: Path, data: SFTData, evaluate, model: torch.nn.Module) -> dict[str, float]:
    """The held-out scores of the model before any training (stored in the run folder, so a resumed run reports the
    same); none without held-out examples."""
    path = out / "before.json"
    if not data.val:
        return {}
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    scores = evaluate(model, track=False)
    atomic_write_json(path, {k: v for k, v in scores.items() if not k.startswith("best")})
    return scores


def _template(cfg: SFTConfig, lm: LanguageModel) -> str:
    if cfg.template:
        try:
            return Path(cfg.template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PlinthError(f"{cfg.template}: cannot read the chat template ({e.strerror or e})") from None
    if lm.settings.chat_template:
        return lm.settings.chat_template
    warn(f"{cfg.model} has no chat template: using plain 'User:/Assistant:' turns (saved with the fine-tuned model)")
    return PLAIN_TEMPLATE


def _text_settings(lm: LanguageModel, template: str):
    """The base's text settings with the template used and an end-of-turn token (the tokenizer's EOS if unnamed)."""
    settings = dataclasses.replace(lm.settings, chat_template=template)
    if settings.eos_token is None and lm.tokenizer.eos_id >= 0:
        settings.eos_token = lm.tokenizer.decode([lm.tokenizer.eos_id])
        settings.eos_token_ids = sorted({*settings.eos_token_ids, lm.tokenizer.eos_id})
    return settings


def _write_assets(out: Path, lm: LanguageModel, settings, lora) -> dict[str, Path]:
    """tokenizer.json, generation.json, the chat template (and with LoRA the adapter's settings), written once into
    the run folder and copied into every checkpoint, so each checkpoint is a model folder `plinth chat` uses as is."""
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    lm.tokenizer.save(assets / TOKENIZER)
    settings.write(assets)
    names = [TOKENIZER, GENERATION, CHAT_TEMPLATE]
    if lora is not None:
        write_adapter_config(assets, lora, str(lm.path))
        names.append(ADAPTER_CONFIG)
    return {name: assets / name for name in names}


def prepare_sft(cfg: SFTConfig) -> tuple[LanguageModel, str, Any, SFTData]:
    """Load the base model and render the data: everything checked before a file is written."""
    validate(cfg, "finetune sft")
    if not cfg.model:
        raise PlinthError("finetune sft: give the model to fine-tune (a run, model folder, HF folder, .gguf or "
                          "builtin:NAME)")
    if not cfg.data:
        raise PlinthError("finetune sft: give the training conversations with --data FILE.jsonl")
    lm = load(cfg.model, device="cpu")
    template = _template(cfg, lm)
    settings = _text_settings(lm, template)
    max_len = min(cfg.max_len or lm.config.seq_len, lm.config.seq_len)
    bos_id = settings.bos_token_id if settings.add_bos_token else None
    data = load_sft_data(cfg.data, template, lm.tokenizer, max_len, settings.bos_token, settings.eos_token, bos_id,
                         cfg.val_data or None, cfg.val_fraction, cfg.system.seed)
    if cfg.patience and not data.val:
        raise PlinthError("finetune sft: --patience needs held-out examples (--val_data, or --val_fraction > 0)")
    return lm, template, settings, data


def finetune_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune a language model on conversations, the loss on assistant tokens only; returns the run's summary.

    With `lora.rank` > 0 only LoRA adapters train and the adapter is also written alone to `OUT/adapter`. Every
    checkpoint is a model folder (with LoRA: base + adapter layers, loaded as such by `plinth.load`). Resumes from the
    run folder's newest checkpoint; stops early after `patience` evaluations without a better held-out loss.
    """
    lm, template, settings, data = prepare_sft(cfg)
    out = Path(cfg.run.out_dir).expanduser().resolve()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out)))
    device = pick_device(cfg.system.device)
    precision = resolve_precision(cfg.system.precision, device)
    seed_everything(cfg.system.seed)
    model = lm.model.float().train()
    fingerprint = base_fingerprint(model) if cfg.lora.rank else ""
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    pad_id = settings.pad_token_id if settings.pad_token_id is not None else max(lm.tokenizer.eos_id, 0)
    packed = lm.config.seq_len if cfg.packing else 0
    batches = SFTBatches(data.train, cfg.optim.batch_size, cfg.system.seed, pad_id, packed)
    sample_lm = LanguageModel(lm.model, lm.tokenizer, lm.path, settings)
    lm.model.train()  # LanguageModel() switched it to eval mode

    def evaluate(m: torch.nn.Module, track: bool = True) -> dict[str, float]:
        m.eval()
        loss, n = heldout_loss(m, data.val, pad_id, cfg.optim.batch_size, precision)
        step = batches.drawn // cfg.optim.grad_accum
        if not track:  # the score before training: not a candidate for early stopping
            pass
        elif loss < batches.best_loss:
            batches.best_loss, batches.best_step, batches.bad_evals = loss, step, 0
        else:
            batches.bad_evals += 1
        result = {"loss": loss, "tokens": float(n), "best_loss": batches.best_loss,
                  "best_step": float(batches.best_step)}
        if cfg.samples:
            rows = _samples(m, sample_lm, data.val[:cfg.samples], template, cfg.sample_tokens)
            with open(out / SAMPLES, "a", encoding="utf-8") as f:  # a log, appended like metrics.jsonl
                for r in rows:
                    f.write(json.dumps({"step": step, **r}) + "\n")
            for r in rows:
                print(f"  sample @ step {step}: {r['prompt'][:60]!r} -> {r['reply'][:100]!r}", flush=True)
            result["sample_match"] = sum(_same(r["reply"], r["reference"]) for r in rows) / len(rows)
        m.train()
        return result

    def stop() -> str | None:
        if cfg.patience and batches.bad_evals >= cfg.patience:
            return (f"held-out loss not below {batches.best_loss:.4f} (step {batches.best_step}) for "
                    f"{batches.bad_evals} evaluations")
        return None

    objective = Objective("sft", sft_loss, batches, evaluate if data.val else None, stop=stop)
    out.mkdir(parents=True, exist_ok=True)
    assets = _write_assets(out, lm, settings, cfg.lora if cfg.lora.rank else None)
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets,
                   paths={"data": Path(cfg.data).resolve(), **({"val_data": Path(cfg.val_data).resolve()}
                                                                if cfg.val_data else {})})
    print(f"finetune sft: {len(data.train)} training / {len(data.val)} held-out conversations "
          f"({data.report()['train_trained_tokens']} assistant tokens); "
          + (f"LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}" if cfg.lora.rank else "full fine-tuning")
          + (f"; skipped {dict(data.skipped)}" if data.skipped else ""), flush=True)
    before = _before(out, data, evaluate, model)
    summary = train(model, objective, spec)
    summary.update(data.report())
    summary.update({f"before_val_{k}": v for k, v in before.items() if k in ("loss", "sample_match")})
    if cfg.lora.rank:
        summary.update(save_adapter(model, out / "adapter", cfg.lora, base=str(cfg.model), fingerprint=fingerprint,
                                    steps=summary["steps"]))
    atomic_write_json(out / "summary.json", summary)
    return summary
