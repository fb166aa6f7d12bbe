"""Readers for raw files: one per format (text, JSON lines, Parquet), each over a transparently decompressed byte
stream, and the expansion of inputs (files, folders, globs, builtin:NAME) into files.

A reader yields (raw text, "") per document or (None, reason) per bad record; a whole unusable file raises
`BadFile`. `prepare`, `read_texts` and the tokenizer trainer all go through these readers, and every document passes
through `plinth.data.clean.clean`, so a document is read and cleaned the same way everywhere. New formats (web crawl
archives) arrive as new readers beside these.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from plinth.common import PlinthError
from plinth.data.clean import encode_clean
from plinth.data.corpus import BUILTIN, builtin_files, iter_builtin

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


class BadFile(Exception):
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


class BuiltinSource:
    """A built-in corpus whose documents are built from its files (not one per file), read as one input.

    It answers the few Path methods the readers use: `resolve()`, `stat().st_size`, `name`.
    """

    def __init__(self, corpus: str) -> None:
        self.corpus, self.name = corpus, f"builtin:{corpus}"
        self.files = builtin_files(corpus)  # reports a missing package now, not mid-read

    def resolve(self) -> BuiltinSource:
        return self

    def stat(self) -> os.stat_result:
        size = sum(p.stat().st_size for p in self.files)
        return os.stat_result((0, 0, 0, 0, 0, 0, size, 0, 0, 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BuiltinSource) and other.corpus == self.corpus

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name


def _expand_one(spec: str, exclude: Path | None) -> tuple[list[Path], int]:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name in BUILTIN and BUILTIN[name].documents is not None:
            return [BuiltinSource(name)], 0
        return builtin_files(name), 0
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
            raise BadFile("bad_parquet", path, e) from e


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
    """Yield (raw text, "") per document of one file, or (None, reason) per bad record; raise BadFile if corrupt."""
    if isinstance(path, BuiltinSource):
        yield from ((text, "") for text in iter_builtin(path.corpus))
        return
    path = Path(path)
    fmt = file_format(path)
    if fmt is None:
        raise PlinthError(f"unsupported file type: {path} ({SUPPORTED})")
    try:
        yield from _READERS[fmt[0]](path, field)
    except (EOFError, zlib.error, gzip.BadGzipFile, _CorruptStream) as e:
        raise BadFile("corrupt_compressed", path, e) from e
    except OSError as e:
        raise BadFile("unreadable_file", path, e) from e



def read_texts(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """Yield the cleaned documents of a file, folder, glob or builtin:NAME; bad records and files are skipped."""
    files, _ = expand_inputs([str(path)])
    for file in files:
        try:
            for raw, _reason in iter_records(file, field):
                cleaned = encode_clean(raw) if raw is not None else None
                if cleaned is not None and cleaned[0]:
                    yield cleaned[0]
        except BadFile:
            continue
