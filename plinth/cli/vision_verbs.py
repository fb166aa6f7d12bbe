"""The image verbs' printing around the library: images prepare/builtin, classifier train, classify, clip
train/classify/retrieve/probe, captioner train, caption, vqa, quickstart clip. Each takes its config, returns an
exit code."""

from __future__ import annotations

from typing import Any

from plinth.cli.verbs import _exit_code, print_json
from plinth.common import PlinthError, warn
from plinth.config import (
    CaptionConfig,
    CaptionerTrainConfig,
    ClassifierTrainConfig,
    ClassifyConfig,
    ClipClassifyConfig,
    ClipProbeConfig,
    ClipQuickstartConfig,
    ClipRetrieveConfig,
    ClipTrainConfig,
    ImagesPrepareConfig,
    VqaConfig,
)


def images_prepare(cfg: ImagesPrepareConfig) -> int:
    """Decode, check, resize and split images into a prepared set; print its report."""
    from plinth.data.image_prep import prepare_images

    print_json(prepare_images(cfg))
    return 0


def images_builtin(_: Any) -> int:
    """List the built-in image sets."""
    from rich.console import Console
    from rich.table import Table

    from plinth.data.image_sources import BUILTIN_IMAGES

    table = Table("name", "what", "source / license")
    for name, (what, source) in BUILTIN_IMAGES.items():
        table.add_row(f"builtin:{name}", what, source)
    Console().print(table)
    return 0


def _load(model: str, device: str, kind: str):
    from plinth.pipelines import load, vision

    pipe = load(model, device=device)
    want = {"clip": vision.CLIPPipeline, "classifier": vision.ImageClassifier, "captioner": vision.CaptionPipeline}
    if not isinstance(pipe, want[kind]):
        raise PlinthError(f"{model}: holds a {type(pipe).__name__}, not a {kind} model")
    pipe.batch_size = getattr(pipe, "batch_size", 64)
    return pipe


def _inputs(images: list[str], split: str):
    """(prepared split, None) for a prepared set, else (None, (names, arrays)) of decoded files."""
    from plinth.data.image_prep import ImageSet, is_image_set, read_image_inputs

    if not images:
        raise PlinthError("give images: files, folders or globs (--images ...), or a prepared image set")
    if len(images) == 1 and is_image_set(images[0]):
        return ImageSet(images[0]), None
    names, arrays, skipped = read_image_inputs(images)
    if skipped:
        warn(f"skipped {sum(skipped.values())} unusable image(s): {dict(skipped)}")
    return None, (names, arrays)


def _top(probs, classes: list[str], k: int) -> list[dict[str, float]]:
    values, idx = probs.topk(min(k, len(classes)))
    return [{classes[int(i)]: round(float(v), 4)} for v, i in zip(values, idx)]


def classifier_train(cfg: ClassifierTrainConfig) -> int:
    """Train a CNN/ViT image classifier."""
    from plinth.training.classify import train_classifier

    summary = train_classifier(cfg)
    print_json(summary)
    return _exit_code(summary)


def classify(cfg: ClassifyConfig) -> int:
    """Label images with a trained classifier, or score it on a prepared set's split."""
    from plinth.evaluate.vision import classifier_accuracy
    from plinth.pipelines import load, vision
    from plinth.pipelines.classifier import TextClassifierPipeline

    pipe = load(cfg.model, device=cfg.device)
    if isinstance(pipe, TextClassifierPipeline):
        from plinth.cli.adapt_verbs import classify_texts

        return classify_texts(pipe, cfg)
    if not isinstance(pipe, vision.ImageClassifier):
        raise PlinthError(f"{cfg.model}: holds a {type(pipe).__name__}, not a classifier model")
    pipe.batch_size = cfg.batch_size
    images, files = _inputs(cfg.images, cfg.split)
    if images is not None:
        print_json({"split": cfg.split, **classifier_accuracy(pipe, images.split(cfg.split), cfg.max_images)})
        return 0
    names, arrays = files
    probs = pipe.predict(arrays[: cfg.max_images or None])
    for name, p in zip(names, probs):
        print(f"{name}: {_top(p, pipe.classes, cfg.top_k)}")
    return 0


def clip_train(cfg: ClipTrainConfig) -> int:
    """Contrastive image-text pretraining."""
    from plinth.training.contrastive import train_clip

    summary = train_clip(cfg)
    print_json(summary)
    return _exit_code(summary)


def clip_classify(cfg: ClipClassifyConfig) -> int:
    """Zero-shot classification with prompt templates, averaged per class."""
    from plinth.evaluate.vision import zero_shot
    from plinth.multimodal.zeroshot import ZeroShotClassifier

    clip = _load(cfg.model, cfg.device, "clip")
    clip.batch_size = cfg.batch_size
    images, files = _inputs(cfg.images, cfg.split)
    if images is not None:
        classes = cfg.classes or (images.unseen_classes if cfg.split == "unseen" else images.seen_classes)
        result = zero_shot(clip, images.split(cfg.split), classes, cfg.templates or images.templates, cfg.max_images)
        print_json({"split": cfg.split, **{k: v for k, v in result.items() if k not in ("predictions", "labels")}})
        return 0
    if not cfg.classes:
        raise PlinthError("clip classify: name the classes (--classes cat dog ...)")
    names, arrays = files
    zs = ZeroShotClassifier(clip, cfg.classes, cfg.templates)
    for name, p in zip(names, zs.classify(arrays[: cfg.max_images or None])):
        print(f"{name}: {_top(p, zs.classes, cfg.top_k)}")
    return 0


def clip_retrieve(cfg: ClipRetrieveConfig) -> int:
    """Text→image and image→text search; recall@1/5/10 on a prepared set's captions."""
    import numpy as np

    from plinth.evaluate.vision import retrieval
    from plinth.multimodal.retrieval import top_k

    clip = _load(cfg.model, cfg.device, "clip")
    clip.batch_size = cfg.batch_size
    images, files = _inputs(cfg.images, cfg.split)
    if images is not None and not cfg.texts:
        print_json({"split": cfg.split, **retrieval(clip, images.split(cfg.split), cfg.max_images)})
        return 0
    if not cfg.texts:
        raise PlinthError("clip retrieve: give text queries (--texts \"a red circle\" ...)")
    if images is not None:
        split = images.split(cfg.split)
        n = len(split) if not cfg.max_images else min(len(split), cfg.max_images)
        names = [split.records[i]["key"] for i in range(n)]
        arrays = [np.asarray(split.pixels[i]) for i in range(n)]
    else:
        names, arrays = files
    image_emb, text_emb = clip.encode_images(arrays), clip.encode_texts(cfg.texts)
    sim = text_emb @ image_emb.T  # (texts, images)
    scores, idx = top_k(sim, cfg.k)
    for text, s, ix in zip(cfg.texts, scores, idx):
        print(f"text→image {text!r}: " + ", ".join(f"{names[int(i)]} ({float(v):.3f})" for v, i in zip(s, ix)))
    scores, idx = top_k(sim.T, cfg.k)
    for name, s, ix in list(zip(names, scores, idx))[:20]:
        print(f"image→text {name}: " + ", ".join(f"{cfg.texts[int(i)]!r} ({float(v):.3f})" for v, i in zip(s, ix)))
    return 0


def clip_probe(cfg: ClipProbeConfig) -> int:
    """A linear probe on frozen image features, beside zero-shot accuracy on the same split (CLIP models)."""
    from plinth.data.image_prep import ImageSet
    from plinth.evaluate.vision import linear_probe, zero_shot
    from plinth.pipelines import load
    from plinth.pipelines.vision import CLIPPipeline

    pipe = load(cfg.model, device=cfg.device)
    pipe.batch_size = cfg.batch_size
    images = ImageSet(cfg.data)
    result: dict[str, Any] = {"linear_probe": linear_probe(pipe, images, cfg.train_split, cfg.eval_split,
                                                          cfg.max_images)}
    if isinstance(pipe, CLIPPipeline):
        classes = images.unseen_classes if cfg.eval_split == "unseen" else images.seen_classes
        zs = zero_shot(pipe, images.split(cfg.eval_split), classes, images.templates)
        result["zero_shot"] = {k: v for k, v in zs.items() if k not in ("predictions", "labels")}
    print_json(result)
    return 0


def captioner_train(cfg: CaptionerTrainConfig) -> int:
    """Train a captioner (captions and visual question answering)."""
    from plinth.training.caption import train_captioner

    summary = train_captioner(cfg)
    print_json(summary)
    return _exit_code(summary)


def caption(cfg: CaptionConfig) -> int:
    """Caption images, or score captions on a prepared set (BLEU-4, CIDEr-D)."""
    from plinth.data.image_prep import ImageSet, read_image_inputs
    from plinth.evaluate.vision import caption_scores

    pipe = _load(cfg.model, cfg.device, "captioner")
    pipe.batch_size = cfg.batch_size
    if cfg.data:
        print_json({"split": cfg.split, **caption_scores(pipe, ImageSet(cfg.data).split(cfg.split), cfg.max_images,
                                                         cfg.max_new_tokens)})
        return 0
    if not cfg.images:
        raise PlinthError("caption: give image files or folders, or --data PREPARED_SET to score captions")
    names, arrays, skipped = read_image_inputs(cfg.images)
    if skipped:
        warn(f"skipped {sum(skipped.values())} unusable image(s): {dict(skipped)}")
    n = cfg.max_images or len(arrays)
    for name, text in zip(names[:n], pipe.caption(arrays[:n], cfg.max_new_tokens)):
        print(f"{name}: {text}")
    return 0


def vqa(cfg: VqaConfig) -> int:
    """Answer questions about images, or score answers on a prepared set's question-answer pairs."""
    from plinth.data.image_prep import ImageSet, read_image_inputs
    from plinth.evaluate.vision import vqa_scores

    pipe = _load(cfg.model, cfg.device, "captioner")
    pipe.batch_size = cfg.batch_size
    if cfg.data:
        print_json({"split": cfg.split, **vqa_scores(pipe, ImageSet(cfg.data).split(cfg.split), cfg.max_images,
                                                     cfg.max_new_tokens)})
        return 0
    if not cfg.images or not cfg.questions:
        raise PlinthError("vqa: give --images and --questions (or --data PREPARED_SET to score answers)")
    names, arrays, skipped = read_image_inputs(cfg.images)
    if skipped:
        warn(f"skipped {sum(skipped.values())} unusable image(s): {dict(skipped)}")
    n = cfg.max_images or len(arrays)
    pairs = [(name, a, q) for name, a in zip(names[:n], arrays[:n]) for q in cfg.questions]
    answers = pipe.answer([a for _, a, _ in pairs], [q for _, _, q in pairs], cfg.max_new_tokens)
    for (name, _, q), ans in zip(pairs, answers):
        print(f"{name}: {q} → {ans}")
    return 0


def quickstart_clip(cfg: ClipQuickstartConfig) -> int:
    """Train a small CLIP on built-in images; zero-shot report with a plot."""
    from plinth.training.quickstart_clip import quickstart_clip as run

    result = run(cfg)
    print(f"\nreport: {result['report']}")
    return _exit_code(result["train"])



