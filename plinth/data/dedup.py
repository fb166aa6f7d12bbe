"""Deduplication across the whole corpus: exact (hash of normalised text) then near-duplicate (MinHash + LSH).

Signatures are datasketch's MinHash (scheme affine32), computed with numpy from the same permutations (the tests
check them against datasketch). Candidate pairs come from LSH banding: `bands` bands of `rows` rows, so
a pair with Jaccard similarity s becomes a candidate with probability 1 - (1 - s**rows)**bands. Candidates are then
*verified*: a document is removed only if its estimated Jaccard similarity to the document that is kept reaches
`threshold`. Clusters are stars around a kept document, built greedily in priority order inside each connected
component of the candidate graph, so a chain of weak matches (A~B, B~C, A!~C) never removes C on A's account; such
components are split and counted (`split_components`) in the report.

Exactly one document of each cluster is kept, chosen deterministically: the first in input order (`keep: first`),
or the longest with input order breaking ties (`keep: longest`). Memory is a few 8-byte words per document, never
the texts: signatures stay on disk, band hashes are computed one band at a time, and verification reads signature
rows of one candidate component at a time.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from plinth.config import DedupConfig, PlinthError

__all__ = ["normalize_text", "exact_key", "shingles", "MinHasher", "band_hash", "band_hashes", "s_curve",
           "DedupResult", "deduplicate", "dedup_documents"]

_NON_WORD = re.compile(r"[^\w\s]+", re.UNICODE)
# ASCII characters that are neither word characters nor whitespace (as `_NON_WORD` sees them) -> a space
_ASCII_PUNCT_TO_SPACE = bytes(i if i >= 128 or re.match(r"[\w\s]", chr(i)) else ord(" ") for i in range(256))
_NON_ASCII_NON_WORD = re.compile(r"[^\x00-\x7f\w\s]")
KEPT, EXACT, NEAR = 0, 1, 2


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed: what 'the same text' means for dedup.

    Punctuation (`_NON_WORD`) becomes spaces one character at a time, which split() then collapses as the regex's runs
    would be: ASCII characters by one bytes.translate over the UTF-8 bytes (bytes >= 128 pass unchanged), the rarer
    non-ASCII ones by a regex. The same string as the regex over the whole text, in a quarter of the time."""
    if text.isascii():   # NFKC leaves ASCII alone and casefold() is lower()
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKC", text).casefold()
    text = text.encode("utf-8", "surrogatepass").translate(_ASCII_PUNCT_TO_SPACE).decode("utf-8", "surrogatepass")
    if not text.isascii():
        text = _NON_ASCII_NON_WORD.sub(" ", text)
    return " ".join(text.split())


def exact_key(text: str, norm: str | None = None) -> bytes:
    """16-byte BLAKE2b digest of the normalised text (`norm`, if the caller has it already)."""
    norm = normalize_text(text) if norm is None else norm
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


def shingles(text: str, size: int = 5, unit: str = "word") -> list[bytes]:
    """Overlapping n-grams of words (or characters) of the normalised text; one shingle if the text is shorter."""
    norm = normalize_text(text)
    if unit == "word":
        words = norm.split()
        if len(words) <= size:
            return [" ".join(words).encode("utf-8")]
        return [" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)]
    if unit == "char":
        if len(norm) <= size:
            return [norm.encode("utf-8")]
        return [norm[i:i + size].encode("utf-8") for i in range(len(norm) - size + 1)]
    raise PlinthError(f"dedup.shingle_unit: unknown unit {unit!r} (use word or char)")


_ROLL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (2^64 / golden ratio)
_LOW32 = np.uint64(0xFFFFFFFF)


def word_shingle_hashes(norm: str, size: int, hashfunc=zlib.crc32) -> np.ndarray:
    """One 32-bit hash per word shingle of normalised text, without building the shingle strings: each word is hashed
    once (`hashfunc`, in C via map), then the `size` word hashes of a shingle are combined in order by a polynomial
    in uint64 and folded to 32 bits. A text of at most `size` words is one shingle."""
    words = norm.encode("utf-8").split() or [b""]
    w = np.fromiter(map(hashfunc, words), dtype=np.uint64, count=len(words))
    size = min(size, len(w))
    m = len(w) - size + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            h = h * _ROLL + w[k:k + m] + np.uint64(1)
    return (h >> np.uint64(32)) ^ (h & _LOW32)


_FMIX32 = (16, np.uint32(0x85EBCA6B), 13, np.uint32(0xC2B2AE35), 16)   # MurmurHash3's 32-bit finalizer


def _affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of datasketch 2's affine32 scheme, drawn as `MinHash(num_perm, seed, scheme="affine32")` draws them:
    odd multipliers a and offsets b from `np.random.RandomState(seed)`. Drawn here so that a worker need not import
    datasketch, whose package import pulls in scipy.integrate for its LSH classes (0.55 s per process, before any
    document is read); the tests check both arrays against datasketch's."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _sha1_hash32(data: bytes) -> int:
    """datasketch.hashfunc.sha1_hash32: the first 4 bytes of the SHA-1 digest, little-endian."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


class MinHasher:
    """MinHash signatures (uint32, `num_perm` values) exactly as datasketch's `MinHash` (scheme affine32) computes
    them. Word shingles are hashed by `word_shingle_hashes` (crc32 or SHA-1 of each word, combined per shingle),
    character shingles by crc32 or SHA-1 of the shingle itself.

    The affine32 arithmetic (`_min_affine`) is done here in numpy rather than through a `MinHash` object per
    document: datasketch turns the hashes into a Python list and back, which was 40% of the signature time. The tests
    check the signatures against datasketch's `MinHash.update_batch`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle_size: int = 5, shingle_unit: str = "word",
                 hash: str = "crc32"):
        if hash not in ("crc32", "sha1"):
            raise PlinthError(f"dedup.hash: unknown hash {hash!r} (use crc32 or sha1)")
        if shingle_unit not in ("word", "char"):
            raise PlinthError(f"dedup.shingle_unit: unknown unit {shingle_unit!r} (use word or char)")
        self._hashfunc = zlib.crc32 if hash == "crc32" else _sha1_hash32
        self.num_perm, self.seed = num_perm, seed
        self.shingle_size, self.shingle_unit = shingle_size, shingle_unit
        # The scheme is pinned: datasketch 2.0 changed its default, and signatures of two schemes do not compare.
        self._a, self._b = _affine32_permutations(num_perm, seed)

    @classmethod
    def from_config(cls, cfg: DedupConfig) -> MinHasher:
        return cls(cfg.num_perm, cfg.seed, cfg.shingle_size, cfg.shingle_unit, cfg.hash)

    def signature(self, text: str, norm: str | None = None) -> np.ndarray:
        """(num_perm,) uint32 MinHash of the text's shingles (`norm`: its normalised form, if already computed)."""
        if self.shingle_unit == "word":
            norm = normalize_text(text) if norm is None else norm
            hv = word_shingle_hashes(norm, self.shingle_size, self._hashfunc)
        else:
            hv = np.array([self._hashfunc(s) for s in shingles(text, self.shingle_size, self.shingle_unit)],
                          dtype=np.uint64)
        return self._min_affine(hv)

    def _min_affine(self, hv: np.ndarray) -> np.ndarray:
        """datasketch's affine32 update of a fresh MinHash by 32-bit hashes `hv`: MurmurHash3-finalize each, apply
        every permutation a*h+b mod 2^32, keep the minimum per permutation (all-ones if `hv` is empty)."""
        if hv.max(initial=0) >> 32:
            raise PlinthError("dedup: shingle hashes must fit 32 bits")
        if not len(hv):
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        s1, m1, s2, m2, s3 = _FMIX32
        h = hv.astype(np.uint32)
        h = (h ^ (h >> s1)) * m1
        h = (h ^ (h >> s2)) * m2
        h ^= h >> s3
        phv = h[:, None] * self._a      # (n, num_perm), wrapping mod 2^32
        phv += self._b
        return phv.min(axis=0)


def band_hash(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """(N,) uint64: the hash of band `band` (signature columns band*rows .. band*rows+rows-1) of each (N, num_perm)
    signature row (FNV-1a-style mixing of the 32-bit values)."""
    prime = np.uint64(0x100000001B3)
    h = np.full(sig.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(band * rows, (band + 1) * rows):
            h = (h ^ sig[:, j].astype(np.uint64)) * prime
    return h


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: every band hash of each (N, num_perm) signature row."""
    sig = np.asarray(sig)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        out[:, b] = band_hash(sig, b, rows)
    return out


def s_curve(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard similarity shares at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


@dataclass
class DedupResult:
    """Per document (in input order): kind (0 kept, 1 exact duplicate, 2 near duplicate), the index of the document
    kept in its place (-1 if kept) and the estimated similarity to it; plus counters."""

    kind: np.ndarray
    kept_for: np.ndarray
    similarity: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.kind == KEPT

    def clusters(self) -> list[tuple[int, list[int]]]:
        """(kept index, removed indices) for every cluster with at least one removed document, by kept index."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i in np.nonzero(self.kind != KEPT)[0]:
            groups[int(self.kept_for[i])].append(int(i))
        return sorted(groups.items())


def _priority(n: int, lengths: np.ndarray | None, keep: str) -> np.ndarray:
    """rank[i]: smaller is kept first."""
    idx = np.arange(n)
    if keep == "first" or lengths is None:
        return idx
    order = np.lexsort((idx, -np.asarray(lengths, dtype=np.int64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = idx
    return rank


def _exact(keys: np.ndarray, rank: np.ndarray, res: DedupResult) -> None:
    order = np.lexsort((rank, keys[:, 1], keys[:, 0]))
    k = keys[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = np.any(k[1:] != k[:-1], axis=1)
    leader = order[np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))]
    dup = ~new_group
    res.kind[order[dup]] = EXACT
    res.kept_for[order[dup]] = leader[dup]
    res.similarity[order[dup]] = 1.0
    res.stats["exact"] = {"clusters": len(np.unique(leader[dup])), "removed": int(dup.sum())}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        p = self.parent.setdefault(x, x)
        while p != x:
            self.parent[x] = self.parent.setdefault(p, p)
            x, p = p, self.parent[p]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _candidate_components(band: Callable[[int], np.ndarray], bands: int, alive: np.ndarray,
                          rank: np.ndarray) -> tuple[list[list[int]], int]:
    """Connected components (size >= 2) of the LSH candidate graph over alive documents, and the number of
    candidate edges (each bucket member linked to the bucket's first member). `band(b)` gives band b's hashes."""
    uf = _UnionFind()
    edges = 0
    ids = np.nonzero(alive)[0]
    for b in range(bands):
        h = band(b)[ids]
        order = np.lexsort((rank[ids], h))
        hs = h[order]
        same = np.zeros(len(hs), dtype=bool)
        same[1:] = hs[1:] == hs[:-1]
        if not same.any():
            continue
        starts = np.nonzero(~same)[0]
        head = ids[order[starts[np.searchsorted(starts, np.arange(len(hs)), side="right") - 1]]]
        for i in np.nonzero(same)[0]:
            uf.union(int(head[i]), int(ids[order[i]]))
            edges += 1
    comps: dict[int, list[int]] = defaultdict(list)
    for x in list(uf.parent):
        comps[uf.find(x)].append(x)
    return [sorted(c, key=lambda i: rank[i]) for c in comps.values() if len(c) > 1], edges


def _near(sig_rows: Callable[[np.ndarray], np.ndarray], band: Callable[[int], np.ndarray], rank: np.ndarray,
          res: DedupResult, cfg: DedupConfig) -> None:
    comps, edges = _candidate_components(band, cfg.bands, res.kind == KEPT, rank)
    st = {"candidate_edges": edges, "components": len(comps), "clusters": 0, "removed": 0, "rejected_members": 0,
          "split_components": 0, "oversized_components": 0, "split_examples": []}
    for comp in sorted(comps, key=lambda c: rank[c[0]]):
        members = np.array(comp, dtype=np.int64)
        sigs = sig_rows(members)
        if len(members) > cfg.max_component:
            st["oversized_components"] += 1
        keepers = 0
        pending = np.arange(len(members))
        while len(pending):
            head, rest = pending[0], pending[1:]
            keepers += 1
            sims = (sigs[rest] == sigs[head]).mean(axis=1) if len(rest) else np.zeros(0)
            dup = sims >= cfg.threshold
            if dup.any():
                st["clusters"] += 1
                st["removed"] += int(dup.sum())
                res.kind[members[rest[dup]]] = NEAR
                res.kept_for[members[rest[dup]]] = members[head]
                res.similarity[members[rest[dup]]] = sims[dup]
            pending = rest[~dup]
            if len(members) > cfg.max_component:   # verify against the first member only, keep the rest
                break
        if keepers > 1:
            st["split_components"] += 1
            if len(st["split_examples"]) < 5:
                st["split_examples"].append([int(m) for m in members[:10]])
        st["rejected_members"] += int(len(members) - 1 - np.count_nonzero(res.kind[members] == NEAR))
    res.stats["near"] = st


def _resolve_chains(res: DedupResult) -> None:
    """An exact duplicate whose kept copy was then removed as a near duplicate points at the final kept document."""
    exact = np.nonzero(res.kind == EXACT)[0]
    moved = exact[res.kind[res.kept_for[exact]] != KEPT]
    if len(moved):
        mid = res.kept_for[moved]
        res.similarity[moved] = res.similarity[mid]
        res.kept_for[moved] = res.kept_for[mid]


def deduplicate(n: int, cfg: DedupConfig, keys: np.ndarray | None = None,
                band: Callable[[int], np.ndarray] | None = None,
                sig_rows: Callable[[np.ndarray], np.ndarray] | None = None,
                lengths: np.ndarray | None = None) -> DedupResult:
    """Deduplicate n documents in input order.

    keys: (n, 2) uint64 exact-key halves (needed if cfg.exact); band: b -> (n,) uint64 hashes of band b and
    sig_rows: indices -> (k, num_perm) signatures (needed if cfg.near); lengths: characters per document (for
    keep=longest).
    """
    res = DedupResult(np.zeros(n, dtype=np.uint8), np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32))
    res.stats = {"documents": n, "exact": {"clusters": 0, "removed": 0}, "near": {"clusters": 0, "removed": 0}}
    if n == 0:
        return res
    rank = _priority(n, lengths, cfg.keep)
    if cfg.exact:
        if keys is None or len(keys) != n:
            raise PlinthError("dedup: exact keys missing or of the wrong length")
        _exact(np.asarray(keys, dtype=np.uint64), rank, res)
    if cfg.near:
        if band is None or sig_rows is None:
            raise PlinthError("dedup: band hashes / signatures missing")
        _near(sig_rows, band, rank, res, cfg)
        _resolve_chains(res)
    res.stats["removed"] = int(np.count_nonzero(res.kind != KEPT))
    res.stats["kept"] = n - res.stats["removed"]
    res.stats["lsh"] = {"bands": cfg.bands, "rows": cfg.rows, "threshold": cfg.threshold,
                        "candidate_probability": {str(s): round(s_curve(s, cfg.bands, cfg.rows), 4)
                                                  for s in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)}}
    return res


def dedup_documents(docs: Sequence[dict], cfg: DedupConfig | None = None) -> tuple[list[dict], DedupResult]:
    """In-memory convenience: (kept documents in order, result) for a list of documents with a 'text' field."""
    cfg = cfg or DedupConfig()
    texts = [d["text"] for d in docs]
    keys = np.array([np.frombuffer(exact_key(t), dtype=np.uint64) for t in texts], dtype=np.uint64).reshape(-1, 2)
    sigs = None
    if cfg.near:
        mh = MinHasher.from_config(cfg)
        sigs = np.array([mh.signature(t) for t in texts], dtype=np.uint32).reshape(-1, cfg.num_perm)
    res = deduplicate(len(docs), cfg, keys=keys, band=(lambda b: band_hash(sigs, b, cfg.rows)) if cfg.near else None,
                      sig_rows=(lambda idx: sigs[idx]) if cfg.near else None, lengths=np.array([len(t) for t in texts]))
    return [d for d, k in zip(docs, res.keep, strict=True) if k], res
