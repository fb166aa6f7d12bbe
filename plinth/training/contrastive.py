"""Contrastive image-text pretraining (CLIP): symmetric InfoNCE with a learned temperature, on the shared run.

Accumulation for a contrastive loss is not the run's usual sum over micro-batches: every image's negatives are all
the captions of the step, so micro-batches must not be scored apart. `optim.batch_size` x `optim.grad_accum`
images make one contrastive batch; with `grad_accum` > 1 the loss uses gradient caching (Gao et al. 2021, "Scaling
Deep Contrastive Learning Batch Size under Memory Limited Setup"): embed every chunk without a graph, take the loss
and its gradient with respect to the embeddings on the whole batch, then re-run each chunk with a graph and
backpropagate those cached gradients. The weights get exactly the full-batch gradient while only one chunk's
activations are alive at a time (tested against the plain full batch). Dropout-free towers make the re-run exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.artifacts import TOKENIZER
from plinth.common import PlinthError, pick_device, seed_everything, warn
from plinth.config import ClipTrainConfig, OptimConfig, to_dict, validate
from plinth.data.captions import CaptionTokenizer
from plinth.data.image_prep import ImageBatches, ImageSet, pick_captions
from plinth.data.images import Preprocess
from plinth.evaluate.vision import retrieval, zero_shot
from plinth.models import build_model, find_preset, make_config
from plinth.models.bert import hf_bert_tensors, minilm_folder
from plinth.models.clip import CLIP
from plinth.models.io import load_state
from plinth.multimodal.contrastive import caption_groups, contrastive_loss
from plinth.pipelines.vision import CLIPPipeline
from plinth.training.image_runs import absolute_paths, caption_tokenizer, open_training_set, write_assets
from plinth.training.run import Objective, RunSpec, train


def clip_text_fn(captions: CaptionTokenizer):
    """The batch's text: one caption per image as right-padded ids and mask, and ids of identical captions."""

    def text(records: list[dict], rng: np.random.Generator) -> dict[str, Any]:
        chosen = pick_captions(records, rng)["captions"]
        ids, mask = captions(chosen)
        return {"input_ids": ids, "attention_mask": mask, "groups": caption_groups(chosen)}

    return text


def contrastive_loss_fn(chunks: int):
    """`loss_fn(model, batch)` for the run: the summed symmetric InfoNCE of the whole batch, its size, metrics.

    With `chunks` > 1 the gradient is computed by gradient caching (see the module doc) inside this function; the
    returned loss is then a detached leaf, so the run's `backward()` adds nothing.
    """

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        pixels, ids, mask, groups = batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["groups"]
        B = pixels.shape[0]
        if chunks == 1:
            img, txt, scale = model(pixels, ids, mask)
            loss, metrics = contrastive_loss(img, txt, scale, groups)
            return loss, B, metrics
        clip: CLIP = getattr(model, "_orig_mod", model)
        parts = [(pixels[s], ids[s], mask[s]) for s in _slices(B, chunks)]
        states = []
        with torch.no_grad():  # 1. embeddings of every chunk, no graph kept
            img_parts, txt_parts = [], []
            for p, i, m in parts:
                states.append(torch.get_rng_state())
                img_parts.append(clip.encode_image(p))
                txt_parts.append(clip.encode_text(i, m))
        img = torch.cat(img_parts).requires_grad_()
        txt = torch.cat(txt_parts).requires_grad_()
        loss, metrics = contrastive_loss(img, txt, clip.temperature_scale(), groups)  # 2. whole-batch loss
        loss.backward()  # gradients w.r.t. the cached embeddings, and the temperature's own
        for (p, i, m), s, sl in zip(parts, states, _slices(B, chunks)):  # 3. re-run each chunk with a graph
            torch.set_rng_state(s)
            surrogate = (clip.encode_image(p) * img.grad[sl]).sum() + (clip.encode_text(i, m) * txt.grad[sl]).sum()
            surrogate.backward()
        return loss.detach().requires_grad_(), B, metrics

    return loss_fn


def _slices(n: int, chunks: int) -> list[slice]:
    size = -(-n // chunks)
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def _text_encoder(cfg: ClipTrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, Path | None]:
    """(config fields of the text tower, pretrained tensors, its tokenizer.json) for --text_encoder, or empties."""
    if not cfg.text_encoder:
        return {}, None, None
    folder = minilm_folder() if cfg.text_encoder == "minilm" else Path(cfg.text_encoder)
    bert, tensors = hf_bert_tensors(folder)
    if not (folder / TOKENIZER).is_file():
        raise PlinthError(f"{folder}: no {TOKENIZER} beside the text encoder's weights")
    fields = dict(text_tower="bert", vocab_size=bert.vocab_size, text_n_layer=bert.n_layer, text_n_head=bert.n_head,
                  text_d_model=bert.d_model, text_d_ff=bert.d_ff, text_max_positions=bert.seq_len)
    return fields, tensors, folder / TOKENIZER


def _evaluator(images: ImageSet, pre: Preprocess, captions: CaptionTokenizer, eval_images: int):
    """Validation: zero-shot accuracy on held-out images of seen classes and on the unseen classes, and retrieval."""
    val = images.split("val")
    unseen = images.split("unseen") if (images.root / "unseen").is_dir() else None

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        was = model.training
        clip = CLIPPipeline(model, pre, captions)
        out: dict[str, float] = {}
        if images.classes and len(val):
            out["zeroshot_acc"] = zero_shot(clip, val, images.seen_classes, images.templates, eval_images)["accuracy"]
        if unseen is not None and len(unseen) and len(images.unseen_classes) > 1:
            out["unseen_zeroshot_acc"] = zero_shot(clip, unseen, images.unseen_classes, images.templates,
                                                   eval_images)["accuracy"]
        if len(val):
            r = retrieval(clip, val, min(eval_images or 500, 500))
            out.update({"t2i_R@1": r["t2i_R@1"], "i2t_R@1": r["i2t_R@1"]})
        model.train(was)
        return out

    return evaluate


def train_clip(cfg: ClipTrainConfig) -> dict[str, Any]:
    """Contrastive pretraining on a prepared image-caption set; returns the run summary (zero-shot and retrieval
    scores at the end). With --text_encoder the pretrained text tower is frozen (locked-text tuning)."""
    validate(cfg, "clip train")
    cfg = absolute_paths(cfg, "text_encoder", "tokenizer")
    pick_device(cfg.system.device)
    images, train_split = open_training_set(cfg)
    if cfg.optim.batch_size * cfg.optim.grad_accum < 2:
        raise PlinthError("clip train: a contrastive batch needs at least 2 images (--optim.batch_size)")
    if find_preset(cfg.model)[0].name != "clip":
        raise PlinthError(f"--model {cfg.model}: clip train needs a clip model, not {find_preset(cfg.model)[0].name}")
    run_dir = Path(cfg.run.out_dir)
    text_fields, text_tensors, text_tok = _text_encoder(cfg)
    tok_path = text_tok or caption_tokenizer(cfg.tokenizer, run_dir, images, cfg.vocab_size)
    style = "bert" if text_tok else "decoder"
    if text_tok is None:
        text_fields = {"vocab_size": CaptionTokenizer(tok_path, style, 8).vocab_size}
    mcfg = make_config(cfg.model, cfg.arch, where="arch", **text_fields)
    if mcfg.family != "clip":
        raise PlinthError(f"--model {cfg.model}: clip train needs a clip model, not {mcfg.family}")
    captions = CaptionTokenizer(tok_path, style, mcfg.text_seq_len)
    seed_everything(cfg.system.seed)
    model = build_model(mcfg)
    if text_tensors is not None:
        load_state(model.text_model, text_tensors, cfg.text_encoder)
        model.text_model.requires_grad_(False)  # locked text tower: only images, projections and temperature learn
    pre = Preprocess(mcfg.image_size)
    assets = {**write_assets(run_dir, mcfg.image_size), TOKENIZER: tok_path}
    contrastive_batch = cfg.optim.batch_size * cfg.optim.grad_accum
    batches = ImageBatches(train_split, contrastive_batch, cfg.system.seed, pre, cfg.data.augment,
                           clip_text_fn(captions), crop_scale=(cfg.data.crop_scale, 1.0))
    if contrastive_batch > len(train_split):
        warn(f"the contrastive batch ({contrastive_batch}) is larger than the training set ({len(train_split)}); "
             "images repeat within a batch")
    objective = Objective("clip", contrastive_loss_fn(cfg.optim.grad_accum), batches,
                          _evaluator(images, pre, captions, cfg.data.eval_images),
                          units_in=lambda b: int(b["pixels"].shape[0]), unit="img",
                          flops_per_unit=model.flops_per_image())  # after freezing
    print(f"model {mcfg.name}: image tower {mcfg.vision_n_layer}x{mcfg.vision_d_model} at {mcfg.image_size}px, "
          f"text tower {mcfg.text_tower} {mcfg.text_n_layer}x{mcfg.text_d_model}" +
          (" (frozen)" if text_tensors is not None else "") + f"; contrastive batch {contrastive_batch}" +
          (f" in {cfg.optim.grad_accum} gradient-cached chunks" if cfg.optim.grad_accum > 1 else ""), flush=True)
    # The run's own accumulation would score chunks apart; the chunks live inside the loss (gradient caching).
    optim = OptimConfig(**{**to_dict(cfg.optim), "grad_accum": 1})
    spec = RunSpec(optim, cfg.run, cfg.system, config=to_dict(cfg), assets=assets,
                   paths={"images": Path(cfg.data.images), "tokenizer": tok_path})
    return train(model, objective, spec)
