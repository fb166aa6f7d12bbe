"""Dedup properties: one kept per cluster, deterministic keeper, no chaining, near-dup precision and recall."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("datasketch")

from plinth.common import PlinthError  # noqa: E402
from plinth.config import DedupConfig, validate  # noqa: E402
from plinth.data.dedup import EXACT, KEPT, NEAR, dedup_documents, normalize_text, s_curve  # noqa: E402


def _base_docs(paragraphs, n, min_words=150, seed=0):
    """n unrelated documents of real text (consecutive paragraphs of different speeches)."""
    rng = random.Random(seed)
    starts = rng.sample(range(0, len(paragraphs) - 20), n * 3)
    docs, used = [], set()
    for s in starts:
        if s // 10 in used:
            continue
        used.add(s // 10)
        words = []
        i = s
        while len(words) < min_words:
            words += " ".join(paragraphs[i]).split()
            i += 1
        docs.append(words)
        if len(docs) == n:
            break
    return docs


def _vary(words, k, rng):
    w = list(words)
    for j in rng.sample(range(len(w)), k):
        w[j] = rng.choice(["remarkable", "splendid", "ordinary", "curious", "northern", "western"])
    return w


def test_exact_duplicates_keep_the_first_copy():
    docs = [{"id": "a", "text": "Hello, World!  The same text."}, {"id": "b", "text": "unrelated words here"},
            {"id": "c", "text": "hello world the SAME text"}, {"id": "d", "text": "Hello, World! The same text."}]
    kept, res = dedup_documents(docs, DedupConfig(near=False))
    assert [d["id"] for d in kept] == ["a", "b"]
    assert list(res.kind) == [KEPT, KEPT, EXACT, EXACT] and list(res.kept_for) == [-1, -1, 0, 0]
    assert res.stats["exact"] == {"clusters": 1, "removed": 2}
    assert normalize_text("Caf\u00e9 \u2014 OK!") == "caf\u00e9 ok"


def test_near_duplicate_precision_and_recall(paragraphs):
    """Originals (300+ words) with 1-3 variants of 1-3 changed words, and unrelated documents: pairwise precision
    and recall. (Each changed word touches 5 word-5-gram shingles, so on a 150-word text 4 changes already bring the
    Jaccard similarity down to about 0.76, at the threshold; web articles are longer.)"""
    rng = random.Random(1)
    bases = _base_docs(paragraphs, 80, min_words=300)
    docs, group = [], []
    for g, words in enumerate(bases):
        docs.append(" ".join(words))
        group.append(g)
        if g < 40:                                  # the other 40 have no duplicate at all
            for _ in range(rng.randint(1, 3)):
                docs.append(" ".join(_vary(words, rng.randint(1, 3), rng)))
                group.append(g)
    order = rng.sample(range(len(docs)), len(docs))
    docs = [{"id": str(i), "text": docs[i]} for i in order]
    group = np.array([group[i] for i in order])
    _, res = dedup_documents(docs)
    final = np.where(res.kind == KEPT, np.arange(len(docs)), res.kept_for)   # cluster = the kept document
    same_true = group[:, None] == group[None, :]
    same_pred = final[:, None] == final[None, :]
    iu = np.triu_indices(len(docs), 1)
    tp = np.count_nonzero(same_true[iu] & same_pred[iu])
    precision = tp / max(1, np.count_nonzero(same_pred[iu]))
    recall = tp / np.count_nonzero(same_true[iu])
    print(f"near-dup pairs: precision {precision:.3f} recall {recall:.3f} ({len(docs)} docs)")
    assert precision == 1.0 and recall >= 0.95
    for g in range(40, 80):                          # unrelated originals are never clustered
        (i,) = np.nonzero(group == g)[0]
        assert res.kind[i] == KEPT and not np.any(res.kept_for == i)


def test_one_kept_per_cluster_and_never_all_copies(paragraphs):
    rng = random.Random(2)
    bases = _base_docs(paragraphs, 10, seed=3)
    texts = []
    for words in bases:
        texts += [" ".join(words)] * rng.randint(1, 4) + [" ".join(_vary(words, 2, rng))
                                                         for _ in range(rng.randint(0, 3))]
    rng.shuffle(texts)
    _, res = dedup_documents([{"id": str(i), "text": t} for i, t in enumerate(texts)])
    removed = np.nonzero(res.kind != KEPT)[0]
    assert np.all(res.kind[res.kept_for[removed]] == KEPT)          # every removed doc points at a kept one
    for kept, members in res.clusters():
        assert res.kind[kept] == KEPT and kept not in members
    assert np.count_nonzero(res.kind == KEPT) == 10                  # exactly one per original


def test_chain_of_weak_matches_is_split_and_reported(paragraphs):
    (words,) = _base_docs(paragraphs, 1, min_words=300, seed=5)
    words = words[:300]
    repl = [f"zz{i}" for i in range(10)]
    a = list(words)
    b = a[:20] + repl + a[30:]                       # 10 words changed at 20..29
    c = b[:200] + [w + "q" for w in repl] + b[210:]  # and 10 more at 200..209
    cfg = DedupConfig(num_perm=256, bands=32, rows=8, threshold=0.87)
    docs = [{"id": x, "text": " ".join(t)} for x, t in (("A", a), ("B", b), ("C", c))]
    _, res = dedup_documents(docs, cfg)
    assert list(res.kind) == [KEPT, NEAR, KEPT]      # B joins A; C is not merged into A through B
    assert res.kept_for[1] == 0
    assert res.stats["near"]["split_components"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keeper_is_deterministic(paragraphs, seed):
    (words,) = _base_docs(paragraphs, 1, seed=7)
    rng = random.Random(seed)
    texts = [" ".join(words), " ".join(words + ["An", "extra", "closing", "sentence", "here."]),
             " ".join(_vary(words, 2, random.Random(9)))]
    order = rng.sample(range(3), 3)
    docs = [{"id": str(i), "text": texts[i]} for i in order]
    kept, _ = dedup_documents(docs, DedupConfig(keep="longest"))
    assert [d["id"] for d in kept] == ["1"]          # the longest, whatever the input order
    kept_first, _ = dedup_documents(docs, DedupConfig(keep="first"))
    assert [d["id"] for d in kept_first] == [str(order[0])]
    again, _ = dedup_documents(docs, DedupConfig(keep="first"))
    assert again == kept_first


def test_lsh_probability_and_bad_config():
    assert s_curve(0.9, 20, 6) > 0.999 and s_curve(0.3, 20, 6) < 0.02
    with pytest.raises(PlinthError, match="shingle_unit"):
        dedup_documents([{"text": "a b c"}], DedupConfig(shingle_unit="line"))
    with pytest.raises(PlinthError, match=r"bands x rows \(40 x 8\) must be <= num_perm \(128\)"):
        validate(DedupConfig(bands=40, rows=8), "data pipeline")


def test_char_shingles_and_sha1_hash_work(paragraphs):
    (words,) = _base_docs(paragraphs, 1, seed=11)
    t = " ".join(words)
    docs = [{"text": t}, {"text": t.replace("the ", "a ", 1)}, {"text": "entirely different words " * 30}]
    for cfg in (DedupConfig(shingle_unit="char", shingle_size=9), DedupConfig(hash="sha1")):
        kept, res = dedup_documents(docs, cfg)
        assert list(res.kind) == [KEPT, NEAR, KEPT]
