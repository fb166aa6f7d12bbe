"""The filters' fast paths against their definitions: same counts, fractions and decisions."""

from __future__ import annotations

import random
import re
import sys
from collections import Counter

import pytest

from plinth.config import FilterConfig
from plinth.data import filters as F
from tests.web_helpers import ARTICLE

CFG = FilterConfig()
_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_" + ".,;:!?\"'()[]{}#-*&%$@/\\" +
          " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u00a0\u2028\u3000" + "éÉßøçİıﬁ²½٣\u0301\u2019\u201c\u201d\u2026日本😀")


def _random_texts(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        pool = "".join(r.sample(_CHARS, r.randint(3, 30)))
        out.append("".join(r.choice(pool) for _ in range(r.randint(0, 300))))
    return out


TEXTS = [ARTICLE, "", " ", "a", "1 2 3", "x\x1cy 12\x1f3 _ __ a_1", "don't “quoted” (x) [y] {z}"] + _random_texts(2000)


def test_tokens_with_letter_is_the_complement_of_no_alpha():
    for t in TEXTS:
        assert F._tokens_with_letter(t) == len(t.split()) - len(F._NO_ALPHA.findall(t)), repr(t)


def test_strip_punct_equals_str_translate():
    for t in TEXTS:
        assert F._strip_punct(t) == t.translate(F._STRIP_TABLE)


def test_lower_never_makes_or_removes_whitespace():
    """Why the stop-word count may lower-case the whole stripped text before splitting it: for every code point."""
    for i in range(sys.maxunicode + 1):
        c = chr(i)
        low = c.lower()
        if c.isspace():
            assert low == c
        else:
            assert low and not any(ch.isspace() for ch in low), hex(i)


def test_split_cache_follows_the_text():
    a = "one two three"
    b = "one two"
    assert F._split(a) == ["one", "two", "three"] and F._split(a) is F._split(a)
    assert F._split(b) == ["one", "two"]
    assert F._split(a) == ["one", "two", "three"]


def _dup_reference(words: list[str], n: int) -> float:
    """Characters of words covered by an n-gram occurrence that repeats an earlier one, over all characters."""
    seen, covered = set(), set()
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    total = sum(map(len, words))
    return sum(len(words[i]) for i in covered) / total if covered else 0.0


def _top_reference(words: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(words) < n + 1 or not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]    # ties: the first seen
    return sum(map(len, gram)) * count / sum(map(len, words)) if count >= 2 else 0.0


def _word_lists(n: int, seed: int = 1) -> list[list[str]]:
    r = random.Random(seed)
    vocab = ARTICLE.split()
    out = []
    for _ in range(n):
        k = r.choice([2, 4, 8, 40])     # few distinct words: many repeats
        words = [r.choice(vocab[:k]) for _ in range(r.randint(0, 80))]
        if r.random() < 0.5:
            words = (words[: r.randint(0, 10)] * r.randint(1, 6)) + words
        out.append(words)
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_ngram_fractions_equal_their_definitions(n):
    for words in _word_lists(400):
        if not words:
            continue
        assert F.dup_ngram_char_frac(words, n) == pytest.approx(_dup_reference(words, n), abs=1e-12)
        assert F.top_ngram_char_frac(words, n) == pytest.approx(_top_reference(words, n), abs=1e-12)


def test_top_ngram_bound_bounds():
    import numpy as np

    for words in _word_lists(400, seed=2):
        if not words:
            continue
        ids, lengths = F._word_ids(words)
        cum = np.cumsum(lengths)
        for n in (2, 3, 4):
            frac, most = F._top_ngram(ids, lengths, n)
            for bigger in (n + 1, n + 2):
                assert F._top_ngram(ids, lengths, bigger)[0] <= F._top_ngram_bound(cum, bigger, most)


def _repetition_reference(text: str) -> str | None:
    """The repetition rule without its shortcuts: every n-gram size computed, first failing check reported."""
    cfg = CFG.gopher_repetition
    doc = {"text": text}
    reason = F.gopher_repetition_rule(dict(doc), cfg)
    if reason in ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"):
        return reason   # the line and paragraph checks come first and are unchanged
    words = text.split()
    for n, limit in cfg.top_limits().items():
        if _top_reference(words, n) > limit:
            return f"top_{n}gram"
    for n, limit in cfg.dup_limits().items():
        if _dup_reference(words, n) > limit:
            return f"dup_{n}gram"
    return None


def test_repetition_rule_decisions_equal_the_reference():
    r = random.Random(3)
    vocab = ARTICLE.split()
    texts = [ARTICLE, " ".join(["buy cheap"] * 50 + vocab), " ".join(["the big red car"] * 30 + vocab)]
    for _ in range(300):
        base = r.sample(vocab, r.randint(10, len(vocab)))
        phrase = " ".join(r.choice(vocab) for _ in range(r.randint(2, 6)))
        texts.append(" ".join(base[: r.randint(0, len(base))] + [phrase] * r.randint(1, 12) + base))
    reasons = Counter()
    for t in texts:
        got = F.gopher_repetition_rule({"text": t}, CFG.gopher_repetition)
        assert got == _repetition_reference(t), t[:80]
        reasons[got] += 1
    assert len(reasons) >= 4   # the texts reach several different outcomes


def test_gopher_quality_matches_the_plain_definitions():
    """The quality rule's fast counts against the plain formulas they replace, reason for reason."""
    cfg = CFG.gopher_quality
    stop = {w.lower() for w in cfg.stop_words}

    def reference(text: str) -> str | None:
        raw = text.split()
        words = text.translate(F._STRIP_TABLE).split()
        if not words:
            return "no_words"
        mean = sum(map(len, words)) / len(words)
        if mean < cfg.min_mean_word_length:
            return "mean_word_length_low"
        if mean > cfg.max_mean_word_length:
            return "mean_word_length_high"
        if (text.count("#") + text.count("...") + text.count("\u2026")) / len(raw) > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = text.split("\n")
        if sum(ln.lstrip().startswith(F._BULLETS) for ln in lines) / len(lines) > cfg.max_bullet_lines_ratio:
            return "bullet_lines"
        if sum(ln.rstrip().endswith(F._ELLIPSIS) for ln in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
            return "ellipsis_lines"
        if 1.0 - len(F._NO_ALPHA.findall(text)) / len(raw) < cfg.min_alpha_words_ratio:
            return "alpha_words"
        if sum(map(stop.__contains__, " ".join(words).lower().split())) < cfg.min_stop_words:
            return "stop_words"
        return None

    r = random.Random(4)
    vocab = ARTICLE.split() + ["THE", "With", "1999", "--", "#tag", "...", "\u2026", "“quoted”", "İstanbul"]
    texts = TEXTS + [" ".join(r.choice(vocab) for _ in range(r.randint(1, 60))) for _ in range(500)]
    outcomes = Counter()
    for t in texts:
        got = F.gopher_quality_rule({"text": t}, cfg)
        assert got == reference(t), repr(t[:80])
        outcomes[got] += 1
    assert len(outcomes) >= 4


def test_chain_counts_bytes_after_the_text_changes():
    """The chain encodes a text once per version of it; c4_lines' removed lines change the bytes seen after it."""
    from tests.test_data_filters import GOOD

    text = "\n".join(["Home", "Menu", GOOD])
    chain = F.FilterChain(FilterConfig())
    doc = {"id": "d", "text": text, "url": "https://example.org/x", "source": "web"}
    out = chain.apply(doc)
    st = chain.to_dict()["rules"]["web"]
    assert out is not None
    assert st["length"]["bytes_in"] == len(text.encode()) == st["c4_lines"]["bytes_in"]
    assert st["fineweb_lines"]["bytes_in"] == st["c4_lines"]["kept_bytes"] == len(out["text"].encode())
    assert st["fineweb_lines"]["bytes_in"] < st["c4_lines"]["bytes_in"]


def test_no_alpha_regex_is_what_the_docs_say():
    assert F._NO_ALPHA.findall("a 12 b- -- x2 ² _") == ["12", "--", "_"]
    assert re.match(F._LETTER, "²")   # [^\W\d_] counts other numerics such as ² as letters


def _c4_reference(doc: dict, cfg) -> str | None:
    """c4_lines_rule as first written: every line lower-cased, split and searched; every sentence end counted."""
    text = doc["text"]
    low = text.lower()
    if cfg.drop_lorem_ipsum and "lorem ipsum" in low:
        return "lorem_ipsum"
    if cfg.drop_curly_bracket and "{" in text:
        return "curly_bracket"
    kept, removed = [], 0
    for line in text.split("\n"):
        ll, words = line.lower(), line.split()
        if ((cfg.remove_no_terminal_punct and not line.rstrip().endswith(F._TERMINAL))
                or len(words) < cfg.min_words_per_line
                or (cfg.max_word_length and len(line) > cfg.max_word_length
                    and max(map(len, words), default=0) > cfg.max_word_length)
                or (cfg.remove_javascript_lines and "javascript" in ll)
                or (cfg.remove_policy_lines and F._POLICY_RE.search(ll))):
            removed += 1
            continue
        kept.append(line)
    doc["text"] = "\n".join(kept)
    doc["_lines_removed"] = removed
    return "too_few_sentences" if len(F._SENTENCE_END.findall(doc["text"])) < cfg.min_sentences else None


@pytest.mark.parametrize("overrides", [{}, {"min_words_per_line": 0, "max_word_length": 12, "min_sentences": 2},
                                       {"min_words_per_line": 6, "remove_no_terminal_punct": False}])
def test_c4_lines_equals_the_plain_rule(overrides):
    import dataclasses

    cfg = dataclasses.replace(CFG.c4_lines, **overrides)
    r = random.Random(5)
    pieces = ARTICLE.split(". ") + ["Enable JavaScript to continue.", "Read our PRIVACY POLICY now.",
                                    "ΟΔΟΣ ΣΤΑΣΙΣ ends here.", "İstanbul uses cookies here.", "a b", "x",
                                    "Supercalifragilisticexpialidocious words here.", "Why? Yes! No.", ""]
    outcomes = Counter()
    for _ in range(400):
        text = "\n".join(r.choice(pieces) + r.choice(["", ".", " ", "!"]) for _ in range(r.randint(1, 12)))
        a, b = {"text": text}, {"text": text}
        got = F.c4_lines_rule(a, cfg)
        assert got == _c4_reference(b, cfg) and a["text"] == b["text"]
        assert a.get("_lines_removed", 0) == b["_lines_removed"]
        outcomes[got] += 1
    assert len(outcomes) >= 2


@pytest.mark.parametrize("stop_words", [["the", "be", "to", "of", "and", "that", "have", "with"],
                                        ["The", "a b", "", "ÉTÉ", "of"], ["x y"]])
def test_stop_word_count_equals_the_plain_count(stop_words):
    import dataclasses

    cfg = dataclasses.replace(CFG.gopher_quality, stop_words=stop_words, min_stop_words=3, min_alpha_words_ratio=0.0,
                              max_symbol_word_ratio=100.0, min_mean_word_length=0.0, max_mean_word_length=1e9,
                              max_bullet_lines_ratio=1.0, max_ellipsis_lines_ratio=1.0)   # only stop words decide
    stop = {w.lower() for w in stop_words}
    r = random.Random(6)
    vocab = ARTICLE.split() + ["THE", "The", "été", "ÉTÉ", "a", "b", "x", "y", "of", "OF,", "the."]
    for _ in range(400):
        text = " ".join(r.choice(vocab) for _ in range(r.randint(1, 30)))
        words = text.translate(F._STRIP_TABLE).split()
        plain = sum(map(stop.__contains__, " ".join(words).lower().split())) < 3
        assert F.gopher_quality_rule({"text": text}, cfg) == ("stop_words" if plain else None)
