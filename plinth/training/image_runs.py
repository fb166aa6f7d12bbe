"""What the image objectives (classify.py, contrastive.py, caption.py) share around the one training run: absolute
paths, the prepared image set, the files each checkpoint carries (preprocess.json, labels.json, tokenizer.json) and a
caption tokenizer trained on the set when none is given."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plinth.artifacts import TOKENIZER
from plinth.common import PlinthError, atomic_write_json
from plinth.data.captions import train_caption_tokenizer
from plinth.data.image_prep import ImageSet
from plinth.data.images import Preprocess
from plinth.pipelines.vision import LABELS, PREPROCESS, VQA_PROMPT


def absolute_paths(cfg: Any, *extra: str) -> Any:
    """A copy of an image training config with the data, run folder and the named top-level path fields absolute."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data), run=dataclasses.replace(cfg.run))
    cfg.data.images = str(Path(cfg.data.images).expanduser().resolve())
    cfg.run.out_dir = str(Path(cfg.run.out_dir).expanduser().resolve())
    for name in extra:
        value = getattr(cfg, name)
        if value and value != "minilm":
            setattr(cfg, name, str(Path(value).expanduser().resolve()))
    return cfg


def open_training_set(cfg: Any) -> tuple[ImageSet, Any]:
    """The prepared set and its train split; PlinthError when the training split is empty."""
    images = ImageSet(cfg.data.images)
    train = images.split("train")
    if len(train) == 0:
        raise PlinthError(f"{images.root}: the train split is empty; prepare more images")
    return images, train


def write_assets(run_dir: Path, image_size: int, classes: list[str] | None = None) -> dict[str, Path]:
    """preprocess.json (and labels.json) in the run folder, to be copied into each checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / PREPROCESS, Preprocess(image_size).to_dict())
    assets = {PREPROCESS: run_dir / PREPROCESS}
    if classes is not None:
        atomic_write_json(run_dir / LABELS, classes)
        assets[LABELS] = run_dir / LABELS
    return assets


def _set_texts(images: ImageSet, with_qa: bool) -> Iterator[str]:
    for r in images.split("train").records:
        yield from r["captions"]
        if with_qa:
            for q, a in r["qa"]:
                yield VQA_PROMPT.format(q)
                yield f" {a}"
    for c in images.seen_classes:  # class names, so zero-shot prompts tokenize into known pieces
        yield from (t.format(c) for t in images.templates or ["{}"])


def caption_tokenizer(given: str, run_dir: Path, images: ImageSet, vocab_size: int, with_qa: bool = False) -> Path:
    """The tokenizer.json to use: `given`, else the one this run trained before (resume), else a BPE trained now on
    the training captions (and questions and answers)."""
    if given:
        if not Path(given).is_file():
            raise PlinthError(f"--tokenizer {given}: no such tokenizer.json")
        return Path(given)
    path = run_dir / TOKENIZER
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        train_caption_tokenizer(_set_texts(images, with_qa), path, vocab_size)
        print(f"trained a BPE tokenizer on the captions: {path}", flush=True)
    return path


def read_json_list(path: Path) -> list:
    """A JSON list from a file (labels.json)."""
    return json.loads(path.read_text(encoding="utf-8"))
