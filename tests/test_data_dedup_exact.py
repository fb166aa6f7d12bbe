"""Dedup's fast paths against their definitions: normalised text and datasketch's own MinHash signatures."""

from __future__ import annotations

import random
import re
import unicodedata
import zlib

import numpy as np
import pytest

pytest.importorskip("datasketch")

from plinth.data.dedup import MinHasher, normalize_text, shingles, word_shingle_hashes  # noqa: E402
from tests.web_helpers import ARTICLE  # noqa: E402

_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_" + ".,;:!?\"'()[]{}#-*&%$@/\\^`|~+=<>" +
          " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x00" + "éÉßİﬁ²½\u0301\u2019\u00a0日本😀\u2028\u3000«»—\ud800")


def _texts(n: int, seed: int = 0, ascii_only: bool = False) -> list[str]:
    r = random.Random(seed)
    chars = "".join(c for c in _CHARS if c.isascii()) if ascii_only else _CHARS
    out = [ARTICLE, "", " ", "A.B", "Hello, World!! 42_x"]
    for _ in range(n):
        pool = "".join(r.sample(chars, r.randint(3, 30)))
        out.append("".join(r.choice(pool) for _ in range(r.randint(0, 300))))
    return out


def _normalize_reference(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]+", " ", text).split())


def test_normalize_text_equals_its_definition():
    for t in _texts(1500, ascii_only=True) + _texts(500, seed=1):
        assert normalize_text(t) == _normalize_reference(t), repr(t)


@pytest.mark.parametrize("unit,hash_name", [("word", "crc32"), ("word", "sha1"), ("char", "crc32"), ("char", "sha1")])
def test_signatures_equal_datasketch_minhash(unit, hash_name):
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    hashfunc = zlib.crc32 if hash_name == "crc32" else sha1_hash32
    mh = MinHasher(num_perm=64, seed=3, shingle_size=3, shingle_unit=unit, hash=hash_name)
    for t in _texts(150, seed=2):
        if unit == "word":
            m = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=int)
            m.update_batch(word_shingle_hashes(normalize_text(t), 3, hashfunc).tolist())
        else:
            m = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=hashfunc)
            m.update_batch(shingles(t, 3, unit))
        sig = mh.signature(t)
        assert sig.dtype == np.uint32 and np.array_equal(sig, m.hashvalues.astype(np.uint32))


@pytest.mark.parametrize("num_perm,seed", [(128, 1), (16, 0), (256, 12345)])
def test_permutations_equal_datasketch(num_perm, seed):
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    from plinth.data.dedup import _sha1_hash32

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    mh = MinHasher(num_perm=num_perm, seed=seed)
    assert mh._a.dtype == np.uint32 and np.array_equal(mh._a, a) and np.array_equal(mh._b, b)
    for data in (b"", b"a", "日本".encode(), bytes(range(256))):
        assert _sha1_hash32(data) == sha1_hash32(data)


def test_empty_hashes_give_datasketch_initial_values():
    from datasketch import MinHash

    mh = MinHasher(num_perm=16)
    empty = MinHash(num_perm=16, seed=1, scheme="affine32").hashvalues
    assert np.array_equal(mh._min_affine(np.zeros(0, dtype=np.uint64)), empty)
