"""Captioning and visual question answering: next-token loss on the caption (or the answer to a question about the
image) after the image prefix, on the shared training run. Only caption/answer tokens are predicted; the start token
and the question are context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plinth.artifacts import resolve_checkpoint
from plinth.common import PlinthError, pick_device, seed_everything
from plinth.config import CaptionerTrainConfig, to_dict, validate
from plinth.data.captions import CaptionTokenizer
from plinth.data.image_prep import ImageBatches, ImageSet
from plinth.data.images import Preprocess
from plinth.models import build_model, find_preset, make_config
from plinth.models.io import load_state, read_model_config, read_safetensors
from plinth.pipelines.vision import VQA_PROMPT
from plinth.training.image_runs import absolute_paths, caption_tokenizer, open_training_set, write_assets
from plinth.training.run import Objective, RunSpec, train

IGNORE = -100


def caption_text_fn(captions: CaptionTokenizer, vqa_fraction: float):
    """Each image's text: a question and its answer (with probability `vqa_fraction`, where it has pairs) or a
    caption; (input_ids, targets) (B, T), right-padded, targets IGNORE outside the caption/answer."""
    tok, eos, cap = captions.tokenizer, captions.eos_id, captions.seq_len

    def text(records: list[dict], rng: np.random.Generator) -> dict[str, Any]:
        xs, ys = [], []
        for r in records:
            if r["qa"] and rng.random() < vqa_fraction:
                q, a = r["qa"][int(rng.integers(len(r["qa"])))]
                prompt, target = [eos] + tok.encode(VQA_PROMPT.format(q)), tok.encode(f" {a}") + [eos]
            else:
                caption = r["captions"][int(rng.integers(len(r["captions"])))] if r["captions"] else ""
                prompt, target = [eos], tok.encode(caption) + [eos]
            seq = (prompt + target)[: cap + 1]
            xs.append(seq[:-1])
            ys.append(([IGNORE] * (len(prompt) - 1) + target)[: len(seq) - 1])
        T = max(len(x) for x in xs)
        ids = torch.zeros(len(xs), T, dtype=torch.long)
        targets = torch.full((len(xs), T), IGNORE, dtype=torch.long)
        for i, (x, y) in enumerate(zip(xs, ys)):
            ids[i, : len(x)] = torch.tensor(x)
            targets[i, : len(y)] = torch.tensor(y)
        return {"input_ids": ids, "targets": targets}

    return text


def caption_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Summed next-token cross-entropy over caption/answer tokens, and their number."""
    logits = model(batch["pixels"], batch["input_ids"])  # (B, T, V)
    y = batch["targets"]
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (y != IGNORE).sum(), {}


def _vision_init(cfg: CaptionerTrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """(image-encoder fields, `vision_model.*` weights without the prefix) of --init_vision_from, or empties."""
    if not cfg.init_vision_from:
        return {}, None
    folder = resolve_checkpoint(cfg.init_vision_from)
    src = read_model_config(folder)
    if src.family == "vit":
        fields = dict(image_size=src.image_size, patch_size=src.patch_size, vision_n_layer=src.n_layer,
                      vision_n_head=src.n_head, vision_d_model=src.d_model, vision_d_ff=src.d_ff,
                      hidden_act=src.hidden_act)
    elif src.family in ("clip", "captioner"):
        fields = {k: getattr(src, k) for k in ("image_size", "patch_size", "vision_n_layer", "vision_n_head",
                                               "vision_d_model", "vision_d_ff", "hidden_act")}
    else:
        raise PlinthError(f"--init_vision_from {cfg.init_vision_from}: a {src.family} model has no ViT image tower")
    tensors = read_safetensors(folder / "model.safetensors")
    vision = {k.removeprefix("vision_model."): v for k, v in tensors.items() if k.startswith("vision_model.")}
    return fields, vision


DECODER_FIELDS = ("n_layer", "n_head", "n_kv_head", "d_model", "head_dim", "d_ff", "rope_theta", "norm_eps",
                  "tie_embeddings", "attention_bias", "qkv_bias", "vocab_size")


def _decoder_init(cfg: CaptionerTrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, Path | None]:
    """(decoder fields, GPT weights, its tokenizer.json) of --init_decoder_from, or empties. The decoder's context
    grows by the image prefix; RoPE has no learned positions, so its weights still apply."""
    if not cfg.init_decoder_from:
        return {}, None, None
    folder = resolve_checkpoint(cfg.init_decoder_from)
    src = read_model_config(folder)
    if src.family != "gpt":
        raise PlinthError(f"--init_decoder_from {cfg.init_decoder_from}: a {src.family} model is not a Plinth "
                          "language model (train one with `plinth pretrain`, or import a Llama folder)")
    tok = folder / "tokenizer.json"
    if not tok.is_file():
        raise PlinthError(f"--init_decoder_from {cfg.init_decoder_from}: no tokenizer.json beside the model in "
                          f"{folder}; the decoder's own tokenizer is needed")
    if cfg.tokenizer:
        raise PlinthError("--tokenizer and --init_decoder_from both given: the imported decoder brings its own "
                          "tokenizer; drop --tokenizer")
    return {k: getattr(src, k) for k in DECODER_FIELDS}, read_safetensors(folder / "model.safetensors"), tok


def _evaluator(images: ImageSet, pre: Preprocess, captions: CaptionTokenizer, vqa_fraction: float, batch_size: int,
               eval_images: int):
    """Validation loss per caption/answer token on a fixed sample of validation images (both kinds of text)."""
    val = images.split("val")
    n = min(len(val), eval_images or len(val))
    fixed = ImageBatches(val, batch_size, 0, pre, augment=False, text_fn=caption_text_fn(captions, vqa_fraction))

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for i in range(max(1, n // batch_size)):
            b = fixed.batch_at(i)
            device = next(model.parameters()).device
            loss, c, _ = caption_loss(model, {k: v.to(device) for k, v in b.items()})
            total, count = total + float(loss), count + int(c)
        model.train(was)
        return {"loss": total / max(count, 1)}

    return evaluate if len(val) else None


def train_captioner(cfg: CaptionerTrainConfig) -> dict[str, Any]:
    """Train a captioner (captions, and answers where the set has question-answer pairs); returns the run summary."""
    validate(cfg, "captioner train")
    cfg = absolute_paths(cfg, "tokenizer", "init_vision_from", "init_decoder_from")
    pick_device(cfg.system.device)
    images, train_split = open_training_set(cfg)
    if find_preset(cfg.model)[0].name != "captioner":
        raise PlinthError(f"--model {cfg.model}: captioner train needs a captioner model, not "
                          f"{find_preset(cfg.model)[0].name}")
    run_dir = Path(cfg.run.out_dir)
    has_qa = any(r["qa"] for r in train_split.records)
    decoder_fields, decoder_tensors, decoder_tok = _decoder_init(cfg)
    tok_path = decoder_tok or caption_tokenizer(cfg.tokenizer, run_dir, images, cfg.vocab_size, with_qa=has_qa)
    vocab = CaptionTokenizer(tok_path, "decoder", 8).vocab_size
    if decoder_fields and vocab > decoder_fields["vocab_size"]:
        raise PlinthError(f"--init_decoder_from {cfg.init_decoder_from}: its tokenizer has {vocab} tokens but the "
                          f"model only {decoder_fields['vocab_size']}")
    vision_fields, vision_tensors = _vision_init(cfg)
    mcfg = make_config(cfg.model, cfg.arch, where="arch", **{"vocab_size": vocab, **decoder_fields},
                       **vision_fields)
    if mcfg.family != "captioner":
        raise PlinthError(f"--model {cfg.model}: captioner train needs a captioner model, not {mcfg.family}")
    captions = CaptionTokenizer(tok_path, "decoder", mcfg.seq_len)
    seed_everything(cfg.system.seed)
    model = build_model(mcfg)
    if vision_tensors is not None:
        load_state(model.vision_model, vision_tensors, cfg.init_vision_from)
    if decoder_tensors is not None:
        load_state(model.language_model, decoder_tensors, cfg.init_decoder_from)
    if cfg.freeze_vision:
        model.vision_model.requires_grad_(False)
    if cfg.freeze_decoder:  # gradients still flow through it to the projector (and the image encoder)
        model.language_model.requires_grad_(False)
    pre = Preprocess(mcfg.image_size)
    assets = {**write_assets(run_dir, mcfg.image_size), "tokenizer.json": tok_path}
    vqa = cfg.vqa_fraction if has_qa else 0.0
    batches = ImageBatches(train_split, cfg.optim.batch_size, cfg.system.seed, pre, cfg.data.augment,
                           caption_text_fn(captions, vqa), crop_scale=(cfg.data.crop_scale, 1.0))
    objective = Objective("caption", caption_loss, batches,
                          _evaluator(images, pre, captions, vqa, cfg.optim.batch_size, cfg.data.eval_images),
                          units_in=lambda b: int(b["pixels"].shape[0]), unit="img",
                          flops_per_unit=model.flops_per_image())
    print(f"model {mcfg.name}: image encoder {mcfg.vision_n_layer}x{mcfg.vision_d_model}"
          + (" (frozen)" if cfg.freeze_vision else "") + f", decoder {mcfg.n_layer}x{mcfg.d_model}"
          + (f" from {cfg.init_decoder_from}" if decoder_tensors is not None else "")
          + (" (frozen)" if cfg.freeze_decoder else "") + ", "
          f"{mcfg.n_prefix} image tokens; {'captions and questions' if vqa else 'captions'}", flush=True)
    spec = RunSpec(cfg.optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets,
                   paths={"images": Path(cfg.data.images), "tokenizer": tok_path})
    return train(model, objective, spec)
