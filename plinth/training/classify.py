"""Supervised image classification (CNN or ViT): cross-entropy on class labels over a prepared image set, handed to
the shared training run; validation accuracy as it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plinth.common import PlinthError, pick_device, seed_everything
from plinth.config import ClassifierTrainConfig, to_dict, validate
from plinth.data.image_prep import ImageBatches
from plinth.data.images import Preprocess
from plinth.evaluate.vision import classifier_accuracy
from plinth.models import build_model, find_preset, make_config
from plinth.pipelines.vision import ImageClassifier
from plinth.training.image_runs import absolute_paths, open_training_set, write_assets
from plinth.training.run import Objective, RunSpec, train


def classification_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Summed cross-entropy over the batch's labelled images (label -1 is ignored) and how many there were."""
    logits = model(batch["pixels"])  # (B, n_classes)
    labels = batch["labels"]
    loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    counted = labels >= 0
    acc = (logits.argmax(1)[counted] == labels[counted]).float().mean().item() if counted.any() else 0.0
    return loss, counted.sum(), {"train_acc": acc}


def train_classifier(cfg: ClassifierTrainConfig) -> dict[str, Any]:
    """Train a CNN/ViT classifier on a prepared image set's labels; returns the run summary (with val accuracy)."""
    validate(cfg, "classifier train")
    cfg = absolute_paths(cfg)
    pick_device(cfg.system.device)
    images, train_split = open_training_set(cfg)
    classes = images.seen_classes
    if not classes or (train_split.labels < 0).all():
        raise PlinthError(f"{images.root}: no class labels; classification needs a set with classes (one sub-folder "
                          "per class, a `label` column, or a labelled built-in)")
    family = find_preset(cfg.model)[0].name
    if family not in ("cnn", "vit"):
        raise PlinthError(f"--model {cfg.model}: classification trains a cnn or vit model, not {family}")
    mcfg = make_config(cfg.model, cfg.arch, where="arch", n_classes=len(images.classes))
    seed_everything(cfg.system.seed)
    model = build_model(mcfg)
    run_dir = Path(cfg.run.out_dir)
    assets = write_assets(run_dir, mcfg.image_size, images.classes)
    pre = Preprocess(mcfg.image_size)
    batches = ImageBatches(train_split, cfg.optim.batch_size, cfg.system.seed, pre, cfg.data.augment, text_fn=None,
                           crop_scale=(cfg.data.crop_scale, 1.0))
    val = images.split("val") if len(images.split("val")) else None

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        was = m.training
        result = classifier_accuracy(ImageClassifier(m, pre, images.classes), val, cfg.data.eval_images)
        m.train(was)
        return {"accuracy": result["accuracy"]}

    objective = Objective("classify", classification_loss, batches, evaluate if val is not None else None,
                          units_in=lambda b: int(b["pixels"].shape[0]), unit="img",
                          flops_per_unit=model.flops_per_image())
    print(f"model {mcfg.name} ({mcfg.family}): {len(images.classes)} classes, {len(train_split)} training images, "
          f"{mcfg.image_size}px", flush=True)
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets,
                   paths={"images": Path(cfg.data.images)})
    return train(model, objective, spec)
