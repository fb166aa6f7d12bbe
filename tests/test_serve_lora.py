"""Several LoRA adapters on one served base, chosen per request by `model`: each row of a mixed batch gets exactly
what its adapter gives alone (peft's own layers as the reference), over the engine and over real HTTP."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading

import pytest
import torch

pytest.importorskip("peft")

from plinth.adapt.lora import apply_lora, base_fingerprint, load_adapter, save_adapter  # noqa: E402
from plinth.adapt.multi_lora import attach_adapters  # noqa: E402
from plinth.common import PlinthError  # noqa: E402
from plinth.config import LoraOptions  # noqa: E402
from plinth.models.generate import generate  # noqa: E402
from plinth.pipelines.text import LanguageModel  # noqa: E402
from plinth.serve.engine import Done, Engine, Request, Token  # noqa: E402
from tests.serve_helpers import random_lm  # noqa: E402

PROMPTS = [[5, 9, 14, 3, 22, 7], [30, 2, 11], [8, 8, 19, 40, 6, 12, 25, 4, 17]]


def _adapter(lm: LanguageModel, folder, seed: int, rank: int, targets: list[str]) -> None:
    """An adapter for `lm`'s model with random (trained-looking) B matrices, saved alone."""
    model = copy.deepcopy(lm.model)
    fp = base_fingerprint(model)
    opts = LoraOptions(rank=rank, alpha=2.0 * rank, dropout=0.0, targets=targets)
    apply_lora(model, opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_adapter(model, folder, opts, base="random", fingerprint=fp)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    lm = random_lm(seed=3)
    _adapter(lm, tmp / "a", seed=1, rank=4, targets=["q_proj", "v_proj"])
    _adapter(lm, tmp / "b", seed=2, rank=8, targets=["q_proj", "o_proj", "down_proj"])  # another rank, other layers
    return lm, {"a": tmp / "a", "b": tmp / "b"}


def _reference(lm: LanguageModel, folder):
    return load_adapter(copy.deepcopy(lm.model), folder).eval() if folder else lm.model


def test_mixed_batch_rows_equal_each_adapter_alone_through_peft(setup):
    """One forward pass, rows routed to base / a / b: each row's logits equal that adapter's peft model within 1e-5."""
    lm, folders = setup
    served = copy.deepcopy(lm.model)
    aset = attach_adapters(served, folders)
    ids = torch.tensor([p[:3] for p in PROMPTS] * 2)  # (6, 3)
    choice = [0, 1, 2, 2, 0, 1]
    aset.select(choice)
    with torch.no_grad():
        mixed = served(ids)
        for row, i in enumerate(choice):
            ref = _reference(lm, folders[aset.names[i - 1]] if i else None)(ids[row:row + 1])
            assert torch.allclose(mixed[row], ref[0], atol=1e-5), (row, (mixed[row] - ref[0]).abs().max())
        aset.select([1] * 6)  # every row on one adapter: the unbatched path
        assert torch.allclose(served(ids), _reference(lm, folders["a"])(ids), atol=1e-5)
        aset.select([0] * 6)
        assert torch.equal(served(ids), lm.model(ids))  # the base is untouched


def _collect(engine: Engine, prompt: list[int], adapter: int, out: dict, key) -> threading.Event:
    done = threading.Event()
    toks: list[int] = []

    def on_event(e):
        if isinstance(e, Token):
            toks.append(e.id)
        elif isinstance(e, Done):
            out[key] = toks
            done.set()

    engine.submit(Request(prompt, 12, on_event, adapter=adapter))
    return done


def test_engine_decodes_each_request_with_its_own_adapter(setup):
    """Requests for base, a and b submitted together decode in shared steps; each gets its adapter's greedy tokens."""
    lm, folders = setup
    served = copy.deepcopy(lm.model)
    aset = attach_adapters(served, folders)
    engine = Engine(served, max_batch=9, prefill_chunk=4, adapters=aset).start()
    try:
        out: dict = {}
        events = [_collect(engine, p, i, out, (k, i)) for k, p in enumerate(PROMPTS) for i in (0, 1, 2)]
        assert all(e.wait(60) for e in events)
        with pytest.raises(PlinthError, match="adapter 3"):
            engine.submit(Request(PROMPTS[0], 2, lambda e: None, adapter=3))
    finally:
        engine.stop()
    for (k, i), toks in out.items():
        ref = _reference(lm, folders[aset.names[i - 1]] if i else None)
        assert toks == generate(ref, [PROMPTS[k]], 12, temperature=0)[0], (k, i)
    per_adapter = {i: tuple(t for k in range(len(PROMPTS)) for t in out[(k, i)]) for i in (0, 1, 2)}
    assert len(set(per_adapter.values())) == 3  # the adapters really change the output


def test_adapter_for_another_base_or_a_bad_name_is_refused(setup, tmp_path):
    lm, folders = setup
    other = random_lm(seed=4)
    with pytest.raises(PlinthError, match="other base weights"):
        attach_adapters(copy.deepcopy(other.model), {"a": folders["a"]})
    with pytest.raises(PlinthError, match="not a LoRA adapter folder"):
        attach_adapters(copy.deepcopy(lm.model), {"x": tmp_path})


def test_http_model_field_picks_the_adapter(setup):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from tests.serve_helpers import running

    lm, folders = setup
    served = LanguageModel(copy.deepcopy(lm.model), lm.tokenizer, None)
    with running(served, adapters=(("a", str(folders["a"])), ("b", str(folders["b"])))) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            cards = c.get("/v1/models").json()["data"]
            assert [m["id"] for m in cards] == ["tiny", "a", "b"]
            assert cards[1]["parent"] == "tiny" and "parent" not in cards[0]
            texts, logprobs = {}, {}
            for name in ("tiny", "a", "b"):
                r = c.post("/v1/completions", json={"model": name, "prompt": "hello", "max_tokens": 8,
                                                    "temperature": 0, "logprobs": 0})
                assert r.status_code == 200, r.text
                assert r.json()["model"] == name
                choice = r.json()["choices"][0]
                texts[name] = choice["text"]
                logprobs[name] = choice["logprobs"]["token_logprobs"]
            r = c.post("/v1/completions", json={"model": "c", "prompt": "hello", "max_tokens": 2})
            assert r.status_code == 404 and "'tiny', 'a', 'b'" in r.json()["error"]["message"]
    prompt = lm.encode("hello")
    for name in ("a", "b"):
        ref = _reference(lm, folders[name])
        want = lm.tokenizer.decode(generate(ref, [prompt], 8, temperature=0)[0])
        assert texts[name] == want
    assert logprobs["a"] != logprobs["b"] != logprobs["tiny"]


def test_serve_cli_bad_adapter_spec_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "plinth", "serve", "x", "--adapter", "noequals"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "NAME=DIR" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_adapter_flag_repeats_or_takes_several_words():
    from plinth.cli.args import parse
    from plinth.config import ServeConfig

    assert parse(ServeConfig, ["m", "--adapter", "a=x", "--adapter", "b=y"]).adapter == ["a=x", "b=y"]
    assert parse(ServeConfig, ["m", "--adapter", "a=x", "b=y"]).adapter == ["a=x", "b=y"]
    assert parse(ServeConfig, ["m", "--port", "1", "--port", "2"]).port == 2  # a scalar: the last one wins
