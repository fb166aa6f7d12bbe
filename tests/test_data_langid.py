"""plinth.data.langid: py3langid's model with numpy feature counting gives py3langid's own results, to the bit."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("py3langid")

from benchmarks.synthetic_crawl import FOREIGN  # noqa: E402
from plinth.data.langid import WINDOW, load_identifier  # noqa: E402
from tests.web_helpers import ARTICLE  # noqa: E402


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Mixed-script texts: ASCII words, accents, Cyrillic, Greek, Arabic, CJK, emoji, digits, odd whitespace."""
    r = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyz     ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ  ", "àéîõüçñßøåæœ  ",
             "абвгдежзийклмнопрст  ", "αβγδεζηθικλμνξοπρστ  ", "ابتثجحخدذرزسشصضطظعغ  ",
             "日本語の文章を識別します中文字", "😀🎉👍🏽\u200d♥️",
             "0123456789.,;:!?'\"()-\n\t\u00a0\u2028", "\u0301\u0308\ufb01\u2126\u212b"]
    texts = []
    for _ in range(n):
        k = r.randint(1, 4)
        chosen = r.sample(pools, k)
        texts.append("".join(r.choice(r.choice(chosen)) for _ in range(r.randint(0, 700))))
    return texts


TEXTS = ([ARTICLE, ARTICLE.upper(), ARTICLE[:40], "", " ", "a", "ab", "xyz", "\ud800 lone surrogate", "\ufeffBOM",
          "THE SHOUTING HEADLINE OF THE DAY", "Émile Zola écrivit « J'accuse… »", "e\u0301 decomposed accents"]
         + [" ".join(v) for v in FOREIGN.values()] + _random_texts(300))


@pytest.mark.parametrize("norm_probs", [True, False])
def test_scores_equal_py3langid_to_the_bit(norm_probs):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=norm_probs)
    fast = load_identifier(norm_probs=norm_probs)
    assert fast._fast   # the self-check at load passed, so the numpy path is the one tested
    for text in TEXTS:
        for t in (text, text[:500]):
            assert fast.classify(t) == ref.classify(t), t[:80]
            assert fast._decide(t).tobytes() == ref._decide(t).tobytes(), t[:80]
            assert fast.rank(t) == ref.rank(t)


def test_module_level_classify_matches():
    """py3langid.classify (its default identifier: raw scores) against ours."""
    import py3langid

    fast = load_identifier(norm_probs=False)
    for text in TEXTS[:60]:
        assert fast.classify(text) == py3langid.classify(text)


def test_feature_counts_match_visit_counts():
    from py3langid.langid import visit_counts

    fast = load_identifier()
    for text in TEXTS:
        data = fast._encode(text)
        ref = visit_counts(fast.tk_nextmove, fast._rowbase, fast.tk_output, data) or {}
        idx, counts = fast._feature_counts(data)
        assert list(ref.items()) == list(zip(idx.tolist(), counts.tolist(), strict=True))   # same order too


def test_automaton_is_aho_corasick_no_deeper_than_window():
    """Why the windowed walk is exact: label every state by the shortest byte string reaching it (a BFS tree), then
    check every transition against the Aho-Corasick rule for that trie: delta(s, a) is the child of s by a if there is
    one, else delta(fail(s), a), with fail(s) the state of the longest proper suffix of s's label that is a label
    (the start state for the root). By induction on depth every state is then the longest suffix of the text read
    that is a label, so with no label longer than WINDOW it depends on the last WINDOW bytes only."""
    fast = load_identifier()
    rowbase = fast._rowbase_np
    n = len(rowbase)
    delta = fast._nm[rowbase[:, None] + np.arange(256)].astype(np.int32)   # (states, 256): 107 MB
    parent = np.full(n, -1)
    byte = np.full(n, -1)
    depth = np.full(n, -1)
    depth[0] = 0
    frontier = np.array([0])
    while len(frontier):
        targets = delta[frontier]                              # (len(frontier), 256)
        s_idx, a_idx = np.nonzero(depth[targets] < 0)
        t = targets[s_idx, a_idx]
        t, first = np.unique(t, return_index=True)             # one parent per new state
        parent[t], byte[t], depth[t] = frontier[s_idx[first]], a_idx[first], depth[frontier[0]] + 1
        frontier = t
    assert (depth >= 0).all() and depth.max() == WINDOW

    # labels as byte matrices (right-aligned) and each suffix as an integer key
    labels = np.full((n, WINDOW), -1)
    order = np.argsort(depth, kind="stable")
    for s in order[1:]:
        labels[s, :-1] = labels[parent[s], 1:]
        labels[s, -1] = byte[s]

    def key(rows: np.ndarray, j: int) -> np.ndarray:   # the last j bytes of each label as a base-257 number
        k = np.zeros(len(rows), dtype=np.int64)
        for c in range(WINDOW - j, WINDOW):
            k = k * 257 + rows[:, c] + 1
        return k

    full = key(labels, WINDOW)   # a label's key (padding -1 adds 0)
    sorted_keys = np.sort(full)
    state_of = dict(zip(full.tolist(), range(n), strict=True))
    assert len(state_of) == n    # labels are distinct
    fail = np.zeros(n, dtype=np.int64)
    for j in range(1, WINDOW):   # longest proper suffix that is a label: later (longer) j overwrite
        kj = key(labels, j)
        ok = (depth > j) & np.isin(kj, sorted_keys)
        fail[ok] = [state_of[k] for k in kj[ok].tolist()]
    expected = delta[fail]                                     # no child: the failure state's move
    expected[0] = 0                                            # the root's failure is itself
    expected[parent[1:], byte[1:]] = np.arange(1, n)           # the child, where there is one
    assert np.array_equal(delta, expected)


def test_restricted_languages_match_and_reset():
    """set_languages() swaps py3langid's table; the float32 row cache follows it."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    fast = load_identifier(norm_probs=True)
    for langs in (["en", "de", "fr"], ["ja", "zh"], None):
        ref.set_languages(langs)
        fast.set_languages(langs)
        for text in TEXTS[:80]:
            assert fast.classify(text) == ref.classify(text)
