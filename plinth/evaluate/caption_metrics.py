"""Caption and answer quality, computed offline: corpus BLEU-4 (sacrebleu) and CIDEr-D (Vedantam et al. 2015, as
the COCO caption evaluation code computes it), and exact-match answer accuracy for visual question answering."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from plinth.common import PlinthError

_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (the COCO tokenizer's effect on plain English)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (0-100) of one hypothesis per image against its references (any number per image)."""
    try:
        import sacrebleu
    except ImportError:
        raise PlinthError("BLEU needs sacrebleu: pip install 'plinth[vision]'") from None
    if not hypotheses:
        return float("nan")
    width = max(len(r) for r in references)
    # sacrebleu wants equally many reference streams; repeating an image's references changes neither the clipped
    # n-gram counts (a max over references) nor the closest reference length.
    streams = [[normalize_text(refs[i % len(refs)]) for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu([normalize_text(h) for h in hypotheses], streams, tokenize="none").score)


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """CIDEr-D x 10 averaged over images: tf-idf weighted n-gram (1-4) cosine similarity with clipping and a Gaussian
    length penalty (sigma 6), the idf taken over this corpus's references, as `pycocoevalcap.cider` does."""
    if not hypotheses:
        return float("nan")
    hyp = [_ngrams(normalize_text(h).split()) for h in hypotheses]
    refs = [[_ngrams(normalize_text(r).split()) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(refs)))

    def vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        v: list[dict] = [{} for _ in range(4)]
        norm = [0.0] * 4
        length = 0
        for g, tf in counts.items():
            n = len(g) - 1
            v[n][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[n] += v[n][g] ** 2
            if n == 1:  # the reference code counts bigrams as the length (a quirk kept for comparable scores)
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    total = 0.0
    for h, rs in zip(hyp, refs):
        vh, nh, lh = vec(h)
        score = [0.0] * 4
        for r in rs:
            vr, nr, lr = vec(r)
            for n in range(4):
                val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vh[n].items())
                if nh[n] and nr[n]:
                    val /= nh[n] * nr[n]
                score[n] += val * math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
        total += sum(score) / 4 / len(rs) * 10.0
    return total / len(hyp)


_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """An answer for exact matching: normalised text without articles (VQA's answer normalisation, simplified)."""
    return " ".join(w for w in normalize_text(text).split() if w not in _ARTICLES)


def answer_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to the answer after `normalize_answer`."""
    if not answers:
        return float("nan")
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)
