"""Token shards: manifest counts, integrity checks, reproducible sampling and ordered validation batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plinth.common import PlinthError
from plinth.config import TokenizeConfig, TokenizerConfig
from plinth.data.shards import TokenShards, WindowSampler, iter_sequential_batches, shard_dtype, write_shards
from plinth.data.tokenizer import train_tokenizer


def write_prepared(folder: Path, train: list[str], val: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train), ("val", val)):
        rows = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs)
        (folder / f"{split}.jsonl").write_text(rows, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    train = [f"document {i}: " + "lorem ipsum dolor " * (i % 5 + 1) for i in range(40)]
    val = ["held out one", "held out two"]
    prep = write_prepared(root / "prep", train, val)
    tok = train_tokenizer(TokenizerConfig(kind="char", out=str(root / "tok.json")), train)
    report = write_shards(TokenizeConfig(input=str(prep), tokenizer=str(root / "tok.json"), out=str(root / "out"),
                                         shard_tokens=100))
    expected = {s: np.concatenate([tok.encode(t) + [tok.eos_id] for t in docs]) for s, docs in
                (("train", train), ("val", val))}
    return {"root": root, "tok": tok, "report": report, "expected": expected, "out": root / "out"}


def test_manifest_and_contents(built) -> None:
    out, expected, tok = built["out"], built["expected"], built["tok"]
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == tok.vocab_size
    assert manifest["tokenizer_sha256"] == tok.sha256 and manifest["documents"] == 40
    assert manifest["tokens"] == len(expected["train"]) == sum(s["tokens"] for s in manifest["shards"])
    assert all(s["tokens"] == 100 for s in manifest["shards"][:-1]) and 0 < manifest["shards"][-1]["tokens"] <= 100
    assert [s["file"] for s in manifest["shards"]][:2] == ["shard_00000.bin", "shard_00001.bin"]
    assert built["report"]["train"]["tokens"] == manifest["tokens"] and built["report"]["val"]["documents"] == 2
    for split in ("train", "val"):
        shards = TokenShards(out / split)
        assert shards.total_tokens == len(expected[split]) and shards.dtype == np.uint16
        np.testing.assert_array_equal(shards.window(0, shards.total_tokens), expected[split])
    shards = TokenShards(out / "train")
    np.testing.assert_array_equal(shards.window(95, 110), expected["train"][95:205])  # spans three shards
    with pytest.raises(IndexError):
        shards.window(shards.total_tokens - 5, 6)


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    assert shard_dtype(65536) == np.uint16 and shard_dtype(65537) == np.uint32
    # 74k distinct CJK and Hangul characters make a char tokenizer past the uint16 range.
    chars = [range(0x4E00, 0xA000), range(0x20000, 0x2A6E0), range(0xAC00, 0xD7A4)]
    text = "".join(chr(c) for r in chars for c in r)
    tok = train_tokenizer(TokenizerConfig(kind="char", out=str(tmp_path / "tok.json")), [text])
    assert tok.vocab_size > 65536
    prep = write_prepared(tmp_path / "prep", [text[-50:]], ["\uac00"])
    write_shards(TokenizeConfig(input=str(prep), tokenizer=str(tmp_path / "tok.json"), out=str(tmp_path / "out")))
    shards = TokenShards(tmp_path / "out" / "train")
    assert shards.dtype == np.uint32
    assert tok.decode(shards.window(0, shards.total_tokens - 1)) == text[-50:]


def test_corruption_is_detected(built, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "train"
    shutil.copytree(built["out"] / "train", broken)
    data = bytearray((broken / "shard_00001.bin").read_bytes())
    data[10] ^= 0xFF
    (broken / "shard_00001.bin").write_bytes(bytes(data))
    with pytest.raises(PlinthError, match="shard_00001.bin"):
        TokenShards(broken)
    assert TokenShards(broken, verify=False).total_tokens > 0  # size still matches; only the hash catches it
    (broken / "shard_00002.bin").write_bytes(b"\x00\x00")
    with pytest.raises(PlinthError, match="shard_00002.bin"):
        TokenShards(broken, verify=False)
    (broken / "manifest.json").unlink()
    with pytest.raises(PlinthError, match="manifest"):
        TokenShards(broken)


def test_sampler_is_reproducible_and_resumable(built) -> None:
    shards = TokenShards(built["out"] / "train")
    a, b = WindowSampler(shards, 16, 4, seed=7), WindowSampler(shards, 16, 4, seed=7)
    batches = [a.next_batch() for _ in range(5)]
    for x, y in batches:
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.from_numpy(built["expected"]["train"].astype(np.int64))
    x, y = batches[0]
    for row_x, row_y in zip(x, y, strict=True):
        starts = [s for s in range(len(stream) - 16) if torch.equal(stream[s:s + 16], row_x)]
        assert any(torch.equal(stream[s + 1:s + 17], row_y) for s in starts)  # y really is the next token
    for _ in range(3):
        b.next_batch()
    state = b.state_dict()
    assert state["batch_index"] == 3 and state["seq_len"] == 16 and state["total_tokens"] == shards.total_tokens
    c = WindowSampler(shards, 16, 4, seed=0)
    c.load_state_dict(state)
    for expected in batches[3:]:
        got = c.next_batch()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = WindowSampler(shards, 16, 4, seed=8).next_batch()
    assert not torch.equal(other[0], batches[0][0])
    with pytest.raises(PlinthError, match="seq_len"):
        WindowSampler(shards, 32, 4, seed=7).load_state_dict(state)


def test_windows_stay_inside_the_stream(tmp_path: Path, built) -> None:
    shards = TokenShards(built["out"] / "train")
    seq_len = shards.total_tokens - 1  # exactly one valid start
    x, y = WindowSampler(shards, seq_len, 3, seed=1).next_batch()
    assert (x == x[0]).all() and x.shape == (3, seq_len)
    with pytest.raises(PlinthError, match=f"{shards.total_tokens} tokens"):
        WindowSampler(shards, shards.total_tokens, 2, seed=0)


def test_sequential_batches_cover_in_order(built) -> None:
    shards = TokenShards(built["out"] / "train")
    stream = torch.from_numpy(built["expected"]["train"].astype(np.int64))
    batches = list(iter_sequential_batches(shards, 10, 4))
    xs = torch.cat([x.reshape(-1) for x, _ in batches])
    ys = torch.cat([y.reshape(-1) for _, y in batches])
    n = (len(stream) - 1) // 10 * 10
    assert torch.equal(xs, stream[:n]) and torch.equal(ys, stream[1:n + 1])
    assert len(list(iter_sequential_batches(shards, 10, 4, max_batches=2))) == 2


def test_write_shards_errors_leave_nothing(tmp_path: Path, built) -> None:
    with pytest.raises(PlinthError, match="train.jsonl"):
        write_shards(TokenizeConfig(input=str(tmp_path / "none"), tokenizer=str(built["root"] / "tok.json"),
                                    out=str(tmp_path / "out")))
    prep = write_prepared(tmp_path / "prep", ["a"], ["b"])
    with pytest.raises(PlinthError, match="nope.json"):
        write_shards(TokenizeConfig(input=str(prep), tokenizer=str(tmp_path / "nope.json"), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
