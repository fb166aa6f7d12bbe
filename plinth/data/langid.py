"""py3langid's language identification with its feature counting done by numpy: the same model, the same scores.

py3langid counts its byte n-gram features by walking a byte automaton one Python step per byte (`visit_counts`),
then scores them by naive Bayes with a float16 table. On the pipeline's documents that walk and the float16 product
were ~80% of the language rule and the rule ~30% of the filters, so both are redone here, exactly:

- The automaton is an Aho-Corasick automaton: after each byte its state is the trie node of the longest suffix of the
  text read so far that is a prefix of some feature. No trie node is deeper than `WINDOW` bytes, so the state after
  byte i is the state reached from the start state by bytes i-WINDOW+1..i alone. All states are therefore computed
  at once, in WINDOW vectorised steps over every window of the text (tests/test_data_langid.py checks the automaton
  property and the depth on the installed model, and the scores against `py3langid.classify`).
- Features are counted and ordered by first occurrence, as `collections.Counter` orders them in `visit_counts`, so
  the naive-Bayes sum adds the same numbers in the same order.
- The float16 table rows are converted to float32 (exact) once each and cached; numpy converts them on every call
  otherwise, then runs the same float32 product.

Everything else (text encoding, the softmax, aliased labels, the decision) is py3langid's own code.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WINDOW", "FastLanguageIdentifier", "load_identifier"]

WINDOW = 6  # the depth of the deepest trie node of py3langid 0.4's automaton (checked by the tests)

# A few texts in several scripts: the fast walk is checked against py3langid's own on them when a model is loaded,
# and py3langid's walk is used if they disagree (a future model with a deeper automaton, say).
_SELF_CHECK = ("The quick brown fox jumps over the lazy dog, and the dog sleeps.",
               "Der schnelle braune Fuchs springt \u00fcber den faulen Hund.",
               "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3092\u8b58\u5225\u3057\u307e\u3059\u3002",
               "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442 \u0434\u043b\u044f "
               "\u043f\u0440\u043e\u0432\u0435\u0440\u043a\u0438.", "ab", "")


def _identifier_class():
    from py3langid.langid import LanguageIdentifier

    class _Fast(LanguageIdentifier):
        """py3langid's LanguageIdentifier with `_raw_score` computed as described in the module docstring."""

        __slots__ = ("_nm", "_rowbase_np", "_out_np", "_rows_cache", "_fast")

        def _prepare(self) -> None:
            self._nm = np.frombuffer(self.tk_nextmove, dtype=np.uint32) if self.tk_nextmove.itemsize == 4 \
                else np.asarray(self.tk_nextmove, dtype=np.int64)
            self._rowbase_np = np.asarray(self.tk_row, dtype=np.int64) << 8   # as py3langid's `_rowbase`
            self._out_np = np.asarray(self.tk_output, dtype=np.int64)
            self._rows_cache = (None, None, None)
            self._fast = True
            self._fast = all(np.array_equal(self._raw_score(e), LanguageIdentifier._raw_score(self, e))
                             for e in map(self._encode, _SELF_CHECK))

        def _feature_counts(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
            """(feature ids in order of first occurrence, their counts) of the UTF-8 bytes `data`."""
            b = np.frombuffer(data, dtype=np.uint8)
            n = len(b)
            state = np.zeros(n, dtype=np.int64)   # state[i]: after reading bytes max(0, i-WINDOW+1)..i
            for k in range(WINDOW):
                lo = WINDOW - 1 - k               # positions whose window has started by step k
                if lo >= n:
                    continue
                state[lo:] = self._nm[self._rowbase_np[state[lo:]] + b[:n - lo]]
            feats = self._out_np[state]
            pos = np.flatnonzero(feats >= 0)
            if not len(pos):
                return pos, pos
            # one sort of (feature, position) keys gives each feature's count and first position
            keys = np.sort((feats[pos] << 32) | pos)
            f = keys >> 32
            starts = np.flatnonzero(np.concatenate(([True], f[1:] != f[:-1])))
            counts = np.diff(np.append(starts, len(keys)))
            order = np.argsort(keys[starts] & 0xFFFFFFFF)   # first positions are distinct
            return f[starts][order], counts[order]

        def _rows32(self, idx: np.ndarray) -> np.ndarray:
            """float32 rows `idx` of the float16 table `nb_ptc`, converted once each (calloc'd: untouched rows
            cost no memory). The cache is one tuple, replaced whole, and a row is flagged only after it is written,
            so concurrent callers at worst convert a row twice."""
            src, table32, converted = self._rows_cache
            if src is not self.nb_ptc:   # first use, or set_languages() swapped the table
                src = self.nb_ptc
                table32 = np.zeros(src.shape, dtype=np.float32)
                converted = np.zeros(len(src), dtype=bool)
                self._rows_cache = (src, table32, converted)
            new = idx[~converted[idx]]
            if len(new):
                table32[new] = src[new]
                converted[new] = True
            return table32[idx]

        def _raw_score(self, text):
            if not self._fast:
                return LanguageIdentifier._raw_score(self, text)
            idx, counts = self._feature_counts(text)
            if not len(idx):   # no features: py3langid's own fill value
                return LanguageIdentifier._raw_score(self, text)
            # as py3langid's _sparse_score: log1p(float32 counts) @ rows + class priors
            return np.log1p(counts.astype(np.float32)) @ self._rows32(idx) + self.nb_pc

    return _Fast


FastLanguageIdentifier = None  # the class, built on first use (py3langid is an optional dependency)


def load_identifier(norm_probs: bool = True):
    """py3langid's packaged model as a FastLanguageIdentifier (`classify(text) -> (lang, score)`)."""
    global FastLanguageIdentifier
    from py3langid.langid import MODEL_FILE

    if FastLanguageIdentifier is None:
        FastLanguageIdentifier = _identifier_class()
    ident = FastLanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=norm_probs)
    ident._prepare()
    return ident
