"""`plinth quickstart clip`: a small CLIP trained on built-in images, then zero-shot accuracy on held-out images and
on classes never seen in a caption, beside chance and a linear probe, retrieval recall@k, and a plot.

The default set is `builtin:shapes` with six colour-shape pairs held out (`SHAPES_UNSEEN`): every colour and every
shape still occurs in training, so naming "a red circle" when only red squares and blue circles were seen is
compositional zero-shot transfer. Stages already done are reused, and training resumes, when run again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from plinth.common import atomic_write_text
from plinth.config import (
    ClipQuickstartConfig,
    ClipTrainConfig,
    ImageDataConfig,
    ImagesPrepareConfig,
    OptimConfig,
    RunConfig,
    SystemConfig,
    validate,
)
from plinth.data.image_prep import ImageSet, prepare_images
from plinth.data.image_sources import SHAPES_UNSEEN
from plinth.evaluate.vision import linear_probe, retrieval, zero_shot
from plinth.pipelines import load
from plinth.runlog import read_metrics, save_figure
from plinth.training.contrastive import train_clip

UNSEEN = {"shapes": list(SHAPES_UNSEEN), "digits": ["eight", "nine"], "mnist": ["eight", "nine"],
          "fashion-mnist": ["bag", "ankle boot"]}


def _stage(name: str, done: bool = False) -> None:
    print(f"\n== {name}" + (" (already done, reusing)" if done else ""), flush=True)


def quickstart_clip(cfg: ClipQuickstartConfig) -> dict[str, Any]:
    """Prepare images, train CLIP, evaluate zero-shot (seen and unseen classes), probe, retrieval; write report.md."""
    validate(cfg, "quickstart clip")
    start = time.perf_counter()
    out = Path(cfg.out)
    data = out / "data" / cfg.images
    _stage(f"1/4 prepare builtin:{cfg.images}", (data / "dataset.json").is_file())
    if not (data / "dataset.json").is_file():
        prepare_images(ImagesPrepareConfig(inputs=[f"builtin:{cfg.images}"], out=str(data), size=48,
                                           holdout_classes=UNSEEN.get(cfg.images, []), max_images=cfg.count,
                                           val_fraction=0.1, progress=cfg.progress))
    images = ImageSet(data)

    _stage("2/4 train CLIP")
    tcfg = ClipTrainConfig(
        model=cfg.model, arch={"patch_size": cfg.patch_size}, text_encoder=cfg.text_encoder,
        data=ImageDataConfig(images=str(data), eval_images=600),
        optim=OptimConfig(lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=max(1, cfg.max_steps // 20),
                          weight_decay=0.1),
        run=RunConfig(out_dir=str(out / "run"), max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
                      eval_every=max(1, cfg.max_steps // 4), ckpt_every=max(1, cfg.max_steps // 6),
                      progress=cfg.progress, log_every=max(1, min(20, cfg.max_steps // 10))),
        # Eager: torch.compile made this model's step only ~4% faster on a 2-core CPU (docs/benchmarks.md) and
        # costs 30-100 s of the time budget to compile.
        system=SystemConfig(device=cfg.device, precision=cfg.precision, seed=cfg.seed, compile="off"))
    summary = train_clip(tcfg)

    _stage("3/4 zero-shot, linear probe, retrieval")
    clip = load(out / "run", device=cfg.device)
    results = evaluate_clip(clip, images)
    for line in _result_lines(results):
        print(line)

    _stage("4/4 report")
    plot = _plot(results, read_metrics(out / "run"), out / "zeroshot.png", cfg)
    report = _write_report(out, cfg, images, summary, results, time.perf_counter() - start)
    return {"report": str(report), "plot": str(plot), "train": summary, "results": results}


def evaluate_clip(clip: Any, images: ImageSet) -> dict[str, Any]:
    """Zero-shot on held-out images of seen classes, on the unseen classes (among themselves and among all classes),
    linear probes on the same images, and val retrieval."""
    val, seen, unseen = images.split("val"), images.seen_classes, images.unseen_classes
    r: dict[str, Any] = {"val_zeroshot": zero_shot(clip, val, seen, images.templates)}
    r["val_probe"] = linear_probe(clip, images, "train", "val")
    if unseen:
        u = images.split("unseen")
        r["unseen_zeroshot"] = zero_shot(clip, u, unseen, images.templates)
        r["unseen_zeroshot_all"] = zero_shot(clip, u, images.classes, images.templates)
        r["unseen_probe"] = _split_probe(clip, u)
    r["retrieval"] = retrieval(clip, val)
    for v in r.values():
        v.pop("predictions", None)
        v.pop("labels", None)
    return r


def _split_probe(clip: Any, split: Any) -> dict[str, float]:
    """A linear probe fitted on half of a split's images and scored on the other half (for the unseen classes,
    whose labels the model never trained on: a supervised reference for zero-shot)."""
    import numpy as np

    from plinth.evaluate.vision import _pixels
    from plinth.multimodal.probe import fit_probe

    x, idx = _pixels(clip, split, 0)
    feats, labels = clip.image_features(x).numpy(), split.labels[idx]
    order = np.random.default_rng(0).permutation(len(idx))
    a, b = order[: len(order) // 2], order[len(order) // 2:]
    return fit_probe(feats[a], labels[a], feats[b], labels[b])


def _result_lines(r: dict[str, Any]) -> list[str]:
    v, p = r["val_zeroshot"], r["val_probe"]
    lines = [f"held-out images, {v['classes']} seen classes: zero-shot {v['accuracy']:.1%} (chance {v['chance']:.1%})"
             f"; linear probe {p['accuracy']:.1%}"]
    if "unseen_zeroshot" in r:
        u, ua, up = r["unseen_zeroshot"], r["unseen_zeroshot_all"], r["unseen_probe"]
        lines.append(f"{u['classes']} classes never seen in a caption: zero-shot {u['accuracy']:.1%} among them "
                     f"(chance {u['chance']:.1%}), {ua['accuracy']:.1%} among all {ua['classes']} (chance "
                     f"{ua['chance']:.1%}); linear probe (fitted on half of them) {up['accuracy']:.1%}")
    t = r["retrieval"]
    lines.append(f"retrieval on {t['images']} held-out images / {t['captions']} captions: text→image R@1 "
                 f"{t['t2i_R@1']:.1%} R@5 {t['t2i_R@5']:.1%} R@10 {t['t2i_R@10']:.1%}; image→text R@1 "
                 f"{t['i2t_R@1']:.1%} R@5 {t['i2t_R@5']:.1%}")
    return lines


def _plot(r: dict[str, Any], metrics: list[dict], path: Path, cfg: ClipQuickstartConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [m["step"] for m in metrics if "loss" in m and "val_zeroshot_acc" not in m]
    ax1.plot(steps, [m["loss"] for m in metrics if "loss" in m and "val_zeroshot_acc" not in m], label="train loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("contrastive loss (nats)")
    ax1.set_title("training")
    ax1.legend(loc="upper right")
    groups = [("held-out images\nseen classes", r["val_zeroshot"], r["val_probe"])]
    if "unseen_zeroshot" in r:
        groups.append(("unseen classes\n(among them)", r["unseen_zeroshot"], r["unseen_probe"]))
        groups.append(("unseen classes\n(among all)", r["unseen_zeroshot_all"], None))
    xs = range(len(groups))
    ax2.bar([x - 0.27 for x in xs], [g[1]["accuracy"] for g in groups], 0.27, label="zero-shot")
    ax2.bar(list(xs), [g[2]["accuracy"] if g[2] else 0 for g in groups], 0.27, label="linear probe")
    ax2.bar([x + 0.27 for x in xs], [g[1]["chance"] for g in groups], 0.27, label="chance")
    ax2.set_xticks(list(xs), [g[0] for g in groups])
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("top-1 accuracy")
    ax2.set_title(f"{cfg.model} on builtin:{cfg.images}")
    ax2.legend()
    return save_figure(fig, path, dpi=110)


def _write_report(out: Path, cfg: ClipQuickstartConfig, images: ImageSet, summary: dict, r: dict[str, Any],
                  wall: float) -> Path:
    splits = {s: len(images.split(s)) for s in ("train", "val", "unseen") if (images.root / s).is_dir()}
    lines = [
        f"# Plinth quickstart: CLIP (`{cfg.model}`) on `builtin:{cfg.images}`", "",
        "## Data",
        f"- {splits.get('train', 0)} training, {splits.get('val', 0)} held-out and {splits.get('unseen', 0)} "
        f"unseen-class images; {len(images.classes)} classes, of which never in a training caption: "
        f"{', '.join(images.unseen_classes) or 'none'}",
        f"- zero-shot prompt templates: {', '.join(repr(t) for t in images.templates)}", "",
        "## Training",
        f"- {summary['steps']} steps ({summary['status']}), {summary['tokens']:,} images seen, contrastive batch "
        f"{cfg.batch_size}, {summary['precision']}; {summary['parameters']:,} parameters "
        f"({summary['trainable_parameters']:,} trainable); training {summary['wall_s']:.0f} s, whole quickstart "
        f"{wall:.0f} s", "",
        "## Results", "", *[f"- {line}" for line in _result_lines(r)], "",
        "The linear probe is a logistic regression on the frozen image features with the labels (supervised); "
        "zero-shot uses only the class names. Chance is one over the number of candidate classes.", "",
        "![zero-shot accuracy](zeroshot.png)", "",
        f"Metrics: `{out / 'run' / 'metrics.jsonl'}`; TensorBoard: `tensorboard --logdir {out / 'run' / 'tb'}`.", "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
