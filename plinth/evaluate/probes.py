"""Built-in downstream probes for language models of any size: in-context copying, bracket matching and two-digit
addition, scored without generation, so a scaling sweep can watch for abilities that appear with scale.

- `copy`: a list of random word tokens, then the same list again; accuracy = share of the repeated tokens (after
  the first) the model predicts exactly (greedy). This is the induction-head test of Olsson et al. (2022), the
  best-known ability that appears abruptly in small transformers. Its baseline is the model's accuracy on the
  first, unrepeated copy of the same tokens.
- `brackets`: a few balanced sequences of ( [ { on separate lines, then an unfinished one; which closing bracket
  comes next? Three choices, scored by log-likelihood (chance 1/3).
- `arithmetic`: three solved additions of numbers below 50, then one to solve; the sum against three near misses
  (sum +- 1, +- 10), scored by log-likelihood (chance 1/4).

Items are generated from a seed, so every model in a sweep sees the same ones. Each probe reports accuracy, its
baseline, the number of items and the mean log-probability of the right answer per token, a smooth measure that
shows whether a jump in accuracy has a gradual cause (Schaeffer et al. 2023, "Are emergent abilities a mirage?").
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from plinth.common import PlinthError, autocast

PROBES = ("copy", "brackets", "arithmetic")
COPY_WORDS = 10  # tokens in the list that is repeated
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def run_probes(model: torch.nn.Module, tokenizer: Any, items: int = 64, seed: int = 0, precision: str = "fp32",
               batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Every probe on `model` (a causal LM returning logits (B, T, V)) with `items` items each.

    Returns {probe: {"accuracy", "baseline", "items", "logprob"}}. Raises PlinthError if the tokenizer has too few
    word tokens for the copy probe.
    """
    if items < 1:
        raise PlinthError(f"probes need at least one item, got {items}")
    was_training = model.training
    model.eval()
    try:
        seq_len = int(model.config.seq_len)
        out = {"copy": _copy_probe(model, tokenizer, items, seed, precision, batch_size, seq_len)}
        for name, make in (("brackets", _bracket_items), ("arithmetic", _arithmetic_items)):
            prompts, choices, answers = make(random.Random(f"{seed}-{name}"), items)
            out[name] = _choice_probe(model, tokenizer, prompts, choices, answers, precision, batch_size, seq_len)
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Items


def _word_tokens(tokenizer: Any) -> list[int]:
    """Ids of tokens that decode to a space and a lowercase word of 3+ letters (' the', ' nation'); with fewer than
    `COPY_WORDS` of those (a small vocabulary), any token of 2+ letters."""
    pieces = {i: tokenizer.decode([i]) or "" for i in range(tokenizer.vocab_size)}
    for pattern in (r" [a-z]{3,}", r" ?[A-Za-z]{2,}"):
        ids = [i for i, text in pieces.items() if re.fullmatch(pattern, text)]
        if len(ids) >= COPY_WORDS:
            return ids
    raise PlinthError(f"the copy probe needs {COPY_WORDS} tokens of letters in the vocabulary; this tokenizer has "
                      f"{len(ids)} (a character tokenizer has none): turn probes off (--probe_items 0)")


def _balanced(rng: random.Random, pairs: int) -> list[str]:
    """A random balanced sequence of `pairs` bracket pairs, nesting at most 3 deep."""
    out, stack, opened = [], [], 0
    while opened < pairs or stack:
        if opened < pairs and (not stack or (len(stack) < 3 and rng.random() < 0.6)):
            b = rng.choice("([{")
            stack.append(b)
            out.append(b)
            opened += 1
        else:
            out.append(_PAIRS[stack.pop()])
    return out


def _bracket_items(rng: random.Random, n: int) -> tuple[list[str], list[list[str]], list[int]]:
    prompts, choices, answers = [], [], []
    closers = [")", "]", "}"]
    for _ in range(n):
        shots = [" ".join(_balanced(rng, rng.randint(3, 5))) for _ in range(3)]
        seq = _balanced(rng, rng.randint(3, 5))
        closing = [i for i, b in enumerate(seq) if b in closers]
        cut = rng.choice(closing)
        prompts.append("\n".join(shots) + "\n" + " ".join(seq[:cut]))
        choices.append([" " + c for c in closers])
        answers.append(closers.index(seq[cut]))
    return prompts, choices, answers


def _arithmetic_items(rng: random.Random, n: int) -> tuple[list[str], list[list[str]], list[int]]:
    prompts, choices, answers = [], [], []
    for _ in range(n):
        shots = []
        for _ in range(3):
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            shots.append(f"{a} + {b} = {a + b}")
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        s = a + b
        wrong = [c for c in (s + 1, s - 1, s + 10, s - 10) if c >= 0]
        rng.shuffle(wrong)
        options = [s, *wrong[:3]]
        rng.shuffle(options)
        prompts.append("\n".join(shots) + f"\n{a} + {b} =")
        choices.append([f" {c}" for c in options])
        answers.append(options.index(s))
    return prompts, choices, answers


# ----------------------------------------------------------------------------------------------------------------------
# Scoring


@torch.inference_mode()
def _logits(model: torch.nn.Module, rows: Sequence[list[int]], precision: str) -> list[torch.Tensor]:
    """Per-position log-probabilities (T_i, V) of each row, batched with right padding (causal: padding is unseen)."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    with autocast(device, precision):
        logits = model(ids.to(device))  # (B, T, V)
    logp = F.log_softmax(logits.float(), dim=-1).cpu()
    return [logp[i, :len(r)] for i, r in enumerate(rows)]


def _copy_probe(model: torch.nn.Module, tokenizer: Any, items: int, seed: int, precision: str, batch_size: int,
                seq_len: int) -> dict[str, float]:
    rng = random.Random(f"{seed}-copy")
    words = _word_tokens(tokenizer)
    k = min(COPY_WORDS, (seq_len - 1) // 2)
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else words[0]
    rows = []
    for _ in range(items):
        seq = rng.sample(words, k)
        rows.append([eos, *seq, *seq])
    first = second = scored = 0
    logprob = 0.0
    for start in range(0, items, batch_size):
        batch = rows[start:start + batch_size]
        for row, lp in zip(batch, _logits(model, batch, precision)):
            pred = lp.argmax(-1)  # (T,): the prediction for position t + 1
            # first copy: positions 2..k predicted from 1..k-1; second copy: positions k+2..2k from k+1..2k-1
            for j in range(2, k + 1):
                first += int(pred[j - 1] == row[j])
                second += int(pred[k + j - 1] == row[k + j])
                logprob += float(lp[k + j - 1, row[k + j]])
                scored += 1
    return {"accuracy": second / scored, "baseline": first / scored, "items": items, "logprob": logprob / scored}


def _choice_probe(model: torch.nn.Module, tokenizer: Any, prompts: list[str], choices: list[list[str]],
                  answers: list[int], precision: str, batch_size: int, seq_len: int) -> dict[str, float]:
    """Accuracy of picking the answer with the highest summed log-likelihood among `choices` (as lm-eval's acc)."""
    rows, spans = [], []  # one row per (item, choice); span = where the choice's tokens are in the row
    for prompt, options in zip(prompts, choices):
        p = tokenizer.encode(prompt)
        for option in options:
            c = tokenizer.encode(option)
            row = (p + c)[-seq_len:]
            rows.append(row)
            spans.append((len(row) - len(c), len(row)))
    scores = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        for row, (a, b), lp in zip(batch, spans[start:start + batch_size], _logits(model, batch, precision)):
            scores.append(sum(float(lp[t - 1, row[t]]) for t in range(a, b)))
    correct, logprob, tokens, i = 0, 0.0, 0, 0
    for options, answer in zip(choices, answers):
        item = scores[i:i + len(options)]
        correct += int(max(range(len(item)), key=item.__getitem__) == answer)
        a, b = spans[i + answer]
        logprob += item[answer]
        tokens += b - a
        i += len(options)
    return {"accuracy": correct / len(answers), "baseline": 1 / len(choices[0]), "items": len(answers),
            "logprob": logprob / max(tokens, 1)}


def above_baseline(accuracy: float, baseline: float, items: int, z: float = 2.58) -> bool:
    """True when `accuracy` exceeds `baseline` by more than `z` binomial standard errors (one-sided, ~0.5%)."""
    p = min(max(baseline, 1e-6), 1 - 1e-6)
    return accuracy - baseline > z * math.sqrt(p * (1 - p) / max(items, 1))
