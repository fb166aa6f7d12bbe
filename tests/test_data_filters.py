"""Quality rules one by one, and the chain's switches and counters."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

pytest.importorskip("py3langid")

from benchmarks.synthetic_crawl import FOREIGN  # noqa: E402
from plinth.common import PlinthError  # noqa: E402
from plinth.config import FilterConfig, LanguageConfig, RepetitionConfig, UrlBlocklistConfig, validate  # noqa: E402
from plinth.data.filters import (  # noqa: E402
    FilterChain,
    LanguageRule,
    UrlBlocklist,
    c4_lines_rule,
    dup_ngram_char_frac,
    fineweb_lines_rule,
    gopher_quality_rule,
    gopher_repetition_rule,
    length_rule,
    top_ngram_char_frac,
)
from tests.web_helpers import ARTICLE  # noqa: E402

CFG = FilterConfig()
GOOD = "\n".join([ARTICLE] * 1 + [
    "Our commerce has grown in every part of the world, and our ships carry the products of our farms abroad.",
    "The army and the navy are ready to defend the nation, and the officers deserve the thanks of the people.",
    "Education is the foundation of a free society, and the schools of the states have made great progress.",
])


def doc(text, url="https://example.org/x"):
    return {"id": "d", "text": text, "url": url, "source": "web"}


def test_good_article_passes_every_rule():
    out = FilterChain(CFG).apply(doc(GOOD))
    assert out is not None and out["lang"] == "en"


def test_length_bounds():
    assert length_rule(doc("short text"), CFG.length) == "too_few_chars"
    assert length_rule(doc("x" * 300), CFG.length) == "too_few_words"
    assert length_rule(doc(GOOD), CFG.length) is None
    assert length_rule(doc(GOOD), dataclasses.replace(CFG.length, max_chars=100, min_chars=10)) == "too_many_chars"


@pytest.mark.parametrize("text,reason", [
    (" ".join(["a b c"] * 40), "mean_word_length_low"),
    (" ".join(["incomprehensibilities"] * 60), "mean_word_length_high"),
    (GOOD + " #tag #tag" * 30, "symbol_word_ratio"),
    ("\n".join(["\u2022 the item of the list and more"] * 20), "bullet_lines"),
    ("\n".join(["and then the story went on to the next part ..."] * 20), "ellipsis_lines"),
    (" ".join(["12345 678 the and"] * 20), "alpha_words"),
    (" ".join(["Economy growth market finance policy"] * 20), "stop_words"),
])
def test_gopher_quality_rules(text, reason):
    assert gopher_quality_rule(doc(text), CFG.gopher_quality) == reason


def test_gopher_repetition_rules():
    assert gopher_repetition_rule(doc(GOOD), CFG.gopher_repetition) is None
    lines = "\n".join(["The same line of text is repeated here again."] * 5 + [ARTICLE])
    assert gopher_repetition_rule(doc(lines), CFG.gopher_repetition) == "dup_line_frac"
    paras = "\n\n".join([ARTICLE, ARTICLE, "Another paragraph."])
    assert gopher_repetition_rule(doc(paras), CFG.gopher_repetition) == "dup_para_frac"
    spam = " ".join(["buy cheap"] * 50 + ARTICLE.split())
    assert gopher_repetition_rule(doc(spam), CFG.gopher_repetition) == "top_2gram"


def test_ngram_fractions_match_hand_counts():
    words = "a b c d e a b c d e x".split()          # the 5-gram 'a b c d e' repeats once
    assert dup_ngram_char_frac(words, 5) == pytest.approx(5 / 11)
    assert top_ngram_char_frac("x y x y x y z".split(), 2) == pytest.approx(2 * 3 / 7)
    assert dup_ngram_char_frac("a b c d e f".split(), 5) == 0.0


@pytest.mark.parametrize("hashseed", ["0", "1"])   # the old "smallest id" tie-break gave 8/14 and 6/14
def test_top_ngram_tie_is_the_first_one_in_every_process(hashseed):
    """'aa b' and 'ccc d' both occur twice: the first in the text counts (6 of 14 chars), whatever the string hashes
    of this process (word ids are Python hashes, so a 'smallest id' tie-break would change between runs)."""
    code = ("from plinth.data.filters import top_ngram_char_frac as f; "
            "print(f('aa b aa b ccc d ccc d'.split(), 2))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": hashseed}).stdout
    assert float(out) == pytest.approx(6 / 14)


def test_c4_lines_edits_text_and_counts_removed_lines():
    text = "\n".join(["Home", "Share this article", "Read our privacy policy and terms of use.",
                      "Please enable JavaScript to view the comments.", ARTICLE])
    d = doc(text)
    assert c4_lines_rule(d, CFG.c4_lines) is None
    assert d["text"] == ARTICLE and d["_lines_removed"] == 4
    assert c4_lines_rule(doc(ARTICLE + "\nLorem ipsum dolor sit amet."), CFG.c4_lines) == "lorem_ipsum"
    assert c4_lines_rule(doc(ARTICLE + "\nfunction f() { return 1; }"), CFG.c4_lines) == "curly_bracket"
    assert c4_lines_rule(doc("One sentence only here."), CFG.c4_lines) == "too_few_sentences"


def test_fineweb_rules():
    assert fineweb_lines_rule(doc(GOOD), CFG.fineweb_lines) is None
    short = "\n".join(["Menu item"] * 3 + ["Another short line."] * 2 + ["Third one", "fourth one", ARTICLE])
    assert fineweb_lines_rule(doc(short), CFG.fineweb_lines) == "short_line_ratio"
    nopunct = "\n".join(["a line without an ending mark but long enough to count here"] * 9 + [ARTICLE])
    assert fineweb_lines_rule(doc(nopunct), CFG.fineweb_lines) in ("line_punct_ratio", "dup_line_char_ratio")
    dup = "\n".join([ARTICLE, "This sentence is duplicated in the document.", "This sentence is duplicated in "
                     "the document."])
    assert fineweb_lines_rule(doc(dup), CFG.fineweb_lines) == "dup_line_char_ratio"


def test_language_rule_uses_packaged_model():
    rule = LanguageRule(CFG.language)
    d = doc(GOOD)
    assert rule(d, CFG.language) is None and d["lang"] == "en" and d["lang_score"] > 0.9
    for lang in ("de", "fr", "ja"):
        d = doc(" ".join(FOREIGN[lang]))
        assert rule(d, CFG.language) == "other_language" and d["lang"] == lang
    keep_all = LanguageConfig(languages=[])
    assert LanguageRule(keep_all)(doc(" ".join(FOREIGN["de"])), keep_all) is None


def test_url_blocklist(tmp_path):
    f = tmp_path / "block.txt"
    f.write_text("# spam domains\nspam.example\n", encoding="utf-8")
    cfg = UrlBlocklistConfig(domains=["bad.com"], file=str(f))
    rule = UrlBlocklist(cfg)
    assert rule(doc("t", "https://www.bad.com/page"), cfg) == "blocked_domain"
    assert rule(doc("t", "http://a.b.spam.example/x"), cfg) == "blocked_domain"
    assert rule(doc("t", "https://notbad.com/x"), cfg) is None
    assert rule(doc("t", "https://x.org/casino-games"), cfg) == "blocked_word"
    assert rule(doc("t", "https://x.org/occasional-notes"), cfg) is None
    with pytest.raises(PlinthError, match="url_blocklist.file"):
        UrlBlocklist(UrlBlocklistConfig(file=str(tmp_path / "missing.txt")))


def test_chain_counts_switches_and_examples():
    cfg = FilterConfig(examples_per_rule=1)
    cfg.order = ["url_blocklist", "length", "language", "gopher_repetition", "gopher_quality", "c4_lines",
                 "fineweb_lines"]
    cfg.url_blocklist.domains = ["blocked.org"]
    chain = FilterChain(cfg)
    docs = [doc(GOOD), doc(GOOD, "https://blocked.org/x"), doc("tiny"), doc(" ".join(FOREIGN["de"] * 4))]
    kept = list(chain.run(docs))
    assert len(kept) == 1
    st = chain.to_dict()["rules"]["web"]
    assert st["url_blocklist"]["dropped"] == 1 and st["length"]["dropped"] == 1
    assert st["language"]["dropped"] == 1 and st["language"]["docs_in"] == 2
    assert st["length"]["examples"]["dropped"][0]["reason"] == "too_few_chars"
    assert len(st["language"]["examples"]["kept"]) == 1
    assert all(r["docs_in"] == r["kept"] + r["dropped"] for r in st.values())
    assert chain.to_dict()["languages"]["web"] == {"de": 1, "en": 1}
    off = FilterConfig()
    off.length.enabled = off.language.enabled = False
    names = [n for n, _, _ in FilterChain(off).rules]
    assert "length" not in names and "language" not in names and "gopher_quality" in names


def test_filter_config_errors_name_the_field():
    cfg = FilterConfig(order=["length", "vibes"])
    with pytest.raises(PlinthError, match=r"data pipeline: order\[1\]: unknown rule 'vibes'"):
        validate(cfg, "data pipeline")
    rep = RepetitionConfig(max_top_ngram_char_frac={"2": "0.5", 3: 0.2})
    assert rep.top_limits() == {2: 0.5, 3: 0.2}
    with pytest.raises(PlinthError, match="max_dup_ngram_char_frac.5"):
        validate(RepetitionConfig(max_dup_ngram_char_frac={5: 1.5}), "x")
