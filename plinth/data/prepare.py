"""`plinth data prepare`: raw files -> cleaned, deduplicated train/validation JSONL documents, streamed and written
atomically, with a report of what was kept and what was skipped and why."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from plinth.common import PlinthError, Progress, atomic_dir, atomic_write_json
from plinth.config import PrepareConfig, validate
from plinth.data.clean import encode_clean
from plinth.data.readers import SKIP_REASONS, BadFile, expand_inputs, iter_records

SPLITS = ("train", "val")
SINGLE_DOC_VAL = 0.1  # a one-document corpus is split inside the text: the last 10% by position (nanoGPT's split)
SINGLE_DOC_MIN_CHARS = 200  # below this a lone document stays whole: a few words make no useful validation text

# ----------------------------------------------------------------------------------------------------------------------
# Split writer: streams documents into train/val files and can undo a file that turns out to be corrupt


class _SplitWriter:
    """Appends deduplicated documents to train.jsonl / val.jsonl, choosing the split by a salted hash of the text."""

    def __init__(self, folder: Path, val_fraction: float, seed: int):
        self.folder = folder
        self.files = {s: open(folder / f"{s}.jsonl", "wb") for s in SPLITS}
        self.counts = {s: {"documents": 0, "characters": 0, "text_bytes": 0} for s in SPLITS}
        self.seen: set[bytes] = set()  # 16-byte digests: ~100 bytes per document, not the text itself
        self.threshold = int(val_fraction * 2.0**64)
        self.key = str(seed).encode()
        self.best: tuple | None = None  # the train document closest to the val threshold, for the val guarantee
        self.split_inside = False  # a single document was split 90/10 by position
        self.checkpoint()

    def add(self, text: str, data: bytes) -> bool:
        """Write one document; False if it is an exact duplicate of one already written."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        self.added.append(digest)
        u = int.from_bytes(hashlib.blake2b(digest, digest_size=8, key=self.key).digest(), "big")
        split = "val" if u < self.threshold else "train"
        line = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8") + b"\n"
        f = self.files[split]
        if split == "train" and (self.best is None or u < self.best[0]):
            self.best = (u, f.tell(), len(line), len(text), len(data))
        f.write(line)
        c = self.counts[split]
        c["documents"] += 1
        c["characters"] += len(text)
        c["text_bytes"] += len(data)
        return True

    def kept(self) -> int:
        """Documents written so far, both splits."""
        return sum(c["documents"] for c in self.counts.values())

    def checkpoint(self) -> None:
        """Remember the current state, to roll back to if the next file fails part-way."""
        self.added: list[bytes] = []
        self.mark = ({s: f.tell() for s, f in self.files.items()}, copy.deepcopy(self.counts), self.best)

    def rollback(self) -> None:
        """Forget everything written since the last checkpoint."""
        offsets, self.counts, self.best = self.mark
        self.mark = (offsets, copy.deepcopy(self.counts), self.best)
        for digest in self.added:
            self.seen.discard(digest)
        self.added = []
        for s, f in self.files.items():
            f.seek(offsets[s])
            f.truncate()

    def close(self, guarantee_val: bool) -> None:
        """Close the files; when asked for a validation split, make sure both splits get text.

        Several documents: if none was drawn for val, the train document closest to the threshold moves there.
        A single document (a one-file corpus): it is split inside, the last 10% by position going to val.
        """
        for f in self.files.values():
            f.close()
        if not guarantee_val:
            return
        if self.kept() == 1:
            if max(c["characters"] for c in self.counts.values()) >= SINGLE_DOC_MIN_CHARS:
                self._split_single_document()
        elif self.counts["val"]["documents"] == 0 and self.counts["train"]["documents"] >= 2:
            self._move_best_to_val()

    def _split_single_document(self) -> None:
        paths = {s: self.folder / f"{s}.jsonl" for s in SPLITS}
        split = "train" if self.counts["train"]["documents"] else "val"
        text = json.loads(paths[split].read_bytes())["text"]
        target = int(len(text) * (1 - SINGLE_DOC_VAL))
        cut = text.rfind("\n", 0, target)  # a line boundary near 90%, else a word boundary, else the exact position
        if cut < target - len(text) // 10:
            cut = text.rfind(" ", 0, target)
        if cut <= 0:
            cut = target
        parts = {"train": text[:cut].rstrip(), "val": text[cut:].strip()}
        if not parts["train"] or not parts["val"]:
            return  # too short to split: it stays one document
        for s in SPLITS:
            line = json.dumps({"text": parts[s]}, ensure_ascii=False).encode("utf-8") + b"\n"
            paths[s].write_bytes(line)
            data = parts[s].encode("utf-8")
            self.counts[s] = {"documents": 1, "characters": len(parts[s]), "text_bytes": len(data)}
        self.split_inside = True

    def _move_best_to_val(self) -> None:
        _, offset, length, chars, nbytes = self.best
        train, val, tmp = (self.folder / n for n in ("train.jsonl", "val.jsonl", "train.jsonl.tmp"))
        with open(train, "rb") as src, open(tmp, "wb") as dst, open(val, "ab") as v:
            _copy_bytes(src, dst, offset)
            v.write(src.read(length))
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, train)
        for split, sign in (("train", -1), ("val", 1)):
            c = self.counts[split]
            c["documents"] += sign
            c["characters"] += sign * chars
            c["text_bytes"] += sign * nbytes


def _copy_bytes(src: BinaryIO, dst: BinaryIO, n: int) -> None:
    while n > 0:
        block = src.read(min(n, 1 << 20))
        if not block:
            break
        dst.write(block)
        n -= len(block)


# ----------------------------------------------------------------------------------------------------------------------
# Verbs


def _ingest_file(path: Path, cfg: PrepareConfig, writer: _SplitWriter, stats: dict) -> bool:
    """Ingest one file; True once `cfg.max_docs` documents are kept."""
    skipped = stats["skipped"]
    for raw, reason in iter_records(path, cfg.field):
        if reason != "empty_file":
            stats["documents_in"] += 1
        if raw is None:
            skipped[reason] += 1
            continue
        cleaned = encode_clean(raw)
        if cleaned is None:
            skipped["undecodable"] += 1
        elif not cleaned[0] or len(cleaned[0]) < cfg.min_chars:
            skipped["too_short"] += 1
        elif not writer.add(*cleaned):
            skipped["duplicate"] += 1
        elif cfg.max_docs and writer.kept() >= cfg.max_docs:
            return True
    return False


def _ingest_all(files: list[Path], cfg: PrepareConfig, writer: _SplitWriter, stats: dict, progress: bool) -> None:
    sizes = [p.stat().st_size for p in files]
    with Progress("prepare", total=sum(sizes), unit="B", enabled=progress) as bar:
        for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
            snapshot = copy.deepcopy(stats)
            writer.checkpoint()
            try:
                full = _ingest_file(path, cfg, writer, stats)
                stats["files_read"] += 1
                stats["bytes_in"] += size
            except BadFile as e:
                # Skip the whole file: half a corrupt archive would silently bias the corpus.
                writer.rollback()
                stats.clear()
                stats.update(snapshot)
                stats["skipped"][e.reason] += 1
                full = False
            bar.update(advance=size, info=f"{i + 1}/{len(files)} files")
            if full:
                return


def prepare(cfg: PrepareConfig) -> dict:
    """Read, clean, deduplicate and split `cfg.inputs` into `cfg.out`/{train,val}.jsonl; return the report.

    Raises PlinthError for bad options, inputs that do not exist, or inputs from which no document survives.
    """
    validate(cfg, "data prepare")
    files, unsupported = expand_inputs(cfg.inputs, exclude=cfg.out)
    stats = {"files_read": 0, "bytes_in": 0, "documents_in": 0, "skipped": dict.fromkeys(SKIP_REASONS, 0)}
    stats["skipped"]["unsupported_file"] = unsupported
    with atomic_dir(cfg.out) as tmp:
        writer = _SplitWriter(tmp, cfg.val_fraction, cfg.seed)
        try:
            _ingest_all(files, cfg, writer, stats, cfg.progress)
        finally:
            writer.close(guarantee_val=cfg.val_fraction > 0)
        report = _report(cfg, files, stats, writer, tmp)
        if report["documents"]["train"] + report["documents"]["val"] == 0:
            raise PlinthError(_nothing_kept_message(cfg, stats["skipped"]))
        atomic_write_json(tmp / "report.json", report)
    return report


def _report(cfg: PrepareConfig, files: list[Path], stats: dict, writer: _SplitWriter, folder: Path) -> dict:
    counts = writer.counts
    return {
        "inputs": list(cfg.inputs), "field": cfg.field, "val_fraction": cfg.val_fraction,
        "min_chars": cfg.min_chars, "seed": cfg.seed, "max_docs": cfg.max_docs,
        "files": len(files), "files_read": stats["files_read"],
        "bytes_in": stats["bytes_in"],
        "documents_in": stats["documents_in"],
        "documents": {s: counts[s]["documents"] for s in SPLITS},
        "characters": {s: counts[s]["characters"] for s in SPLITS},
        "text_bytes": {s: counts[s]["text_bytes"] for s in SPLITS},
        "bytes_out": {s: (folder / f"{s}.jsonl").stat().st_size for s in SPLITS},
        "single_document_split": writer.split_inside,
        "skipped": stats["skipped"],
    }


def _nothing_kept_message(cfg: PrepareConfig, skipped: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in skipped.items() if v) or "the inputs hold no text"
    hint = f"; is the text in a field other than {cfg.field!r}? set --field" if skipped["missing_field"] else ""
    return f"no documents kept from {' '.join(cfg.inputs)} (skipped: {reasons}){hint}"


def prepared_lines(path: str | os.PathLike) -> Iterator[tuple[str, int]]:
    """Yield (text, line bytes) from a prepared JSONL file (the byte count drives progress bars)."""
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)["text"], len(line)


def prepared_file(folder: str | os.PathLike, split: str = "train") -> Path:
    """Path of a split file in a prepared folder; PlinthError if it is not there."""
    if split not in SPLITS:
        raise PlinthError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise PlinthError(f"no {path}: run `plinth data prepare ... --out {folder}` first")
    return path


def iter_prepared(folder: str | os.PathLike, split: str = "train") -> Iterator[str]:
    """Yield the documents of one split of a prepared folder, in file order."""
    for text, _ in prepared_lines(prepared_file(folder, split)):
        yield text
