"""Cleaning applied to every document, whatever reader produced it: Unicode NFC, one newline convention, no
byte-order mark, no blank lines or spaces at the ends. Quality filters (later) sit beside this as their own files."""

from __future__ import annotations

import unicodedata


def clean(text: str) -> str:
    """Normalize a document: Unicode NFC, newlines to \\n, no byte-order mark, no blank lines or spaces at the ends."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.removeprefix("\ufeff").lstrip("\n").rstrip()


def encode_clean(raw: str) -> tuple[str, bytes] | None:
    """(cleaned text, its UTF-8 bytes), or None when it cannot be encoded (lone surrogates from JSON escapes)."""
    text = clean(raw)
    try:
        # JSON escapes can smuggle in lone surrogates, which no UTF-8 file or tokenizer accepts.
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Split writer: streams documents into train/val files and can undo a file that turns out to be corrupt
