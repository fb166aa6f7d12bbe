"""General-purpose compressors as a yardstick for language models: bits per byte of bz2, xz and gzip on a text.

A language model's bits per byte on a text and a compressor's compressed bits per original byte measure the same
thing (code length; Shannon 1948, and Delétang et al. 2024, "Language Modeling Is Compression"), so a model that
cannot beat `bz2` on English prose has learned little about English. Compressors adapt to the text itself, so they do
better the longer and more repetitive it is; compare on the same bytes and say how many.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterable

from plinth.common import PlinthError


def compressor_bits_per_byte(texts: Iterable[str]) -> dict[str, float]:
    """{'bz2': …, 'xz': …, 'gzip': …, 'bytes': n}: 8 × compressed size / original size of the documents' UTF-8
    bytes (joined by a newline), each compressor at its strongest standard setting.

    Raises PlinthError when there is no text.
    """
    data = "\n".join(texts).encode("utf-8")
    if not data:
        raise PlinthError("no text to compress")
    sizes = {
        "bz2": len(bz2.compress(data, compresslevel=9)),
        "xz": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "gzip": len(gzip.compress(data, compresslevel=9, mtime=0)),
    }
    return {**{k: 8 * v / len(data) for k, v in sizes.items()}, "bytes": len(data)}
