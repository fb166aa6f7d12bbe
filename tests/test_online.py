"""Online adaptation: documents appended while it runs are consumed exactly once across a kill and a resume; an
update that hurts the anchor is rolled back bit for bit, a normal one is kept; the weight change is capped; bad input
is a one-line error or a counted skip."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plinth.cli.main import main

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

_WORDS = ("the people of the union ask congress to act on the budget and the peace of the nation "
          "we must keep faith with our citizens and our laws").split()


def _doc(i: int, words: int = 60) -> str:
    return " ".join(_WORDS[(i * 5 + k * 3) % len(_WORDS)] for k in range(words)) + "."


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory):
    """A tiny model pretrained for 30 steps on the tiny corpus: its run names the shards (anchor = their val)."""
    run = tmp_path_factory.mktemp("online") / "base"
    assert main(["pretrain", "--model", "test", "--arch.d_model", "32", "--arch.seq_len", "32", "--data.shards",
                 str(tiny_data["shards"]), "--data.tokenizer", str(tiny_data["tokenizer"]), "--run.out_dir", str(run),
                 "--run.max_steps", "30", "--run.eval_every", "0", "--run.ckpt_every", "0", "--no-run.progress",
                 "--optim.batch_size", "8", "--optim.lr", "1e-2", "--optim.warmup_steps", "3", "--system.device",
                 "cpu", "--system.precision", "fp32", "--system.compile", "off"]) == 0
    return run


def _args(model, watch, out, *extra):
    return ["adapt", "online", str(model), "--watch", str(watch), "--out", str(out), "--poll_seconds", "0.05",
            "--device", "cpu", "--anchor_tokens", "512", "--lr", "1e-3", "--batch_size", "8", "--steps_per_update", "8",
            *extra]


def _append(path, rows):
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt):
    return load_file(ckpt / "model.safetensors")


def test_a_normal_update_is_kept_and_one_that_hurts_the_anchor_is_rolled_back_bit_for_bit(base, tmp_path, capsys):
    from plinth.artifacts import list_checkpoints, resolve_checkpoint

    feed = tmp_path / "feed.jsonl"
    _append(feed, [{"text": _doc(i)} for i in range(3)])
    out = tmp_path / "run"
    assert main(_args(base, feed, out, "--max_updates", "1", "--max_param_change", "0.05", "--steps_per_update",
                      "20")) == 0  # 20 steps of 2 new rows: the 33 rows of the 3 documents in one update
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["updates"], summary["kept"], summary["rolled_back"], summary["documents"]) == (1, 1, 0, 3)
    first = _metrics(out)[-1]
    assert first["kept"] and first["docs"] == ["feed.jsonl:1", "feed.jsonl:2", "feed.jsonl:3"]
    kept = _weights(list_checkpoints(out)[-1])
    start = _weights(resolve_checkpoint(base))
    change = sum(float((kept[k] - start[k]).pow(2).sum()) for k in kept if k in start) ** 0.5
    assert 0 < change <= 0.05 * 1.001 and first["weight_change"] > 0.05  # the cap bound the step it would have taken

    # garbage at a high rate: the anchor loss jumps, the update is undone, weights equal the kept ones bit for bit
    _append(feed, [{"text": "zq#x@ " * 120}, {"text": "~~{}|\\ 9" * 90}])
    assert main(_args(base, feed, out, "--max_updates", "2", "--lr", "0.1", "--steps_per_update", "2")) == 0
    row = _metrics(out)[-1]
    assert row["update"] == 2 and not row["kept"] and row["anchor_regression"] > 0.02
    # the rest of the rejected document (feed.jsonl:4) is dropped; the next document's rows wait for their update
    assert row["rows"] == 8 and row["dropped_rows"] > 0 and row["pending_rows"] > 0
    assert row["docs"] == ["feed.jsonl:4", "feed.jsonl:5"]  # consumed (and rejected), not retried
    after = _weights(list_checkpoints(out)[-1])
    assert after.keys() == kept.keys() and all(torch.equal(after[k], kept[k]) for k in kept)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kept"], summary["rolled_back"], summary["documents"]) == (1, 1, 5)
    assert summary["anchor_loss"] == first["anchor_after"]  # the anchor reference is the kept model's


def test_the_total_drift_over_many_updates_is_bounded_too(base, tmp_path, capsys):
    """Each update may cost the anchor up to --max_anchor_regression; --max_total_regression bounds their sum."""
    feed = tmp_path / "feed.jsonl"
    _append(feed, [{"text": "zq#x@ " * 40}])
    out = tmp_path / "run"
    assert main(_args(base, feed, out, "--max_updates", "1", "--lr", "0.05", "--steps_per_update", "4",
                      "--max_anchor_regression", "100", "--max_total_regression", "0.02")) == 0
    row = _metrics(out)[-1]
    assert not row["kept"] and row["anchor_drift"] > 0.02 and row["anchor_regression"] < 100


def test_documents_appended_while_running_are_consumed_exactly_once_across_a_kill(base, tmp_path):
    """A real process watches a JSONL file while the test appends to it; it is killed (SIGKILL: no clean-up) after a
    few updates; more lines arrive; a second process resumes: every line was trained on exactly once, in order."""
    feed = tmp_path / "feed.jsonl"
    _append(feed, [{"text": _doc(i)} for i in range(3)])
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "plinth", *_args(base, feed, out, "--max_docs", "2", "--replay_size", "8")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    n, deadline = 3, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if n < 11:
                _append(feed, [{"text": _doc(n)}])
                n += 1
            rows = _metrics(out) if (out / "metrics.jsonl").is_file() else []
            if sum(1 for r in rows if "docs" in r) >= 3 and n >= 8:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    _append(feed, [{"text": _doc(i)} for i in range(n, 14)])
    done = subprocess.run([*cmd, "--idle_exit", "0.5"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    consumed = [d for r in _metrics(out) for d in r.get("docs", [])]
    assert consumed == [f"feed.jsonl:{i}" for i in range(1, 15)]  # none lost, none twice, in order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == 14 and summary["cursor"]["line"] == 14 and "idle_exit" in summary["status"]


def test_a_watched_folder_takes_each_dropped_file_once_and_skips_what_it_cannot_use(base, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"d{i}.txt").write_text(_doc(i))
    (inbox / ".hidden.txt").write_text("being written")
    (inbox / "x.part").write_text("being written")
    (inbox / "data.bin").write_bytes(b"\x00\x01")
    anchor = tmp_path / "anchor.txt"
    anchor.write_text(" ".join(_doc(i) for i in range(20, 26)))
    out = tmp_path / "run"
    args = _args(base, inbox, out, "--anchor", str(anchor), "--max_docs", "8", "--idle_exit", "0.2")
    assert main(args) == 0
    rows = _metrics(out)
    assert sorted(d for r in rows for d in r.get("docs", [])) == ["d0.txt", "d1.txt", "d2.txt"]
    assert rows[0]["skipped_docs"] == {"not a .txt/.md file": 1}
    (inbox / "d3.txt").write_text(_doc(3))
    assert main(args) == 0  # resumed: only the new file
    assert [r["docs"] for r in _metrics(out) if r.get("docs")][-1] == ["d3.txt"]
    import plinth

    lm = plinth.load(out, device="cpu")  # each checkpoint is a model folder
    assert isinstance(lm.generate("the", max_new_tokens=3, temperature=0), str)


def test_bad_input_is_one_line_and_writes_nothing(base, tmp_path, capsys):
    import plinth
    from plinth.artifacts import TOKENIZER, write_manifest
    from plinth.models.io import save_model

    folder = tmp_path / "plain"  # a model folder: no original data, so no default anchor
    folder.mkdir()
    lm = plinth.load(base, device="cpu")
    save_model(lm.model, folder)
    lm.tokenizer.save(folder / TOKENIZER)
    write_manifest(folder)
    feed = tmp_path / "feed.jsonl"
    feed.write_text("")
    out = tmp_path / "r"
    for argv, needle in [
        (_args(base, tmp_path / "nowhere.jsonl", out), "not a folder or an existing .jsonl file"),
        (_args(folder, feed, out), "no anchor set"),
        (_args(base, feed, out, "--anchor", str(tmp_path / "none.txt")), "--anchor"),
        (_args(base, feed, out, "--max_anchor_regression", "-1"), "'max_anchor_regression' must be >= 0"),
        (_args(base, feed, out, "--replay_ratio", "1"), "'replay_ratio' must be < 1"),
        (["adapt", "online", str(base)], "give --watch DIR"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    # bad rows are counted and skipped; a file cut shorter than what was consumed is refused on resume
    _append(feed, [{"text": _doc(1)}, {"nope": 1}, {"messages": [{"role": "user", "content": "x"}]}])
    with open(feed, "a") as f:
        f.write("{not json\n")
    assert main(_args(base, feed, out, "--max_updates", "1", "--steps_per_update", "10")) == 0
    row = _metrics(out)[-1]
    assert row["pending_rows"] == 0
    assert row["docs"] == ["feed.jsonl:1"]
    assert row["skipped_docs"] == {"no messages, prompt or instruction field": 1, "no assistant turn": 1,
                                   "not valid JSON": 1}
    feed.write_text("")
    assert main(_args(base, feed, out, "--max_updates", "2")) == 2
    assert "shorter" in capsys.readouterr().err


def test_conversation_rows_train_on_the_assistant_tokens_only():
    from plinth.training.lm import IGNORE_INDEX
    from plinth.training.online import Doc, collate, doc_rows
    from tests.lm_builders import bigram_lm

    lm = bigram_lm({})
    rows = doc_rows(Doc("a", {"prompt": "hi", "response": "yo"}), lm, 64)
    x, y = collate(rows, 0)
    targets = [t for t in y[0].tolist() if t != IGNORE_INDEX]
    assert lm.tokenizer.decode(targets) == "yo<|im_end|>"
    long = doc_rows(Doc("b", {"text": "abcdefghij" * 10}), lm, 16)  # 101 tokens with the end-of-text token
    assert [len(r) for r in long] == [17] * 6 + [5] and all(a[-1] == b[0] for a, b in zip(long, long[1:]))
