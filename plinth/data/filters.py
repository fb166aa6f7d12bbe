"""Quality filters, each switchable and counted: URL block list, length, language, Gopher repetition and quality
rules, C4 line rules and FineWeb line rules.

A rule is a function `(doc, cfg) -> reason | None`: None keeps the document, a string drops it and says which test
failed. C4 line rules also edit `doc["text"]` (they remove lines). `FilterChain` runs the rules in the configured
order and counts, per source and per rule, documents and bytes in, kept and dropped, with a few kept and dropped
examples. Thresholds and definitions follow the papers; where datatrove's implementation differs it is noted.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from plinth.common import PlinthError
from plinth.config import (
    C4LinesConfig,
    FilterConfig,
    FineWebLinesConfig,
    GopherQualityConfig,
    LanguageConfig,
    LengthFilterConfig,
    RepetitionConfig,
    UrlBlocklistConfig,
)
from plinth.data.web import require

__all__ = ["RULES", "length_rule", "gopher_quality_rule", "gopher_repetition_rule", "c4_lines_rule",
           "fineweb_lines_rule", "LanguageRule", "UrlBlocklist", "FilterChain", "RuleStats", "dup_ngram_char_frac",
           "top_ngram_char_frac"]

_WORD = re.compile(r"\w+", re.UNICODE)
_TERMINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u2026", "\u3002", "\uff01", "\uff1f")
_BULLETS = ("\u2022", "\u25cf", "\u25aa", "\u25e6", "\u2023", "\u2043", "-", "*", "\u2013", "\u00b7")
_ELLIPSIS = ("...", "\u2026")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+(?:[\"'\u201d\u2019)\]]*)(?=\s|$)")


_STRIP = ".,;:!?\"'()[]{}\u201c\u201d\u2018\u2019"


_STRIP_TABLE = str.maketrans("", "", _STRIP)
_STRIP_RE = re.compile("[" + re.escape(_STRIP) + "]")
_STRIP_ASCII = "".join(c for c in _STRIP if c.isascii()).encode("ascii")
# A whitespace-separated token without a single letter (digits, symbols). The definition; `_tokens_with_letter`
# counts the complement faster.
_NO_ALPHA = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")
_LETTER = re.compile(r"[^\W\d_]")
_SPACE = re.compile(r"\s")          # as str.split() sees whitespace (both use Py_UNICODE_ISSPACE)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_POLICY_RE = re.compile("|".join(re.escape(p) for p in _POLICY))


def _char_class(c: str) -> str:
    """'a' for a letter (`[^\\W\\d_]`), ' ' for whitespace (`\\s`), '0' for anything else."""
    return "a" if _LETTER.match(c) else " " if _SPACE.match(c) else "0"


_CLASS_TABLE = bytes(ord(_char_class(chr(i))) if i < 128 else ord("0") for i in range(256))
_OTHER_BYTES = bytes(i for i in range(128) if _CLASS_TABLE[i] == ord("0"))   # deleted before the mapping
_CLASS_OF: dict[str, str] = {}


def _non_ascii_class(m: re.Match) -> str:
    c = m.group()
    k = _CLASS_OF.get(c)
    if k is None:
        k = _CLASS_OF[c] = _char_class(c)
    return k


def _tokens_with_letter(text: str) -> int:
    """Whitespace-separated tokens of `text` holding at least one letter: len(text.split()) minus what `_NO_ALPHA`
    finds, in a fifth of its time. Each character becomes its class ('a', ' ' or '0'; non-ASCII characters one by one
    through a regex, ASCII ones by one bytes.translate that also deletes the others); tokens without a letter then
    vanish and the others are counted by where they start."""
    if not text.isascii():
        text = _NON_ASCII.sub(_non_ascii_class, text)
    letters = text.encode("ascii").translate(_CLASS_TABLE, _OTHER_BYTES)   # bytes.translate deletes first
    return letters.count(b" a") + letters.startswith(b"a")


def _strip_punct(text: str) -> str:
    """`text` without the `_STRIP` characters: bytes.translate for ASCII text, a regex otherwise. The same string as
    str.translate, which is ~10x slower on text with any non-ASCII character (a curly quote is enough)."""
    if text.isascii():
        return text.encode("ascii").translate(None, _STRIP_ASCII).decode("ascii")
    return _STRIP_RE.sub("", text)


def _words(text: str) -> list[str]:
    """Whitespace-separated words without punctuation (quotes, brackets, .,;:!?); punctuation-only tokens vanish.
    (Removing the characters everywhere rather than stripping them off the ends keeps this one C-level pass; only
    words with inner punctuation such as "don't" differ, by a character.)"""
    return _strip_punct(text).split()


_LAST_SPLIT: tuple[str | None, list[str]] = (None, [])   # (text, text.split()) of the last text split


def _split(text: str) -> list[str]:
    """text.split(), remembered for the last text: the length, repetition, quality and FineWeb rules all need the
    words of the same document (~40 us each). The list is shared: callers must not change it. A text edited by
    c4_lines is a new string object, so it is split anew. (One tuple, replaced whole: threads never see one text's
    words paired with another text.)"""
    global _LAST_SPLIT
    last = _LAST_SPLIT
    if last[0] is text:
        return last[1]
    words = text.split()
    _LAST_SPLIT = (text, words)
    return words


# ----------------------------------------------------------------------------------------------------------------------
# Document-level rules


def length_rule(doc: dict, cfg: LengthFilterConfig) -> str | None:
    """Character and word bounds."""
    text = doc["text"]
    n = len(text)
    if n < cfg.min_chars:
        return "too_few_chars"
    if n > cfg.max_chars:
        return "too_many_chars"
    words = len(_split(text))
    if words < cfg.min_words:
        return "too_few_words"
    if words > cfg.max_words:
        return "too_many_words"
    return None


def gopher_quality_rule(doc: dict, cfg: GopherQualityConfig) -> str | None:
    """Mean word length, symbol-to-word ratio, bullet and ellipsis lines, alphabetic words, stop words."""
    text = doc["text"]
    raw = _split(text)
    stripped = _strip_punct(text)
    words = stripped.split()
    if not words:
        return "no_words"
    mean = len("".join(words)) / len(words)   # the sum of the word lengths
    if mean < cfg.min_mean_word_length:
        return "mean_word_length_low"
    if mean > cfg.max_mean_word_length:
        return "mean_word_length_high"
    symbols = text.count("#") + text.count("...") + text.count("\u2026")
    if symbols / len(raw) > cfg.max_symbol_word_ratio:
        return "symbol_word_ratio"
    lines = text.split("\n")
    if sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return "bullet_lines"
    if sum(line.rstrip().endswith(_ELLIPSIS) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "ellipsis_lines"
    no_alpha = len(raw) - _tokens_with_letter(text)   # len(_NO_ALPHA.findall(text))
    if 1.0 - no_alpha / len(raw) < cfg.min_alpha_words_ratio:
        return "alpha_words"
    # Stop words among the lower-cased words, found in the lower-cased stripped text (lower() never makes or removes
    # whitespace, so its tokens are the words lower-cased) and counted only up to what the rule needs.
    found = _stop_word_re(tuple(cfg.stop_words)).finditer(stripped.lower())
    if sum(1 for _ in itertools.islice(found, cfg.min_stop_words)) < cfg.min_stop_words:
        return "stop_words"
    return None


@functools.lru_cache(maxsize=8)
def _stop_word_re(stop_words: tuple[str, ...]) -> re.Pattern:
    """A whole whitespace-separated token equal to a lower-cased stop word. Stop words holding whitespace (or empty)
    can never equal a token, so they are left out."""
    words = sorted({w.lower() for w in stop_words if w and not any(c.isspace() for c in w.lower())})
    if not words:
        return re.compile(r"(?!)")   # matches nothing
    return re.compile(r"(?<!\S)(?:" + "|".join(map(re.escape, words)) + r")(?!\S)")


def _word_ids(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit id per word, length per word) as arrays. The ids are Python's string hashes: equal words get equal
    ids (collisions of 64-bit hashes are negligible at document scale); they differ between processes, which the
    fractions computed from them do not."""
    n = len(words)
    ids = np.fromiter(map(hash, words), dtype=np.int64, count=n).view(np.uint64)
    return ids, np.fromiter(map(len, words), dtype=np.int64, count=n)


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit id per n-gram of word ids (polynomial hash; collisions are negligible at document scale)."""
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    mult = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * mult + ids[k:m + k] + np.uint64(1)
    return h


def _dup_ngram(ids: np.ndarray, lengths: np.ndarray, n: int) -> float:
    if len(ids) < n + 1:
        return 0.0
    h = _ngram_ids(ids, n)
    s = np.sort(h)
    if not (s[1:] == s[:-1]).any():        # most documents repeat no n-gram: a plain sort is ~5x cheaper than
        return 0.0                         # the stable one below
    order = np.argsort(h, kind="stable")   # equal n-grams stay in text order: the first of each run is the original
    again = h[order][1:] == h[order][:-1]
    starts = order[1:][again]              # every occurrence after the first, each position once
    covered = np.zeros(len(ids) + 1, dtype=np.int32)   # difference array: +1 at start, -1 after the n-gram
    covered[starts] += 1                   # distinct positions, so plain indexing adds once each (no np.add.at)
    covered[starts + n] -= 1
    mask = np.cumsum(covered[:-1]) > 0
    return float(lengths[mask].sum() / lengths.sum())


def _top_ngram(ids: np.ndarray, lengths: np.ndarray, n: int) -> tuple[float, int]:
    """(top n-gram character fraction, how often the most frequent n-gram occurs)."""
    if len(ids) < n + 1:
        return 0.0, 0
    h = _ngram_ids(ids, n)
    # A plain sort and run lengths (not np.unique with indices, which needs a stable argsort). Among n-grams tied
    # for most frequent, the one that occurs first in the text counts (as collections.Counter.most_common picks):
    # the word ids are per-process string hashes, so "the smallest id" would differ between runs.
    s = np.sort(h)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    counts = np.diff(np.append(starts, len(s)))
    top = int(counts.max())
    if top < 2:
        return 0.0, top
    tops = s[starts[counts == top]]
    # usually one n-gram is the most frequent: one comparison instead of np.isin's set machinery
    start = int(np.argmax(h == tops[0] if len(tops) == 1 else np.isin(h, tops)))
    return float(lengths[start:start + n].sum() * top / lengths.sum()), top


def _top_ngram_bound(cum: np.ndarray, n: int, count: int) -> float:
    """An upper bound of `_top_ngram(..., n)[0]` when no n-gram occurs more than `count` times (`cum`: the cumulative
    word lengths): `count` times the most characters any n consecutive words hold. Same integer-over-integer form as
    the fraction, so the float bound is >= the float fraction, and a bound under a limit proves the fraction is too."""
    if count < 2 or len(cum) < n + 1:
        return 0.0
    widest = max(cum[n - 1], (cum[n:] - cum[:-n]).max())
    return float(widest * count / cum[-1])


def dup_ngram_char_frac(words: list[str], n: int) -> float:
    """Fraction of word characters covered by repeated occurrences of n-grams (every occurrence after the first),
    overlapping n-grams counted once, as in the Gopher paper. (datatrove scans left to right and skips n words after
    each repeat, which counts slightly fewer.)"""
    return _dup_ngram(*_word_ids(words), n)


def top_ngram_char_frac(words: list[str], n: int) -> float:
    """Characters in all occurrences of the most frequent n-gram, over all word characters (0 if none repeats)."""
    return _top_ngram(*_word_ids(words), n)[0]


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for it in items:
        total_chars += len(it)
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup / max(1, len(items)), dup_chars / max(1, total_chars)


_LIMITS: dict[int, tuple[RepetitionConfig, list[tuple[int, float]], list[tuple[int, float]]]] = {}


def _limits(cfg: RepetitionConfig) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(top, dup) n-gram limits of `cfg`, validated once per config object rather than once per document (the
    validation was 5% of the filters' time)."""
    hit = _LIMITS.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = _LIMITS[id(cfg)] = (cfg, list(cfg.top_limits().items()), list(cfg.dup_limits().items()))
    return hit[1], hit[2]


def gopher_repetition_rule(doc: dict, cfg: RepetitionConfig) -> str | None:
    """Duplicate lines and paragraphs, top n-gram and duplicate n-gram character fractions."""
    text = doc["text"]
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, char_frac = _dup_fracs(paras)
    if frac > cfg.max_dup_para_frac:
        return "dup_para_frac"
    if char_frac > cfg.max_dup_para_char_frac:
        return "dup_para_char_frac"
    lines = [line for line in text.split("\n") if line.strip()]
    frac, char_frac = _dup_fracs(lines)
    if frac > cfg.max_dup_line_frac:
        return "dup_line_frac"
    if char_frac > cfg.max_dup_line_char_frac:
        return "dup_line_char_frac"
    ids, lengths = _word_ids(_split(text))
    top_limits, limits = _limits(cfg)
    most = None   # how often the most frequent n-gram of the last size computed occurs
    cum = None
    for n, limit in top_limits:
        # A larger n-gram occurs at most as often as its first n-1 words, so `most` bounds every larger size; when
        # the bound is under the limit the fraction is too and its sort is skipped (2 sizes of 3, usually). This
        # relies on the n-gram ids not colliding, as the counts themselves do.
        if most is not None:
            cum = np.cumsum(lengths) if cum is None else cum
            if _top_ngram_bound(cum, n, most) <= limit:
                continue
        frac, most = _top_ngram(ids, lengths, n)
        if frac > limit:
            return f"top_{n}gram"
    for i, (n, limit) in enumerate(limits):
        frac = _dup_ngram(ids, lengths, n)
        if frac > limit:
            return f"dup_{n}gram"
        # Coverage by repeated n-grams can only shrink as n grows (a repeated (n+1)-gram is two repeated n-grams
        # over the same span), so once it is under every remaining limit the larger n cannot fail.
        if frac <= min(lim for _, lim in limits[i:]):
            break
    return None


def c4_lines_rule(doc: dict, cfg: C4LinesConfig) -> str | None:
    """C4: drop lines without terminal punctuation, with few words, with 'javascript', with policy boilerplate or a
    very long word; drop the document for lorem ipsum, a curly bracket, or too few sentences left. Edits the text."""
    text = doc["text"]
    low = text.lower()
    if cfg.drop_lorem_ipsum and "lorem ipsum" in low:
        return "lorem_ipsum"
    if cfg.drop_curly_bracket and "{" in text:
        return "curly_bracket"
    # An ASCII phrase in a line's lower() is in the text's lower() too (lower() maps each character alone, but for
    # final sigma, which no phrase holds), so a document without one skips lower-casing and searching every line.
    js = cfg.remove_javascript_lines and "javascript" in low
    policy = cfg.remove_policy_lines and _POLICY_RE.search(low) is not None
    k = cfg.min_words_per_line
    kept = []
    removed = 0
    for line in text.split("\n"):
        if ((cfg.remove_no_terminal_punct and not line.rstrip().endswith(_TERMINAL))
                or len(line.split(None, k)) < k          # fewer than k words (at most k+1 pieces are made)
                or (cfg.max_word_length and len(line) > cfg.max_word_length
                    and max(map(len, line.split()), default=0) > cfg.max_word_length)
                or (js and "javascript" in line.lower())
                or (policy and _POLICY_RE.search(line.lower()))):
            removed += 1
            continue
        kept.append(line)
    new = "\n".join(kept)
    doc["text"] = new
    doc.setdefault("_lines_removed", 0)
    doc["_lines_removed"] += removed
    # at least min_sentences sentence ends: stop looking once they are found
    if sum(1 for _ in itertools.islice(_SENTENCE_END.finditer(new), cfg.min_sentences)) < cfg.min_sentences:
        return "too_few_sentences"
    return None


def fineweb_lines_rule(doc: dict, cfg: FineWebLinesConfig) -> str | None:
    """FineWeb: share of lines ending in punctuation, share of short lines, duplicated-line characters, newlines
    per word."""
    text = doc["text"]
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "empty"
    if sum(line.rstrip().endswith(_TERMINAL) for line in lines) / len(lines) < cfg.min_line_punct_ratio:
        return "line_punct_ratio"
    if sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) > cfg.max_short_line_ratio:
        return "short_line_ratio"
    _, dup_char_frac = _dup_fracs(lines)
    # FineWeb divides duplicated-line characters by the characters of all lines joined without newlines.
    if dup_char_frac > cfg.max_dup_line_char_ratio:
        return "dup_line_char_ratio"
    words = _split(text)
    if text.count("\n") / max(1, len(words)) > cfg.max_newline_word_ratio:
        return "newline_word_ratio"
    return None


class LanguageRule:
    """Language identification with py3langid (its model ships inside the wheel; nothing is downloaded).
    Sets doc["lang"] and doc["lang_score"]; drops documents not in `languages` or below `min_score`.
    The model is py3langid's, its features counted with numpy (`plinth.data.langid`: same scores, ~2x faster)."""

    _model = None   # loaded once per process (0.5 s)

    def __init__(self, cfg: LanguageConfig):
        require("py3langid")
        from plinth.data.langid import load_identifier

        if LanguageRule._model is None:
            LanguageRule._model = load_identifier(norm_probs=True)
        self.cfg = cfg
        self.model = LanguageRule._model
        self.langs = set(cfg.languages)

    def __call__(self, doc: dict, cfg: LanguageConfig) -> str | None:
        lang, score = self.model.classify(doc["text"][:cfg.max_chars])
        doc["lang"], doc["lang_score"] = lang, round(float(score), 4)
        if self.langs and lang not in self.langs:
            return "other_language"
        if score < cfg.min_score:
            return "low_confidence"
        return None


class UrlBlocklist:
    """Block a URL whose host, or any parent domain of it, is listed, or which contains a listed word as a whole
    token (tokens split on non-alphanumerics, so 'casino' blocks /casino-games but not /occasional)."""

    def __init__(self, cfg: UrlBlocklistConfig):
        self.domains = {d.strip().lower().lstrip(".") for d in cfg.domains if d.strip()}
        if cfg.file:
            path = Path(cfg.file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise PlinthError(f"filters.url_blocklist.file: cannot read {path} ({e.strerror})") from e
            self.domains |= {ln.split("#")[0].strip().lower() for ln in lines if ln.split("#")[0].strip()}
        self.words = {w.lower() for w in cfg.words}

    def __call__(self, doc: dict, cfg: UrlBlocklistConfig) -> str | None:
        url = doc.get("url") or ""
        m = re.match(r"^[a-z][a-z0-9+.-]*://([^/:?#@]*@)?([^/:?#]+)", url.lower())
        host = m.group(2) if m else ""
        parts = host.split(".")
        if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
            return "blocked_domain"
        if self.words and not self.words.isdisjoint(re.split(r"[^a-z0-9]+", url.lower())):
            return "blocked_word"
        return None


RULES: dict[str, Callable[[dict, object], str | None]] = {
    "length": length_rule, "gopher_quality": gopher_quality_rule, "gopher_repetition": gopher_repetition_rule,
    "c4_lines": c4_lines_rule, "fineweb_lines": fineweb_lines_rule,
}


# ----------------------------------------------------------------------------------------------------------------------
# The chain and its counters


def _example(doc: dict, reason: str | None = None) -> dict:
    ex = {"id": doc.get("id"), "url": doc.get("url"), "text": doc["text"][:300]}
    if reason:
        ex["reason"] = reason
    return ex


class RuleStats:
    """Counters for one rule and one source."""

    def __init__(self) -> None:
        self.docs_in = self.bytes_in = self.kept = self.kept_bytes = self.dropped = self.dropped_bytes = 0
        self.lines_removed = 0
        self.reasons: Counter = Counter()
        self.examples: dict[str, list[dict]] = {"kept": [], "dropped": []}

    def to_dict(self) -> dict:
        return {"docs_in": self.docs_in, "bytes_in": self.bytes_in, "kept": self.kept, "kept_bytes": self.kept_bytes,
                "dropped": self.dropped, "dropped_bytes": self.dropped_bytes, "lines_removed": self.lines_removed,
                "reasons": dict(sorted(self.reasons.items())), "examples": self.examples}

    @staticmethod
    def merge(a: dict, b: dict, k: int) -> dict:
        """Sum two to_dict() results; examples keep the first k of each kind (a's first)."""
        out = {key: a[key] + b[key] for key in ("docs_in", "bytes_in", "kept", "kept_bytes", "dropped",
                                                  "dropped_bytes", "lines_removed")}
        reasons = Counter(a["reasons"])
        reasons.update(b["reasons"])
        out["reasons"] = dict(sorted(reasons.items()))
        out["examples"] = {kind: (a["examples"][kind] + b["examples"][kind])[:k] for kind in ("kept", "dropped")}
        return out


class FilterChain:
    """Run the enabled rules of a FilterConfig in order over documents, counting per source and rule."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.rules: list[tuple[str, Callable, object]] = []
        for name in cfg.order:
            rule_cfg = getattr(cfg, name)
            if not rule_cfg.enabled:
                continue
            if name == "language":
                fn = LanguageRule(rule_cfg)
            elif name == "url_blocklist":
                fn = UrlBlocklist(rule_cfg)
            else:
                fn = RULES[name]
            self.rules.append((name, fn, rule_cfg))
        self.stats: dict[str, dict[str, RuleStats]] = {}
        self.languages: dict[str, Counter] = {}    # source -> lang -> documents (before the language rule drops)

    def apply(self, doc: dict) -> dict | None:
        """The document (possibly with edited text and a 'lang' field) if every rule keeps it, else None."""
        source = doc.get("source", "")
        per_rule = self.stats.setdefault(source, {name: RuleStats() for name, _, _ in self.rules})
        k = self.cfg.examples_per_rule
        text = None
        for name, fn, rule_cfg in self.rules:
            st = per_rule[name]
            if doc["text"] is not text:   # encoded again only after a rule edits the text (c4_lines)
                text = doc["text"]
                nbytes = len(text.encode("utf-8"))
            st.docs_in += 1
            st.bytes_in += nbytes
            reason = fn(doc, rule_cfg)
            if name == "language":
                self.languages.setdefault(source, Counter())[doc["lang"]] += 1
            st.lines_removed += doc.pop("_lines_removed", 0)
            if reason is not None:
                st.dropped += 1
                st.dropped_bytes += nbytes
                st.reasons[reason] += 1
                if len(st.examples["dropped"]) < k:
                    st.examples["dropped"].append(_example(doc, reason))
                return None
            st.kept += 1
            st.kept_bytes += len(doc["text"].encode("utf-8")) if name == "c4_lines" else nbytes
            if len(st.examples["kept"]) < k:
                st.examples["kept"].append(_example(doc))
        return doc

    def run(self, docs: Iterable[dict]) -> Iterator[dict]:
        """Stream the documents that pass."""
        for doc in docs:
            out = self.apply(doc)
            if out is not None:
                yield out

    def to_dict(self) -> dict:
        return {"rules": {src: {name: st.to_dict() for name, st in rules.items()}
                          for src, rules in sorted(self.stats.items())},
                "languages": {src: dict(sorted(c.items())) for src, c in sorted(self.languages.items())}}

