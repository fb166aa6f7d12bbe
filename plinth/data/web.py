"""Web archives -> documents: read WARC, WET and ARC files (gzipped or not) and extract the main text of HTML pages.

Reading goes through a maintained library: FastWARC for WARC and WET (about 3x faster than warcio here), warcio for
ARC (FastWARC does not read ARC) and as the fallback. Text extraction is Resiliparse's main-content extractor by
default (fast) or trafilatura (more precise, about 10x slower). Neither reader raises on a record cut short, so the
payload length is checked against the record's Content-Length here.

A document is a dict: {"id", "text", "url", "date", "source", "file", "encoding"}. Records that do not become
documents are counted by reason (SKIP_REASONS) in a ReadStats and skipped.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from plinth.common import PlinthError
from plinth.data.clean import clean

__all__ = ["SKIP_REASONS", "ReadStats", "Payload", "archive_format", "iter_payloads", "decode_html", "extract_text",
           "iter_documents", "is_html"]

# Why a record did not become a document. `corrupt_stream` counts files whose remaining records could not be read.
SKIP_REASONS = ("http_error", "non_html", "truncated", "too_large", "empty", "undecodable", "no_text",
                "corrupt_stream")
DOC_RECORD_TYPES = ("response", "conversion", "resource")
HTML_TYPES = ("text/html", "application/xhtml+xml", "application/xml+xhtml")


@dataclass
class ReadStats:
    """What reading one or more archives saw; merge with `+=`."""

    files: int = 0
    bytes_in: int = 0                    # archive bytes on disk (compressed)
    records: Counter = field(default_factory=Counter)          # by WARC-Type
    payload_bytes: int = 0               # HTTP bodies of candidate records (uncompressed)
    documents: int = 0
    text_bytes: int = 0                  # UTF-8 bytes of extracted text
    skipped: Counter = field(default_factory=Counter)          # reason -> records
    skipped_bytes: Counter = field(default_factory=Counter)    # reason -> payload bytes
    encodings: Counter = field(default_factory=Counter)        # codec used to decode HTML -> documents

    def skip(self, reason: str, nbytes: int = 0) -> None:
        self.skipped[reason] += 1
        self.skipped_bytes[reason] += nbytes

    def __iadd__(self, other: ReadStats) -> ReadStats:
        for name in ("files", "bytes_in", "payload_bytes", "documents", "text_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("records", "skipped", "skipped_bytes", "encodings"):
            getattr(self, name).update(getattr(other, name))
        return self

    def to_dict(self) -> dict:
        return {"files": self.files, "bytes_in": self.bytes_in, "records": dict(sorted(self.records.items())),
                "payload_bytes": self.payload_bytes, "documents": self.documents, "text_bytes": self.text_bytes,
                "skipped": {r: self.skipped.get(r, 0) for r in SKIP_REASONS},
                "skipped_bytes": {r: self.skipped_bytes.get(r, 0) for r in SKIP_REASONS},
                "encodings": dict(sorted(self.encodings.items()))}

    @classmethod
    def from_dict(cls, d: dict) -> ReadStats:
        s = cls(files=d["files"], bytes_in=d["bytes_in"], payload_bytes=d["payload_bytes"],
                documents=d["documents"], text_bytes=d["text_bytes"])
        for name in ("records", "skipped", "skipped_bytes", "encodings"):
            getattr(s, name).update(d[name])
        return s


@dataclass
class Payload:
    """One candidate record: an HTTP response body (kind 'html') or WET plain text (kind 'text')."""

    url: str
    date: str
    record_id: str
    body: bytes
    content_type: str
    charset: str | None
    kind: str


# ----------------------------------------------------------------------------------------------------------------------
# Reading archives


def archive_format(path: str | os.PathLike) -> str:
    """'warc', 'wet' or 'arc' from the file name (optionally .gz); PlinthError naming the file otherwise."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".wet", ".warc.wet")):
        return "wet"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith(".arc"):
        return "arc"
    raise PlinthError(f"{path}: not a web archive (expected .warc, .wet or .arc, optionally .gz)")


def _fastwarc_available() -> bool:
    try:
        import fastwarc  # noqa: F401
    except ImportError:
        return False
    return True


def require(module: str, package: str | None = None) -> None:
    """Import `module` or raise a one-line PlinthError naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise PlinthError(f"the web-data pipeline needs {package or module}: pip install 'plinth[web]'") from None


def iter_payloads(path: str | os.PathLike, stats: ReadStats, reader: str = "auto",
                  max_payload_bytes: int = 5_000_000, keep_http_errors: bool = False,
                  progress: Callable[[int], None] | None = None) -> Iterator[Payload]:
    """Yield the candidate records of one archive; count every record in `stats` and skip the unusable ones.

    `progress(offset)` is called after each record with the bytes of the archive file read so far.
    """
    fmt = archive_format(path)
    if reader == "auto":
        reader = "fastwarc" if fmt != "arc" and _fastwarc_available() else "warcio"
    if reader == "fastwarc" and fmt == "arc":
        raise PlinthError(f"{path}: fastwarc cannot read ARC files; use --read.reader warcio or auto")
    require("warcio" if reader == "warcio" else "fastwarc")
    stats.files += 1
    stats.bytes_in += os.path.getsize(path)
    with open(path, "rb") as fh:
        records = _warcio_records(fh) if reader == "warcio" else _fastwarc_records(fh)
        try:
            for rtype, headers, status, body, declared_len in records:
                stats.records[rtype] += 1
                if progress is not None:
                    progress(fh.tell())
                if rtype not in DOC_RECORD_TYPES:
                    continue
                p = _payload(path, fmt, rtype, headers, status, body, declared_len, stats, max_payload_bytes,
                             keep_http_errors)
                if p is not None:
                    yield p
        except _CorruptStream:
            stats.skip("corrupt_stream")


class _CorruptStream(Exception):
    pass


def _payload(path, fmt, rtype, headers, status, body, declared_len, stats, max_bytes, keep_errors) -> Payload | None:
    n = len(body)
    stats.payload_bytes += n
    if headers.get("warc-truncated") or (declared_len is not None and n < declared_len):
        stats.skip("truncated", n)
        return None
    if rtype == "response" and status != 200 and not keep_errors:
        stats.skip("http_error", n)
        return None
    if n > max_bytes:
        stats.skip("too_large", n)
        return None
    kind = "text" if rtype == "conversion" or fmt == "wet" else "html"
    ctype = headers.get("content-type", "")
    if kind == "html" and not is_html(ctype, body):
        stats.skip("empty" if not body.strip() else "non_html", n)
        return None
    if not body.strip():
        stats.skip("empty", n)
        return None
    url = headers.get("warc-target-uri", "")
    rid = headers.get("warc-record-id", "").strip("<>") or "sha1:" + hashlib.sha1(
        f"{path}|{url}|{headers.get('warc-date', '')}".encode()).hexdigest()
    return Payload(url, headers.get("warc-date", ""), rid, body, ctype, _charset(ctype), kind)


def is_html(content_type: str, body: bytes) -> bool:
    """True for an HTML content type, or (no usable type) a body that starts like an HTML document."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in HTML_TYPES:
        return True
    if ctype and ctype not in ("application/octet-stream", "text/plain", "unknown/unknown"):
        return False
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _charset(content_type: str) -> str | None:
    m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.I)
    return m.group(1).lower() if m else None


def _lower(pairs) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in pairs}


def _warcio_records(fh: BinaryIO) -> Iterator[tuple[str, dict, int | None, bytes, int | None]]:
    import gzip

    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    try:
        for rec in ArchiveIterator(fh, arc2warc=True):
            headers = _lower(rec.rec_headers.headers)
            status, declared = None, None
            if rec.http_headers is not None and rec.rec_type == "response":
                headers.update(_lower(rec.http_headers.headers))
                code = rec.http_headers.get_statuscode()
                status = int(code) if code and code.isdigit() else None
            if rec.rec_type not in DOC_RECORD_TYPES:
                yield rec.rec_type, headers, status, b"", None
                continue
            body = rec.content_stream().read()
            # warcio returns a short body without complaint when the stream ends early; its LimitReader
            # still holds the bytes it was promised.
            remaining = getattr(rec.raw_stream, "limit", 0)
            if remaining:
                declared = len(body) + remaining
            yield rec.rec_type, headers, status, body, declared
    except (ArchiveLoadFailed, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as e:
        raise _CorruptStream(str(e)) from e


def _fastwarc_records(fh: BinaryIO) -> Iterator[tuple[str, dict, int | None, bytes, int | None]]:
    from fastwarc.warc import ArchiveIterator

    try:
        for rec in ArchiveIterator(fh, parse_http=True):
            headers = _lower(rec.headers.items())
            rtype = headers.get("warc-type", "unknown")
            status = None
            if rec.is_http and rec.is_http_parsed:
                headers.update(_lower(rec.http_headers.items()))
                status = rec.http_headers.status_code
            if rtype not in DOC_RECORD_TYPES:
                yield rtype, headers, status, b"", None
                continue
            declared = rec.content_length
            body = rec.reader.read()
            body, declared = _content_decode(body, declared, headers.get("content-encoding", ""))
            yield rtype, headers, status, body, declared
    except (OSError, ValueError) as e:
        raise _CorruptStream(str(e)) from e


def _content_decode(body: bytes, declared: int, encoding: str) -> tuple[bytes, int | None]:
    """Undo a gzip/deflate Content-Encoding as warcio does (FastWARC leaves it); the length check then uses the
    compressed length."""
    enc = encoding.strip().lower()
    if enc not in ("gzip", "x-gzip", "deflate") or not body:
        return body, declared
    if len(body) < declared:
        return body, declared
    try:
        return zlib.decompress(body, 16 + zlib.MAX_WBITS if "gzip" in enc else zlib.MAX_WBITS), None
    except zlib.error:
        return body, None


# ----------------------------------------------------------------------------------------------------------------------
# Decoding and extraction

_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)
# WHATWG maps these labels to a superset; Python's codec of the same name would reject valid pages.
_WHATWG = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252",
           "ascii": "cp1252", "windows-1252": "cp1252", "shift_jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
           "shift-jis": "cp932", "windows-31j": "cp932", "gb2312": "gb18030", "gbk": "gb18030", "euc-kr": "cp949",
           "ks_c_5601-1987": "cp949", "big5": "big5hkscs", "iso-8859-9": "cp1254", "tis-620": "cp874",
           "x-user-defined": "cp1252", "unicode": "utf-8", "utf8": "utf-8"}


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    label = _WHATWG.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _detect(body: bytes) -> str | None:
    try:
        from resiliparse.parse.encoding import detect_encoding
    except ImportError:
        from charset_normalizer import from_bytes

        best = from_bytes(body[:65536]).best()
        return best.encoding if best else None
    return detect_encoding(body)


_NON_TEXT = bytes(range(0, 9)) + b"\x0b" + bytes(range(14, 32)) + b"\x7f"
_KEEP_TEXT = bytes(b for b in range(256) if b not in _NON_TEXT)


def _looks_binary(body: bytes) -> bool:
    """More than 1% control bytes (other than tab, newlines, form feed) in the first 20 kB."""
    sample = body[:20000]
    return len(sample.translate(None, _KEEP_TEXT)) > 0.01 * len(sample)


def _candidates(body: bytes, declared: str | None) -> Iterator[str | None]:
    if body.startswith(codecs.BOM_UTF8):
        yield "utf-8-sig"
        return
    yield declared
    meta = _META.search(body[:4096])
    yield meta.group(1).decode("ascii", "ignore") if meta else None
    yield "utf-8"
    yield _detect(body)      # only reached when the cheaper guesses failed


def decode_html(body: bytes, declared: str | None = None) -> tuple[str, str] | None:
    """(text, codec) of an HTML body: BOM, then the HTTP charset, then <meta charset>, then UTF-8, then a detector;
    each tried strictly. None if none decodes or the body is binary (control bytes)."""
    if _looks_binary(body):
        return None
    tried = set()
    for label in _candidates(body, declared):
        codec = _codec(label)
        if codec is None or codec in tried:
            continue
        tried.add(codec)
        try:
            text = body.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        if text.count("\ufffd") > 0.01 * len(text):
            return None
        return text, codec
    return None


def extract_text(html: str, extractor: str = "resiliparse") -> str:
    """Main text of an HTML page, one block per line, no blank lines; '' if there is none."""
    require("resiliparse" if extractor == "resiliparse" else "trafilatura")
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        text = extract_plain_text(html, main_content=True, comments=False, alt_texts=False, links=False,
                                  form_fields=False, noscript=False, list_bullets=True)
    elif extractor == "trafilatura":
        import trafilatura

        text = trafilatura.extract(html, include_comments=False, include_tables=True, deduplicate=False) or ""
    else:
        raise PlinthError(f"read.extractor: unknown extractor {extractor!r} (use resiliparse or trafilatura)")
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def iter_documents(path: str | os.PathLike, source: str, stats: ReadStats, reader: str = "auto",
                   extractor: str = "resiliparse", max_payload_bytes: int = 5_000_000,
                   keep_http_errors: bool = False, progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Yield one document per usable record of an archive, in file order; count the rest in `stats`.

    Texts go through `plinth.data.clean.clean` (NFC, one newline convention), as every other reader's do.
    """
    name = Path(path).name
    for p in iter_payloads(path, stats, reader, max_payload_bytes, keep_http_errors, progress):
        decoded = decode_html(p.body, p.charset) if p.kind == "html" else _decode_text(p.body)
        if decoded is None:
            stats.skip("undecodable", len(p.body))
            continue
        raw, codec = decoded
        text = clean(extract_text(raw, extractor) if p.kind == "html" else _clean_lines(raw))
        if not text:
            stats.skip("no_text", len(p.body))
            continue
        stats.documents += 1
        stats.text_bytes += len(text.encode("utf-8"))
        stats.encodings[codec] += 1
        yield {"id": p.record_id, "text": text, "url": p.url, "date": p.date, "source": source, "file": name,
               "encoding": codec}


def _decode_text(body: bytes) -> tuple[str, str] | None:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return None


def _clean_lines(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
