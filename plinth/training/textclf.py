"""Transfer learning: a classification head on a pretrained backbone's pooled features, trained by the shared run
(`plinth finetune classify`). The objective is cross-entropy over labelled texts; the builder loads the backbone (a
Plinth run, an imported HF Llama folder, a GGUF file, `builtin:NAME`, or the MiniLM/BERT encoder), applies freezing
or LoRA before the run, and after it scores the final checkpoint on the held-out rows: accuracy, macro-F1, per-class
scores, a confusion-matrix PNG and report.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plinth.adapt.freeze import HEAD, freeze
from plinth.adapt.lora import apply_lora
from plinth.common import (
    PlinthError,
    atomic_write_json,
    atomic_write_text,
    autocast,
    count_parameters,
    human_count,
    pick_device,
    resolve_precision,
    seed_everything,
)
from plinth.config import LORA_TARGETS, ClassifyTextConfig, to_dict, validate
from plinth.data.captions import pad_right
from plinth.data.labelled import LabelledData, load_labelled
from plinth.evaluate.classification import classification_scores, evaluate_classifier, plot_confusion
from plinth.models.io import build_empty, load_state
from plinth.models.textclf import TextClassifier, TextClassifierConfig
from plinth.pipelines import load
from plinth.pipelines.classifier import CLASSIFIER, TextClassifierPipeline, TextEncoding
from plinth.training.run import Objective, RunSpec, train

BERT_LORA_TARGETS = ["query", "key", "value", "dense"]


def classify_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int,
                                                                                     dict[str, float]]:
    """Summed cross-entropy of a batch (ids, mask, labels) and its number of examples; training accuracy."""
    ids, mask, labels = batch
    logits = model(ids, mask)  # (B, n_classes)
    acc = (logits.argmax(-1) == labels).float().mean().item()
    return F.cross_entropy(logits, labels, reduction="sum"), int(labels.numel()), {"train_acc": acc}


class ClassBatches:
    """Labelled rows (token ids, class) in a fresh seeded order each epoch, right-padded into batches.

    The position is (epoch, index in that epoch's order), so a resumed run draws the same batches.
    """

    def __init__(self, rows: list[tuple[list[int], int]], batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        chosen = []
        for _ in range(self.batch_size):
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            chosen.append(self.rows[int(self._order[self.index])])
            self.index += 1
        ids, mask = pad_right([r for r, _ in chosen], 0)
        return ids, mask, torch.tensor([y for _, y in chosen], dtype=torch.long)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()


@dataclasses.dataclass
class Backbone:
    """A pretrained backbone ready to wrap: its config mapping, its tensors under `backbone.*`, how texts encode."""

    name: str
    config: dict
    tensors: dict[str, torch.Tensor]
    encoding: TextEncoding


def _bert_folder(model: str) -> Path | None:
    if model == "minilm":
        from plinth.models.bert import minilm_folder

        return minilm_folder()
    path = Path(model).expanduser()
    cfg = path / "config.json"
    if path.is_dir() and cfg.is_file():
        try:
            if json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "bert":
                return path
        except (OSError, ValueError):
            return None
    return None


def load_backbone(model: str, max_len: int) -> Backbone:
    """The backbone named by `model`: `minilm` or an HF BERT folder (mean pooling), or anything `plinth.load` reads as
    a language model (last-token pooling). PlinthError when it is neither."""
    from plinth.models.bert import hf_bert_tensors
    from plinth.models.registry import config_to_dict

    folder = _bert_folder(model)
    if folder is not None:
        config, tensors = hf_bert_tensors(folder)
        if not (folder / "tokenizer.json").is_file():
            raise PlinthError(f"{folder}: no tokenizer.json beside the encoder's weights")
        enc = TextEncoding([], "bert", min(max_len, config.seq_len),
                           tokenizer_json=(folder / "tokenizer.json").read_text(encoding="utf-8"))
        tensors = {f"backbone.{k}": v for k, v in tensors.items() if not k.startswith("pooler.")}
        return Backbone(model, config_to_dict(config), tensors, enc)
    lm = load(model, device="cpu")
    if type(lm).__name__ != "LanguageModel":
        raise PlinthError(f"{model}: holds a {type(lm).__name__}; a classifier needs a language model or a BERT "
                          "encoder (minilm) as its backbone")
    s = lm.settings
    eos = s.eos_token_ids[0] if s.eos_token_ids else (lm.tokenizer.eos_id if lm.tokenizer.eos_id >= 0 else None)
    enc = TextEncoding([], "decoder", min(max_len, lm.config.seq_len),
                       bos_id=s.bos_token_id if s.add_bos_token else None, eos_id=eos,
                       tokenizer_json=lm.tokenizer.backend.to_str())
    tensors = {"backbone." + k.removeprefix("model."): v for k, v in lm.model.state_dict().items()
               if k.startswith("model.") and "lora_" not in k}
    return Backbone(str(model), config_to_dict(lm.config), tensors, enc)


def build_classifier(backbone: Backbone, n_classes: int, seed: int) -> TextClassifier:
    """The classifier with the backbone's pretrained weights and a fresh head (seeded)."""
    config = TextClassifierConfig(name=backbone.name, backbone=backbone.config, n_classes=n_classes,
                                  max_len=backbone.encoding.max_len)
    model = build_empty(config)
    seed_everything(seed)
    head = torch.nn.Linear(model.score.in_features, n_classes)
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    load_state(model, {**backbone.tensors, "score.weight": head.weight.data, "score.bias": head.bias.data},
               backbone.name)
    return model.float()


def adapt_model(model: TextClassifier, cfg: ClassifyTextConfig) -> list[str]:
    """Apply freezing or LoRA (the head always trains with LoRA); return the names that train."""
    if not cfg.lora.rank:
        trainable = freeze(model, cfg.freeze)
        if not trainable:
            raise PlinthError(f"--freeze {cfg.freeze}: freezes every parameter; nothing would train")
        return trainable
    if cfg.freeze not in ("none", "all-but-head"):
        raise PlinthError("--freeze with --lora.rank: LoRA already freezes the backbone (only its adapters and the "
                          "head train); leave --freeze at none")
    lora = cfg.lora
    if model.config.pooling == "mean" and lora.targets == LORA_TARGETS:
        lora = dataclasses.replace(lora, targets=BERT_LORA_TARGETS)
    apply_lora(model.backbone, lora)  # the backbone only: the head is never wrapped
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(HEAD))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _lora_for_checkpoint(model: TextClassifier, cfg: ClassifyTextConfig):
    """The adapter options as they apply to the whole classifier (layer names are relative to any module)."""
    lora = cfg.lora
    if model.config.pooling == "mean" and lora.targets == LORA_TARGETS:
        lora = dataclasses.replace(lora, targets=BERT_LORA_TARGETS)
    return lora


def prepare_classify(cfg: ClassifyTextConfig) -> tuple[Backbone, LabelledData, TextClassifier, list[str]]:
    """Everything checked and built before a file is written: the data, the backbone, the adapted model."""
    validate(cfg, "finetune classify")
    if not cfg.model:
        raise PlinthError("finetune classify: give the backbone (a run, model folder, HF folder, .gguf, builtin:NAME "
                          "or minilm)")
    if not cfg.data:
        raise PlinthError("finetune classify: give the labelled texts with --data FILE.jsonl (or "
                          "builtin:sotu-spoken_written)")
    data = load_labelled(cfg.data, cfg.text_field, cfg.label_field, cfg.val_data, cfg.val_fraction, cfg.system.seed,
                         cfg.max_rows)
    if not data.val:
        raise PlinthError(f"{cfg.data}: no held-out rows (raise --val_fraction or give --val_data)")
    backbone = load_backbone(cfg.model, cfg.max_len)
    backbone.encoding.classes = data.classes
    model = build_classifier(backbone, len(data.classes), cfg.system.seed)
    backbone.tensors = {}  # copied into the model: drop the loaded language model's weights (one copy in memory)
    trainable = adapt_model(model, cfg)
    return backbone, data, model, trainable


def _write_assets(out: Path, encoding: TextEncoding, model: TextClassifier, cfg: ClassifyTextConfig) -> dict:
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    encoding.write(assets)
    names = [CLASSIFIER, "tokenizer.json"]
    if cfg.lora.rank:
        from plinth.adapt.lora import ADAPTER_CONFIG, write_adapter_config

        write_adapter_config(assets, _lora_for_checkpoint(model, cfg), cfg.model)
        names.append(ADAPTER_CONFIG)
    return {name: assets / name for name in names}


def finetune_classify(cfg: ClassifyTextConfig) -> dict[str, Any]:
    """Train a classification head (and whatever `--freeze`/LoRA leave trainable) on labelled texts; returns the
    run's summary with trainable/total parameters and held-out accuracy and macro-F1. Writes confusion.png and
    report.md beside it. Every checkpoint loads with `plinth.load` as a `TextClassifierPipeline`."""
    backbone, data, model, trainable = prepare_classify(cfg)
    out = Path(cfg.run.out_dir).expanduser().resolve()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out)))
    precision = resolve_precision(cfg.system.precision, pick_device(cfg.system.device))
    enc = backbone.encoding
    train_rows = [(ids, y) for ids, (_, y) in zip(enc.ids([t for t, _ in data.train]), data.train)]
    val_ids = enc.ids([t for t, _ in data.val])
    batches = ClassBatches(train_rows, cfg.optim.batch_size, cfg.system.seed)
    model.train()

    @torch.no_grad()
    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        device = next(m.parameters()).device
        preds, loss = [], 0.0
        for i in range(0, len(val_ids), cfg.optim.batch_size):
            ids, mask = pad_right(val_ids[i:i + cfg.optim.batch_size], 0)
            labels = torch.tensor([y for _, y in data.val[i:i + cfg.optim.batch_size]], device=device)
            with autocast(device, precision):
                logits = m(ids.to(device), mask.to(device))
            loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            preds += logits.argmax(-1).tolist()
        m.train()
        s = classification_scores([y for _, y in data.val], preds, data.classes)
        return {"loss": loss / len(data.val), "accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}

    objective = Objective("classify", classify_loss, batches, evaluate,
                          units_in=lambda b: int(b[1].sum()), unit="tok")
    n_total, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
    pooling = model.config.pooling
    how = (f"LoRA rank {cfg.lora.rank} + head" if cfg.lora.rank else f"freeze {cfg.freeze}")
    print(f"finetune classify: {len(data.train)} training / {len(data.val)} held-out texts, {len(data.classes)} "
          f"classes ({', '.join(data.classes[:6])}{', ...' if len(data.classes) > 6 else ''}); {model.config.pooling}-"
          f"token pooling; {how}: {human_count(n_train)} of {human_count(n_total)} parameters train"
          + (f"; skipped {dict(data.skipped)}" if data.skipped else ""), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    assets = _write_assets(out, enc, model, cfg)
    paths = {} if cfg.data.startswith("builtin:") else {"data": Path(cfg.data).resolve()}
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets, paths=paths)
    summary = train(model, objective, spec)
    del model, objective  # the final report scores the checkpoint as `plinth.load` reads it: one copy in memory
    summary.update({"trainable_parameters": n_train, "total_parameters": n_total,
                    "trainable_share": n_train / n_total, "freeze": cfg.freeze, "lora_rank": cfg.lora.rank,
                    "pooling": pooling, "backbone": backbone.name, **data.report()})
    summary.update(_final_report(out, data, summary, cfg))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _final_report(out: Path, data: LabelledData, summary: dict, cfg: ClassifyTextConfig) -> dict[str, Any]:
    """Score the run's newest checkpoint (as `plinth.load` returns it) on the held-out rows; confusion.png,
    report.md. Returns the summary fields."""
    pipe = load(out, device=cfg.system.device)
    if not isinstance(pipe, TextClassifierPipeline):
        raise PlinthError(f"{out}: the checkpoint did not load as a text classifier")
    scores = evaluate_classifier(pipe, data.val)
    png = plot_confusion(scores["confusion"], data.classes, out / "confusion.png",
                         f"held-out: accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
    lines = [f"# finetune classify: {Path(out).name}", "",
             f"- backbone: `{summary['backbone']}` ({summary['pooling']}-token pooling)",
             f"- data: `{cfg.data}` ({data.report()['train_examples']} training, {len(data.val)} held-out, balanced; "
             f"skipped: {dict(data.skipped) or 'none'})",
             "- adaptation: " + (f"LoRA rank {cfg.lora.rank} + head" if cfg.lora.rank else f"--freeze {cfg.freeze}"),
             f"- trainable parameters: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
             f"({100 * summary['trainable_share']:.2f}%)",
             f"- steps: {summary.get('steps')} ({summary.get('status')})", "",
             f"**Held-out accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}** "
             f"(n = {scores['n']}; chance {1 / len(data.classes):.3f})", "",
             "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
              for c, r in scores["per_class"].items()]
    lines += ["", f"![confusion matrix]({png.name})", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"], "per_class": scores["per_class"],
            "confusion": scores["confusion"], "report": str(out / "report.md"), "confusion_png": str(png)}
