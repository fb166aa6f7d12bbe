"""Raw files -> cleaned, deduplicated train/validation JSONL documents, streamed and written atomically.

One reader per format (text, JSON lines, Parquet), each over a transparently decompressed byte stream; `prepare`,
`read_texts` and the tokenizer trainer all go through them, so a document is cleaned the same way everywhere.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from plinth.common import PlinthError, atomic_dir, atomic_write_json
from plinth.config import PrepareConfig
from plinth.data.corpus import builtin_files

SPLITS = ("train", "val")
TEXT_EXTS = (".txt", ".md")
JSON_EXTS = (".jsonl", ".json", ".ndjson")
PARQUET_EXTS = (".parquet",)
COMPRESSIONS = (".gz", ".zst")
SUPPORTED = "use .txt, .md, .jsonl, .json or .parquet, optionally compressed as .gz or .zst"

# Why a document or file was dropped. `empty_file`, `corrupt_compressed`, `bad_parquet`, `unreadable_file` and
# `unsupported_file` count files; the rest count documents.
SKIP_REASONS = ("undecodable", "empty_file", "corrupt_compressed", "bad_parquet", "unreadable_file",
                "unsupported_file", "bad_json_line", "missing_field", "too_short", "duplicate")

Record = tuple[str | None, str]  # (text, "") for a document, (None, reason) for a skipped one


class _BadFile(Exception):
    """A whole file is unusable (corrupt stream, unreadable); `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, path: Path, cause: BaseException):
        super().__init__(f"{path}: {cause}")
        self.reason = reason


class _CorruptStream(Exception):
    """A compressed stream that ends early or does not decode."""


# ----------------------------------------------------------------------------------------------------------------------
# Paths and byte streams


def file_format(path: str | os.PathLike) -> tuple[str, str] | None:
    """(kind, compression) of a file from its extensions, e.g. ('jsonl', '.gz'); None if unsupported."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else ""
    ext = suffixes[-1] if suffixes else ""
    for kind, exts in (("text", TEXT_EXTS), ("jsonl", JSON_EXTS), ("parquet", PARQUET_EXTS)):
        if ext in exts:
            return kind, compression
    return None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and folder.resolve() in path.resolve().parents


def _expand_one(spec: str, exclude: Path | None) -> tuple[list[Path], int]:
    if spec.startswith("builtin:"):
        return builtin_files(spec.removeprefix("builtin:")), 0
    path = Path(spec).expanduser()
    if path.is_file():
        if file_format(path) is None:
            raise PlinthError(f"unsupported file type: {spec} ({SUPPORTED})")
        return [path], 0
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
    elif glob.has_magic(spec):
        found = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True) if Path(m).is_file())
        if not found:
            raise PlinthError(f"no files match {spec!r}: check the pattern (quote it so the shell does not expand it)")
    else:
        raise PlinthError(f"input not found: {spec} (give an existing file, folder or glob, or builtin:NAME)")
    # Never re-ingest a previous run's output that happens to live inside an input folder.
    found = [p for p in found if not _under(p, exclude)]
    usable = [p for p in found if file_format(p) is not None]
    if not usable:
        raise PlinthError(f"no readable files in {spec} ({SUPPORTED})")
    return usable, len(found) - len(usable)


def expand_inputs(inputs: Iterable[str], exclude: str | os.PathLike | None = None) -> tuple[list[Path], int]:
    """Resolve files, folders (recursive), globs and builtin:NAME to files; also count unsupported files skipped."""
    files: list[Path] = []
    unsupported = 0
    seen: set[Path] = set()
    for spec in inputs:
        found, skipped = _expand_one(str(spec), Path(exclude) if exclude else None)
        unsupported += skipped
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    if not files:
        raise PlinthError("no inputs given: name files, folders, globs or builtin:NAME (see `plinth data builtin`)")
    return files, unsupported


class _ZstdReader(io.RawIOBase):
    """Decompress a .zst file frame by frame, raising on a truncated frame (zstandard's stream_reader does not)."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._raw, self._zstd = raw, zstandard
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._pending = b""  # compressed bytes past the end of the previous frame
        self._started = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        chunk = self._pending or self._raw.read(1 << 16)
        self._pending = b""
        if not chunk:
            if self._started and not self._dec.eof:
                raise _CorruptStream("zstd stream ends in the middle of a frame")
            return False
        if self._dec.eof:  # a new frame follows the finished one
            self._dec = self._zstd.ZstdDecompressor().decompressobj()
        self._started = True
        try:
            self._buf = self._dec.decompress(chunk)
        except self._zstd.ZstdError as e:
            raise _CorruptStream(str(e)) from e
        if self._dec.eof:
            self._pending = self._dec.unused_data
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            if not self._fill():
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading bytes, decompressing .gz and .zst transparently."""
    path = Path(path)
    compression = path.suffix.lower()
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdReader(open(path, "rb")), buffer_size=1 << 16)
    return open(path, "rb")


# ----------------------------------------------------------------------------------------------------------------------
# One reader per format: each yields (text, "") or (None, reason)


def _text_records(path: Path, field: str) -> Iterator[Record]:
    with open_binary(path) as f:
        data = f.read()
    if not data:
        yield None, "empty_file"
        return
    try:
        yield data.decode("utf-8"), ""
    except UnicodeDecodeError:
        yield None, "undecodable"


def _json_record(line: bytes, field: str) -> Record:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "undecodable"
    except ValueError:
        return None, "bad_json_line"
    if not isinstance(obj, dict):
        return None, "bad_json_line"
    value = obj.get(field)
    if value is None:
        return None, "missing_field"
    return (value, "") if isinstance(value, str) else (None, "bad_json_line")


def _jsonl_records(path: Path, field: str) -> Iterator[Record]:
    empty = True
    with open_binary(path) as f:
        for line in f:
            if empty:
                line = line.removeprefix(codecs.BOM_UTF8)
                empty = False
            if line.strip():
                yield _json_record(line, field)
    if empty:
        yield None, "empty_file"


@contextlib.contextmanager
def _seekable(path: Path) -> Iterator[Path]:
    # Parquet needs random access (the footer is at the end), so a compressed one is unpacked to a temp file first.
    if path.suffix.lower() not in COMPRESSIONS:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with open_binary(path) as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        yield Path(tmp.name)


def _parquet_records(path: Path, field: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        yield None, "empty_file"
        return
    with _seekable(path) as local:
        try:
            pf = pq.ParquetFile(local)
            if field not in pf.schema_arrow.names:
                yield from ((None, "missing_field") for _ in range(pf.metadata.num_rows))
                return
            # Row-group batches keep memory flat however large the file is.
            for batch in pf.iter_batches(columns=[field], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    yield _parquet_value(value)
        except (pa.ArrowException, ValueError) as e:
            raise _BadFile("bad_parquet", path, e) from e


def _parquet_value(value) -> Record:
    if value is None:
        return None, "missing_field"
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), ""
        except UnicodeDecodeError:
            return None, "undecodable"
    return (value, "") if isinstance(value, str) else (None, "bad_json_line")


_READERS: dict[str, Callable[[Path, str], Iterator[Record]]] = {
    "text": _text_records, "jsonl": _jsonl_records, "parquet": _parquet_records,
}


def iter_records(path: str | os.PathLike, field: str = "text") -> Iterator[Record]:
    """Yield (raw text, "") per document of one file, or (None, reason) per bad record; raise _BadFile if corrupt."""
    path = Path(path)
    fmt = file_format(path)
    if fmt is None:
        raise PlinthError(f"unsupported file type: {path} ({SUPPORTED})")
    try:
        yield from _READERS[fmt[0]](path, field)
    except (EOFError, zlib.error, gzip.BadGzipFile, _CorruptStream) as e:
        raise _BadFile("corrupt_compressed", path, e) from e
    except OSError as e:
        raise _BadFile("unreadable_file", path, e) from e


def clean(text: str) -> str:
    """Normalize a document: Unicode NFC, newlines to \\n, no byte-order mark, no blank lines or spaces at the ends."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.removeprefix("\ufeff").lstrip("\n").rstrip()


def _encode_clean(raw: str) -> tuple[str, bytes] | None:
    text = clean(raw)
    try:
        # JSON escapes can smuggle in lone surrogates, which no UTF-8 file or tokenizer accepts.
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        return None


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
        """Close the files; move the best train document to val if val would otherwise be empty."""
        for f in self.files.values():
            f.close()
        if guarantee_val and self.counts["val"]["documents"] == 0 and self.counts["train"]["documents"] >= 2:
            self._move_best_to_val()

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


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[..., None]]:
    """Yield `advance(n_bytes, description=None)`; draws a rich bar with MB/s when `enabled`, else does nothing."""
    if not enabled:
        yield lambda n, description=None: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def _check_prepare_args(cfg: PrepareConfig) -> None:
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise PlinthError(f"val_fraction must be in [0, 1), not {cfg.val_fraction}")
    if cfg.min_chars < 0 or cfg.max_docs < 0:
        raise PlinthError(f"min_chars and max_docs must be >= 0, not {cfg.min_chars} and {cfg.max_docs}")


def _ingest_file(path: Path, cfg: PrepareConfig, writer: _SplitWriter, stats: dict) -> bool:
    """Ingest one file; True once `cfg.max_docs` documents are kept."""
    skipped = stats["skipped"]
    for raw, reason in iter_records(path, cfg.field):
        if reason != "empty_file":
            stats["documents_in"] += 1
        if raw is None:
            skipped[reason] += 1
            continue
        cleaned = _encode_clean(raw)
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
    with progress_bar(progress, sum(sizes), "prepare") as advance:
        for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
            snapshot = copy.deepcopy(stats)
            writer.checkpoint()
            try:
                full = _ingest_file(path, cfg, writer, stats)
                stats["files_read"] += 1
                stats["bytes_in"] += size
            except _BadFile as e:
                # Skip the whole file: half a corrupt archive would silently bias the corpus.
                writer.rollback()
                stats.clear()
                stats.update(snapshot)
                stats["skipped"][e.reason] += 1
                full = False
            advance(size, description=f"prepare {i + 1}/{len(files)} files")
            if full:
                return


def prepare(cfg: PrepareConfig, progress: bool = False) -> dict:
    """Read, clean, deduplicate and split `cfg.inputs` into `cfg.out`/{train,val}.jsonl; return the report."""
    _check_prepare_args(cfg)
    files, unsupported = expand_inputs(cfg.inputs, exclude=cfg.out)
    stats = {"files_read": 0, "bytes_in": 0, "documents_in": 0, "skipped": dict.fromkeys(SKIP_REASONS, 0)}
    stats["skipped"]["unsupported_file"] = unsupported
    with atomic_dir(cfg.out) as tmp:
        writer = _SplitWriter(tmp, cfg.val_fraction, cfg.seed)
        try:
            _ingest_all(files, cfg, writer, stats, progress)
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
        "skipped": stats["skipped"],
    }


def _nothing_kept_message(cfg: PrepareConfig, skipped: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in skipped.items() if v) or "the inputs hold no text"
    hint = f"; is the text in a field other than {cfg.field!r}? set --field" if skipped["missing_field"] else ""
    return f"no documents kept from {' '.join(cfg.inputs)} (skipped: {reasons}){hint}"


def read_texts(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """Yield the cleaned documents of a file, folder, glob or builtin:NAME; bad records and files are skipped."""
    files, _ = expand_inputs([str(path)])
    for file in files:
        try:
            for raw, _reason in iter_records(file, field):
                cleaned = _encode_clean(raw) if raw is not None else None
                if cleaned is not None and cleaned[0]:
                    yield cleaned[0]
        except _BadFile:
            continue


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
