"""Log-likelihood of continuations given contexts, batched; each context's forward pass is shared by its continuations.

The one scorer behind multiple-choice tasks (`tasks.py`) and the lm-eval adapter's `loglikelihood`.

Tokenization follows lm-eval's rule for the join: the whole string `context + continuation` is tokenized once, and
the continuation's tokens are those whose character span ends past the context (a token spanning the join belongs to
the continuation). Tokenizing the two halves separately would both change the tokens the model sees and, when a token
spans the join, can leave the continuation with zero tokens: then every choice scores 0 and accuracy is noise.

Sharing: the longest token prefix common to all continuations of a context (and inside the context) is run once into
a KV cache; the cache rows are copied once per continuation and only the remaining tokens are run, in one batch. With
five answer choices after a 5-shot prompt this does the prompt's work once instead of five times.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tokenizers
import torch

from plinth.common import PlinthError
from plinth.models.generate import left_pad


@dataclass
class Encoded:
    """One (context, continuation) pair as token ids: `ids[:start]` is context, `ids[start:]` continuation."""

    ids: list[int]
    start: int  # index of the first continuation token (>= 1: there is always a token to predict it from)


class PairEncoder:
    """Tokenizes (context, continuation) pairs of a `LanguageModel` with character offsets (see the module doc)."""

    def __init__(self, lm) -> None:
        spec = json.loads(lm.tokenizer.backend.to_str())
        # Offsets must cover the text exactly; a post-processor (e.g. ByteLevel with trim_offsets) may trim whitespace
        # from them, and special tokens are never added here anyway.
        spec["post_processor"] = None
        self._tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
        bos = lm.settings.bos_token_id if lm.settings.add_bos_token else None
        self._bos = bos
        # A continuation at the very start needs a token to be predicted from: BOS, or the end-of-document token
        # (lm-eval uses the end-of-text token the same way).
        self._start = lm.settings.bos_token_id if lm.settings.bos_token_id is not None else lm.tokenizer.eos_id
        if self._start is None or self._start < 0:
            self._start = 0

    def encode(self, context: str, continuation: str) -> Encoded:
        """Ids of `context + continuation` and where the continuation starts; PlinthError for an empty continuation."""
        if not continuation:
            raise PlinthError(f"empty continuation after context {context[-60:]!r}: nothing to score")
        enc = self._tok.encode(context + continuation, add_special_tokens=False)
        ids, cut = list(enc.ids), len(context)
        start = next((i for i, (_, end) in enumerate(enc.offsets) if end > cut), len(ids) - 1)
        if self._bos is not None:
            ids, start = [self._bos, *ids], start + 1
        if start == 0:
            ids, start = [self._start, *ids], 1
        return Encoded(ids, start)


@dataclass
class _Group:
    """Pairs sharing one context: a prefix run once, then one suffix per pair."""

    prefix: list[int]
    members: list[tuple[int, list[int], int]]  # (pair index, suffix ids, index in suffix of the first scored token)


def _groups(encoded: Sequence[Encoded], contexts: Sequence[str]) -> list[_Group]:
    by_context: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        by_context.setdefault(c, []).append(i)
    groups = []
    for members in by_context.values():
        seqs = [encoded[i].ids for i in members]
        # the longest common token prefix, kept inside every pair's context (so each pair's first scored token is
        # predicted from the prefix's last position or later)
        limit = min(encoded[i].start for i in members)
        n = 0
        while n < limit and all(len(s) > n and s[n] == seqs[0][n] for s in seqs):
            n += 1
        if n == 0:  # the pairs differ from the first token on (the join moved it): score each on its own
            groups.extend(_Group(encoded[i].ids[: encoded[i].start], [(i, encoded[i].ids[encoded[i].start:], 0)])
                          for i in members)
            continue
        groups.append(_Group(seqs[0][:n], [(i, encoded[i].ids[n:], encoded[i].start - n) for i in members]))
    return groups


def _batches(groups: list[_Group], batch_size: int, token_budget: int) -> list[list[_Group]]:
    """Groups packed so each forward stays within `batch_size` rows and about `token_budget` padded tokens."""
    order = sorted(groups, key=lambda g: -(len(g.prefix) + max(len(s) for _, s, _ in g.members)))
    batches, current, rows, longest = [], [], 0, 0
    for g in order:
        g_len = len(g.prefix) + max(len(s) for _, s, _ in g.members)
        g_rows = len(g.members)
        if current and (rows + g_rows > batch_size or (rows + g_rows) * max(longest, g_len) > token_budget):
            batches.append(current)
            current, rows, longest = [], 0, 0
        current.append(g)
        rows, longest = rows + g_rows, max(longest, g_len)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def _score_batch(model: torch.nn.Module, batch: list[_Group], out: list) -> None:
    """Fill `out[pair index] = (log-likelihood, greedy)` for every pair of the groups in `batch`.

    Each group's prefix runs once (logits at its last position only); then, from copies of its cache rows, every
    suffix but its last token (whose prediction nobody needs), and the LM head runs only at the scored positions: a
    one-token answer (" A", " yes") costs no suffix pass at all.
    """
    device = next(model.parameters()).device
    suffixes = [(i, s, first) for g in batch for i, s, first in g.members]
    group_of = [gi for gi, g in enumerate(batch) for _ in g.members]
    inputs = [s[:-1] for _, s, _ in suffixes]
    s_in = max(len(x) for x in inputs)
    prefix_ids, prefix_mask = left_pad([g.prefix for g in batch], device)
    cache = model.new_cache(len(batch), prefix_ids.shape[1] + s_in, device)
    last = model(prefix_ids, cache=cache, attention_mask=prefix_mask, logits_to_keep=1)[:, -1].log_softmax(-1)
    # token j of a suffix is predicted at suffix position j - 1, or (j = 0) at the prefix's last position
    pair, logp, hit = [], [], []
    head = [(r, s[0]) for r, (_, s, first) in enumerate(suffixes) if first == 0]
    if head:
        rows = torch.tensor([group_of[r] for r, _ in head], device=device)
        targets = torch.tensor([t for _, t in head], device=device)
        pred = last[rows]  # (n, V)
        pair.append(torch.tensor([r for r, _ in head]))
        logp.append(pred.gather(1, targets[:, None])[:, 0])
        hit.append(pred.argmax(-1) == targets)
    if s_in > 0:
        cache = cache.select_rows(torch.tensor(group_of, device=device))
        ids = torch.zeros(len(suffixes), s_in, dtype=torch.long)  # right-padded: pads come after real tokens
        mask = torch.zeros(len(suffixes), s_in, dtype=torch.bool)
        for r, x in enumerate(inputs):
            ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = True
        hidden = model.model(ids.to(device), cache=cache, attention_mask_bt=mask.to(device))  # (R, s_in, d_model)
        at = [(r, pos, s[pos + 1]) for r, (_, s, first) in enumerate(suffixes) for pos in range(max(first - 1, 0),
                                                                                                  len(s) - 1)]
        if at:
            r_idx = torch.tensor([r for r, _, _ in at], device=device)
            p_idx = torch.tensor([q for _, q, _ in at], device=device)
            targets = torch.tensor([t for _, _, t in at], device=device)
            pred = model.lm_head(hidden[r_idx, p_idx]).float().log_softmax(-1)  # (n, V): the scored positions only
            pair.append(r_idx.cpu())
            logp.append(pred.gather(1, targets[:, None])[:, 0])
            hit.append(pred.argmax(-1) == targets)
    pair_t = torch.cat(pair)
    totals = torch.zeros(len(suffixes), dtype=torch.float64).index_add_(0, pair_t, torch.cat(logp).double().cpu())
    misses = torch.zeros(len(suffixes), dtype=torch.long).index_add_(0, pair_t, (~torch.cat(hit)).long().cpu())
    for r, (i, _, _) in enumerate(suffixes):
        out[i] = (float(totals[r]), bool(misses[r] == 0))


def loglikelihoods(lm, pairs: Sequence[tuple[str, str]], batch_size: int = 16, token_budget: int = 4096,
                   on_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of log P(continuation token | everything before), whether greedy decoding would produce exactly those
    tokens) for each (context, continuation) pair, in nats; lm-eval's `loglikelihood` contract.

    `lm` is a `LanguageModel`. Pairs with the same context share its forward pass. A sequence longer than the model's
    context keeps its last `seq_len` tokens (the continuation must fit). `on_done(n)` is called as pairs finish.
    """
    encoder = PairEncoder(lm)
    context = lm.config.seq_len
    encoded = []
    for ctx, cont in pairs:
        e = encoder.encode(ctx, cont)
        if len(e.ids) > context:  # keep the end, like lm-eval: the continuation must stay whole
            cut = len(e.ids) - context
            if e.start - cut < 1:
                raise PlinthError(f"a continuation of {len(e.ids) - e.start} tokens does not fit the model's context "
                                  f"of {context}")
            e = Encoded(e.ids[cut:], e.start - cut)
        encoded.append(e)
    out: list = [None] * len(pairs)
    groups = _groups(encoded, [c for c, _ in pairs])
    for batch in _batches(groups, batch_size, token_budget):
        _score_batch(lm.model, batch, out)
        if on_done is not None:
            on_done(sum(len(g.members) for g in batch))
    return out


def rolling_loglikelihood(lm, text: str) -> float:
    """Log-likelihood of a whole text, each token given all before it in windows of the model's context (the first
    token is predicted from BOS or the end-of-document token): lm-eval's `loglikelihood_rolling`."""
    ids = PairEncoder(lm).encode("", text).ids
    n, context = len(ids), lm.config.seq_len
    device = next(lm.model.parameters()).device
    total = 0.0
    with torch.inference_mode():
        for a in range(1, n, context):  # predict ids[a:b] from up to `context` tokens before each
            b = min(a + context, n)
            lo = max(0, b - 1 - context)
            logp = lm.model(torch.tensor([ids[lo: b - 1]], device=device)).log_softmax(-1)[0]  # row t -> ids[lo+1+t]
            targets = torch.tensor(ids[a:b], device=device)
            total += logp[a - 1 - lo:].gather(1, targets[:, None]).sum().item()
    return total
