"""Decoding: sampling rules, determinism, left-padded batches, eos handling, context limits."""

from __future__ import annotations

import pytest
import torch

from plinth.common import PlinthError, PlinthWarning
from plinth.models import GPT, generate, generate_tokens, preset, sample_next_token

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [12, 200, 9]]


@pytest.fixture(scope="module")
def model() -> GPT:
    # Untied: at init a tied model's greedy choice is mostly the last input token, which would make the
    # batch-vs-single checks trivially true.
    torch.manual_seed(0)
    return GPT(preset("test", vocab_size=256, tie_embeddings=False)).eval()


def naive_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by re-running the full sequence every step (no cache, no padding)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_greedy_with_cache_matches_naive_and_batch_matches_single(model):
    batch = generate(model, PROMPTS, 10, temperature=0)
    singles = [generate(model, [p], 10, temperature=0)[0] for p in PROMPTS]
    assert batch == singles == [naive_greedy(model, p, 10) for p in PROMPTS]
    assert len(set(batch[0])) > 1  # a non-trivial continuation, so the comparison means something
    assert generate(model, PROMPTS, 10, temperature=0, seed=123) == batch  # greedy ignores the seed


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    greedy = generate(model, PROMPTS, 8, temperature=0)
    assert generate(model, PROMPTS, 8, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, PROMPTS, 8, temperature=1.0, top_p=1e-6, seed=4) == greedy


def test_seeds_reproduce(model):
    a = generate(model, PROMPTS, 12, temperature=1.0, seed=7)
    assert generate(model, PROMPTS, 12, temperature=1.0, seed=7) == a
    assert generate(model, PROMPTS, 12, temperature=1.0, seed=8) != a


def test_eos_finishes_rows_and_stops(model):
    first = generate(model, PROMPTS, 1, temperature=0)
    eos = first[0][0]  # row 0 emits this at step 1
    steps = list(generate_tokens(model, PROMPTS, 6, temperature=0, eos_id=eos))
    assert steps[0][0] == eos and all(s[0] is None for s in steps[1:])
    expected_row1 = naive_greedy(model, PROMPTS[1], 6)
    got_row1 = [s[1] for s in steps]
    assert got_row1 == expected_row1[: len(got_row1)]
    one = list(generate_tokens(model, [PROMPTS[0]], 6, temperature=0, eos_id=eos))
    assert one == [[eos]]  # every row done: no further steps


def test_generation_limits(model):
    assert list(generate_tokens(model, PROMPTS, 0)) == []
    with pytest.raises(PlinthError, match="empty"):
        generate(model, [[]], 3)
    with pytest.raises(PlinthError, match="vocabulary"):
        generate(model, [[256]], 3)
    with pytest.raises(PlinthError, match="top_p"):
        generate(model, PROMPTS, 3, top_p=0.0)
    with pytest.raises(PlinthError, match="max_new_tokens"):
        generate_tokens(model, PROMPTS, -1)  # raised at the call, before any iteration


def test_generation_past_the_context_slides_its_window(model):
    """Context 64: past it, the cache is refilled from each row's last 48 tokens (3/4 of the context)."""
    long_prompt = [(7 * i) % 256 for i in range(60)]
    with pytest.warns(PlinthWarning, match="sliding window of the last 48") as caught:
        out = generate(model, [long_prompt, [1]], 20, temperature=0)
    assert len(caught) == 1 and [len(r) for r in out] == [20, 20]
    # 60 + 4 tokens fill the context; the 5th is still predicted from all 64.
    assert out[0][:5] == naive_greedy(model, long_prompt, 5)
    # Then the window slides to the last 48 tokens and decoding continues from there, as if they were the prompt.
    window = (long_prompt + out[0][:5])[-48:]
    assert out[0][5:] == naive_greedy(model, window, 15)
    assert out[1][5:] == naive_greedy(model, [1] + out[1][:5], 15)


def test_prompt_longer_than_the_context_keeps_its_last_tokens(model):
    prompt = [(3 * i + 1) % 256 for i in range(100)]
    with pytest.warns(PlinthWarning, match="has 100 tokens, more than the model's context of 64"):
        out = generate(model, [prompt], 6, temperature=0)
    assert out == generate(model, [prompt[-64:]], 6, temperature=0)


def test_no_inference_mode_leaks_between_steps(model):
    it = generate_tokens(model, PROMPTS, 3, temperature=0)
    next(it)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_sample_next_token_rules():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    assert sample_next_token(logits, temperature=0).tolist() == [0, 3]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next_token(logits, 1.0, top_k=2, generator=g) for _ in range(100)])  # (100, 2)
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {2, 3}
    # top_p 0.6: 0.5 alone falls short, so the nucleus is the top two tokens
    draws = torch.stack([sample_next_token(logits, 1.0, top_p=0.6, generator=g) for _ in range(100)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {2, 3}
    with pytest.raises(PlinthError, match="temperature"):
        sample_next_token(logits, temperature=-1)
