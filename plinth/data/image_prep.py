"""`plinth images prepare`: images from any source → a prepared image set; and the readers and batch sources every
image objective (classification, contrastive, captioning; later diffusion) trains from.

A prepared set is a folder:

    dataset.json           size, classes, unseen (held-out) classes, split sizes
    report.json            what was read, kept and skipped (by reason), colour modes converted, images upscaled
    train/ val/ [unseen/]  pixels.u8 (N, S, S, 3) uint8, memory-mapped; records.jsonl (key, captions, label, qa)
    manifest.json          sha256 of every file, written last

Images are decoded once, centre-cropped and resized to S x S (the source of later random crops), so training reads a
memmap and only crops, resizes and normalises: on 2 cores the loader stays well ahead of the model (see
docs/benchmarks.md). Split by a hash of each image's key (stable under reordering); images of `holdout_classes` go
to `unseen/` only, for zero-shot tests on classes never seen in training.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plinth.artifacts import write_manifest
from plinth.common import PlinthError, Progress, atomic_dir, atomic_write_json
from plinth.config import ImagesPrepareConfig, validate
from plinth.data.image_sources import BUILTIN_TEMPLATES, Item, Skip, input_records
from plinth.data.images import (
    BadImage,
    Preprocess,
    decode_image,
    random_resized_crop,
    resize_center_crop,
    resize_square,
)

DATASET = "dataset.json"
PIXELS = "pixels.u8"
RECORDS = "records.jsonl"
SPLITS = ("train", "val", "unseen")


def _split_of(key: str, seed: int, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")
    return "val" if h / 2**64 < val_fraction else "train"


def _decode(item: Item, max_pixels: int) -> tuple[np.ndarray, str]:
    if item.pixels is not None:
        return item.pixels, "array"
    d = decode_image(item.path if item.path is not None else item.data, max_pixels)
    return d.pixels, d.mode


class _SplitWriter:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.pixels = open(folder / PIXELS, "wb")
        self.records = open(folder / RECORDS, "w", encoding="utf-8")
        self.count = 0

    def add(self, pixels: np.ndarray, record: dict) -> None:
        self.pixels.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        self.records.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self.pixels.close()
        self.records.close()


def prepare_images(cfg: ImagesPrepareConfig) -> dict[str, Any]:
    """Decode, check, resize and split images from `cfg.inputs` into a prepared set at `cfg.out`; return the report.

    Bad images and records are counted by reason and skipped; nothing half-written is left (atomic folder). Raises
    PlinthError when no input is usable or a held-out class never occurs.
    """
    validate(cfg, "images prepare")
    if not cfg.inputs:
        raise PlinthError("images prepare: give at least one input (folder, captions .jsonl/.csv, .tar or "
                          "builtin:NAME)")
    out = Path(cfg.out)
    skipped: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    upscaled = read = 0
    classes: set[str] = set()
    kept: list[tuple[str, dict]] = []  # (split, record) in input order; labels are resolved once all classes are known
    holdout = {c.strip() for c in cfg.holdout_classes if c.strip()}
    with atomic_dir(out) as tmp, Progress("images prepare", total=cfg.max_images, unit="img",
                                          enabled=cfg.progress) as bar:
        writers = {s: _SplitWriter(tmp / s) for s in SPLITS}
        for spec in cfg.inputs:
            for rec in input_records(spec, cfg.max_images):
                if cfg.max_images and len(kept) >= cfg.max_images:
                    break
                read += 1
                if isinstance(rec, Skip):
                    skipped[rec.reason] += 1
                    continue
                try:
                    pixels, mode = _decode(rec, cfg.max_pixels)
                except BadImage as e:
                    skipped[e.reason] += 1
                    continue
                modes[mode] += 1
                upscaled += min(pixels.shape[:2]) < cfg.size
                captions = rec.captions or ([cfg.caption_template.format(rec.label)] if rec.label else [])
                split = "unseen" if rec.label in holdout else _split_of(rec.key, cfg.seed, cfg.val_fraction)
                record = {"key": rec.key, "captions": captions, "label": rec.label, "qa": [list(p) for p in rec.qa]}
                writers[split].add(resize_center_crop(pixels, cfg.size), record)
                kept.append((split, record))
                if rec.label is not None:
                    classes.add(rec.label)
                bar.update(advance=1)
        for w in writers.values():
            w.close()
        if not kept:
            raise PlinthError(f"images prepare: no usable image in {', '.join(cfg.inputs)} (skipped: "
                              f"{dict(skipped) or 'nothing found'})")
        missing = sorted(holdout - classes)
        if missing:
            raise PlinthError(f"images prepare: --holdout_classes {missing} never occur; classes: "
                              f"{', '.join(sorted(classes)[:12])}")
        names = sorted(classes)
        _write_labels(tmp, names)
        counts = {s: w.count for s, w in writers.items()}
        builtin = [s.removeprefix("builtin:") for s in cfg.inputs if s.startswith("builtin:")]
        templates = BUILTIN_TEMPLATES.get(builtin[0] if builtin else "", [cfg.caption_template])
        dataset = {"format_version": 1, "size": cfg.size, "classes": names, "unseen_classes": sorted(holdout),
                   "templates": templates, "splits": counts, "inputs": list(cfg.inputs)}
        atomic_write_json(tmp / DATASET, dataset)
        report = {"inputs": list(cfg.inputs), "records_read": read, "images_kept": len(kept), "splits": counts,
                  "skipped": dict(sorted(skipped.items())), "converted_from_mode": dict(sorted(modes.items())),
                  "upscaled_smaller_than_size": int(upscaled), "classes": len(names), "size": cfg.size}
        atomic_write_json(tmp / "report.json", report)
        write_manifest(tmp)
    return report


def _write_labels(folder: Path, names: list[str]) -> None:
    """Replace each record's class name by its index in `names` (-1 for none), in place."""
    index = {n: i for i, n in enumerate(names)}
    for split in SPLITS:
        path = folder / split / RECORDS
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for r in rows:
            r["label"] = index.get(r["label"], -1)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Reading a prepared set


class ImageSplit:
    """One split of a prepared set: memory-mapped pixels (N, S, S, 3) and their records."""

    def __init__(self, folder: Path, size: int, classes: list[str]):
        self.folder, self.size, self.classes = folder, size, classes
        self.records = [json.loads(line) for line in (folder / RECORDS).read_text(encoding="utf-8").splitlines()]
        n = len(self.records)
        expected = n * size * size * 3
        actual = (folder / PIXELS).stat().st_size
        if actual != expected:
            raise PlinthError(f"{folder / PIXELS}: {actual} bytes, expected {expected} for {n} images of {size}x{size};"
                              " the prepared set is damaged: prepare it again")
        self.pixels = (np.memmap(folder / PIXELS, dtype=np.uint8, mode="r", shape=(n, size, size, 3)) if n
                       else np.zeros((0, size, size, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """Class index of every image (-1 for none)."""
        return np.array([r["label"] for r in self.records], dtype=np.int64)

    def __repr__(self) -> str:
        return f"ImageSplit({self.folder}, {len(self)} images of {self.size}x{self.size})"


class ImageSet:
    """A prepared image set (`plinth images prepare`): its splits, classes and held-out classes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / DATASET
        if not meta.is_file():
            raise PlinthError(f"{self.root}: not a prepared image set (no {DATASET}); run `plinth images prepare INPUT "
                              f"--out {self.root}`")
        from plinth.artifacts import read_json

        d = read_json(meta, "image set", required=("size", "classes", "splits"))
        self.size, self.classes = int(d["size"]), list(d["classes"])
        self.unseen_classes = list(d.get("unseen_classes", []))
        self.templates = list(d.get("templates", []))
        self._splits: dict[str, ImageSplit] = {}

    def split(self, name: str) -> ImageSplit:
        """The split `name` (train, val or unseen)."""
        if name not in self._splits:
            if not (self.root / name / RECORDS).is_file():
                raise PlinthError(f"{self.root}: no {name!r} split")
            self._splits[name] = ImageSplit(self.root / name, self.size, self.classes)
        return self._splits[name]

    @property
    def seen_classes(self) -> list[str]:
        """Classes that occur in training (all but the held-out ones)."""
        return [c for c in self.classes if c not in self.unseen_classes]


# ----------------------------------------------------------------------------------------------------------------------
# Batches


TextFn = Callable[[list[dict], np.random.Generator], dict[str, Any]]


def pick_captions(records: list[dict], rng: np.random.Generator) -> dict[str, Any]:
    """One caption per image, drawn at random when it has several (the default text of a batch)."""
    return {"captions": [r["captions"][int(rng.integers(len(r["captions"])))] if r["captions"] else ""
                         for r in records]}


class ImageBatches:
    """Training batches from a split: batch i is a pure function of (seed, i), so the whole position is `i`.

    Images are visited epoch by epoch in a seeded permutation; each is randomly cropped and resized to `image_size`
    when `augment` (else resized whole), normalised by `preprocess`. `text_fn(records, rng)` adds the batch's text
    (captions, token ids, question-answer pairs). A batch is a dict: pixels (B, 3, S, S) float32, labels (B,) long,
    index (B,) long, plus what `text_fn` returns.
    """

    def __init__(self, split: ImageSplit, batch_size: int, seed: int, preprocess: Preprocess, augment: bool = True,
                 text_fn: TextFn | None = pick_captions, crop_scale: tuple[float, float] = (0.6, 1.0)):
        if len(split) == 0:
            raise PlinthError(f"{split.folder}: the split is empty; prepare more images or a larger split")
        self.split, self.batch_size, self.seed, self.preprocess = split, batch_size, seed, preprocess
        self.augment, self.text_fn, self.crop_scale = augment, text_fn, crop_scale
        self.index = 0
        self._perm: tuple[int, np.ndarray] | None = None

    def _position(self, p: int) -> int:
        n = len(self.split)
        epoch = p // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 7]).permutation(n))
        return int(self._perm[1][p % n])

    def batch_at(self, i: int) -> dict[str, Any]:
        """Batch number `i` (does not move the position)."""
        rng = np.random.default_rng([self.seed, i, 11])
        idx = [self._position(i * self.batch_size + k) for k in range(self.batch_size)]
        size = self.preprocess.image_size
        if self.augment:
            arrays = [random_resized_crop(self.split.pixels[j], size, rng, scale=self.crop_scale) for j in idx]
        else:
            arrays = [resize_square(self.split.pixels[j], size) for j in idx]
        records = [self.split.records[j] for j in idx]
        batch = {"pixels": self.preprocess.normalise(torch.from_numpy(np.stack(arrays))),
                 "labels": torch.tensor([r["label"] for r in records], dtype=torch.long),
                 "index": torch.tensor(idx, dtype=torch.long)}
        if self.text_fn is not None:
            batch.update(self.text_fn(records, rng))
        return batch

    def next_batch(self) -> dict[str, Any]:
        """The next batch; the position advances by one."""
        batch = self.batch_at(self.index)
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        """The position: one integer."""
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by `state_dict`."""
        self.index = int(state["index"])


def iter_eval_batches(split: ImageSplit, batch_size: int, preprocess: Preprocess,
                      max_images: int = 0) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """(pixels (B, 3, S, S), indices) over a split in order, without augmentation; `max_images` > 0 stops early."""
    n = len(split) if not max_images else min(len(split), max_images)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        arrays = [resize_square(split.pixels[j], preprocess.image_size) for j in idx]
        yield preprocess.normalise(torch.from_numpy(np.stack(arrays))), idx


# ----------------------------------------------------------------------------------------------------------------------
# Images named on a command line


def read_image_inputs(specs: list[str], max_pixels: int = 64_000_000) -> tuple[list[str], list[np.ndarray], Counter]:
    """Decode image files, folders (every image inside, recursively) and globs: (names, RGB arrays, skipped by reason).

    Unusable images are counted by reason, not fatal; PlinthError when a path does not exist or nothing decodes.
    """
    import glob

    from plinth.data.images import is_image_file

    paths: list[Path] = []
    for spec in specs:
        found = sorted(Path(p) for p in glob.glob(spec)) if any(c in spec for c in "*?[") else [Path(spec)]
        if not found or not found[0].exists():
            raise PlinthError(f"{spec}: no such image file or folder")
        for p in found:
            paths += sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q)) if p.is_dir() else [p]
    names, arrays, skipped = [], [], Counter()
    for p in paths:
        try:
            arrays.append(decode_image(p, max_pixels).pixels)
            names.append(str(p))
        except BadImage as e:
            skipped[e.reason] += 1
    if not arrays:
        raise PlinthError(f"no usable image in {', '.join(specs)} (skipped: {dict(skipped) or 'no image files'})")
    return names, arrays, skipped


def is_image_set(path: str | Path) -> bool:
    """True for a prepared image set folder."""
    return (Path(path) / DATASET).is_file()
