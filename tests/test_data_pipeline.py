"""The whole data pipeline on a small synthetic crawl: the report, the tagged shards, worker counts, stages run alone,
kill and rerun (byte-identical), CLI errors, and the same stages on datatrove's local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plinth.common import PlinthError
from plinth.data.pipeline import STAGES, run_pipeline
from tests.web_helpers import load, snapshot, write_config

ROOT = Path(__file__).resolve().parents[1]


def test_report_is_complete(reference_run):
    rep = json.loads((reference_run / "data_report.json").read_text(encoding="utf-8"))
    web = rep["sources"]["web"]
    f = web["funnel"]
    assert f["documents_extracted"] == web["filters"]["url_blocklist"]["docs_in"]
    assert f["after_filters"] - f["exact_duplicates_removed"] - f["near_duplicates_removed"] == f["kept"]
    assert f["kept"] == rep["web_output"]["documents"] > 0
    for reason in ("truncated", "non_html", "http_error"):
        assert web["skipped"][reason] > 0
    for rule in ("length", "language", "gopher_repetition", "gopher_quality", "c4_lines"):
        r = web["filters"][rule]
        assert r["docs_in"] == r["kept"] + r["dropped"] and r["examples"]["kept"]
        assert r["bytes_in"] >= r["kept_bytes"] + r["dropped_bytes"] > 0
    assert web["filters"]["language"]["dropped"] > 0 and web["filters"]["language"]["examples"]["dropped"]
    assert set(web["languages_before_filter"]) & {"de", "fr", "ja"}
    assert set(web["languages_kept"]) == {"en"}
    assert web["pii"]["email"] > 0 and web["pii"]["ip"] > 0
    assert rep["dedup"]["exact"]["removed"] > 0 and rep["dedup"]["near"]["removed"] > 0
    mix = rep["mix"]["sources"]
    assert abs(mix["web"]["share_written"] - 0.7) < 0.02 and abs(mix["books"]["share_written"] - 0.3) < 0.02
    assert mix["web"]["train_documents"] + mix["web"]["val_documents"] == f["kept"]  # the limiting source: all of it
    assert rep["shards"]["train"]["tokens"] > 0 and rep["shards"]["val"]["tokens"] > 0
    assert rep["config"]["mix"]["sources"]["web"]["weight"] == 0.7 and rep["tokenizer"]["sha256"]
    assert (reference_run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (reference_run / "summary.md").read_text(encoding="utf-8")
    assert "## Dedup" in summary and "## Mix" in summary and "![report](report.png)" in summary


def test_kept_documents_and_clusters(reference_run, small_crawl):
    truth = {}
    for line in (small_crawl / "truth.jsonl").read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        truth[t["url"]] = t
    docs = [json.loads(line) for p in sorted((reference_run / "docs").glob("*.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines()]
    kinds = {truth[d["url"]]["kind"] for d in docs}
    assert kinds <= {"article", "near_dup", "exact_dup", "pii", "cp1252"}, kinds
    assert {"pii", "cp1252"} <= kinds
    for d in docs:
        assert {"id", "text", "url", "date", "source", "lang", "n_tokens"} <= set(d)
        assert "@" not in d["text"] or "<EMAIL>" in d["text"]
    groups = [truth[d["url"]]["group"] for d in docs if truth[d["url"]]["group"] >= 0]
    assert len(groups) == len(set(groups))            # one document per original article survives
    clusters = [json.loads(line) for line in (reference_run / "work/dedup/clusters.jsonl").read_text().splitlines()]
    files = {d["id"]: d["file"] for p in (reference_run / "work/extract").glob("*.docs.jsonl")
             for d in map(json.loads, p.read_text(encoding="utf-8").splitlines())}
    assert any(len({files[c["kept"]]} | {files[r["id"]] for r in c["removed"]}) > 1 for c in clusters)  # global


def test_shards_are_tagged_by_source(reference_run, web_tokenizer):
    from plinth.data.shards import TokenShards
    from plinth.data.tokenizer import Tokenizer

    tok = Tokenizer.load(web_tokenizer)
    mix = json.loads((reference_run / "mix.json").read_text())
    for split in ("train", "val"):
        shards = TokenShards(reference_run / "shards" / split)
        names, index = shards.document_index()
        assert names == ["books", "web"] and int(index["tokens"].sum()) == shards.total_tokens
        stream = shards.window(0, shards.total_tokens)
        ends = np.cumsum(index["tokens"].astype(np.int64)) - 1
        assert np.all(stream[ends] == tok.eos_id)                    # each document ends with eos
        assert np.count_nonzero(stream == tok.eos_id) == len(index)
        for s, name in enumerate(names):
            assert int(index["tokens"][index["source"] == s].sum()) == mix["sources"][name][f"{split}_tokens"]
    train = TokenShards(reference_run / "shards" / "train")
    _, index = train.document_index()
    first = index["source"][: len(index) // 4]
    assert set(first.tolist()) == {0, 1}                             # interleaved, not concatenated
    # the first web document of the stream decodes to a kept web document
    start = int(np.cumsum(index["tokens"].astype(np.int64))[np.nonzero(index["source"] == 1)[0][0] - 1]) \
        if index["source"][0] != 1 else 0
    n = int(index["tokens"][np.nonzero(index["source"] == 1)[0][0]])
    text = tok.decode(train.window(start, n - 1))
    kept = {json.loads(line)["text"] for p in (reference_run / "docs").glob("*.jsonl")
            for line in p.read_text(encoding="utf-8").splitlines()}
    assert text in kept


def test_two_workers_give_the_same_bytes(tmp_path, reference_run, small_crawl, web_tokenizer, books):
    run_pipeline(load(write_config(tmp_path, small_crawl, web_tokenizer, workers=2, books=books)))
    assert snapshot(tmp_path / "out") == snapshot(reference_run)


def test_stages_run_alone_in_order(tmp_path, reference_run, small_crawl, web_tokenizer, books, capsys):
    """Each stage alone, as its CLI verb (in this process) for the first three and from the Python API
    (`plinth.data_pipeline`) for the last two: the same bytes as the whole pipeline in one call."""
    import plinth
    from plinth.cli.main import main

    path = write_config(tmp_path, small_crawl, web_tokenizer, books=books)
    cfg = load(path)
    with pytest.raises(PlinthError, match="run `plinth data extract` first"):
        run_pipeline(cfg, stages=("dedup",))
    assert main(["data", "dedup", "--config", str(path)]) == 2
    assert "run `plinth data extract` first" in capsys.readouterr().err
    for stage in STAGES[:3]:
        assert main(["data", stage, "--config", str(path)]) == 0
        assert f"{stage} " in capsys.readouterr().out
    for stage in STAGES[3:]:
        assert list(plinth.data_pipeline(cfg, stages=(stage,))) == [stage]
    assert snapshot(tmp_path / "out") == snapshot(reference_run)
    # a new mix over the same run folder: only the mix is redone, in other proportions
    cfg.mix.sources["web"]["weight"] = 0.5
    cfg.mix.sources["books"]["weight"] = 0.5
    before = (tmp_path / "out" / "work" / "final").stat().st_mtime_ns
    run_pipeline(cfg, stages=("mix", "report"))
    mix = json.loads((tmp_path / "out" / "mix.json").read_text())
    assert abs(mix["sources"]["web"]["share_written"] - 0.5) < 0.03
    assert (tmp_path / "out" / "work" / "final").stat().st_mtime_ns == before


def test_changed_config_is_refused(tmp_path, small_crawl, web_tokenizer, books):
    path = write_config(tmp_path, small_crawl, web_tokenizer, books=books)
    run_pipeline(load(path), stages=("extract",))
    cfg = load(path)
    cfg.dedup.threshold = 0.9
    with pytest.raises(PlinthError, match=r"different config \(dedup differ\)"):
        run_pipeline(cfg, stages=("dedup",))


def _markers(out: Path, stage: str) -> int:
    return len(list((out / "work" / stage).glob("*.stats.json")))


@pytest.mark.parametrize("workers,stage", [pytest.param(1, "extract", marks=pytest.mark.slow), (2, "extract"),
                                          (2, "finalize")])
def test_kill_and_rerun_is_byte_identical(tmp_path, reference_run, small_crawl, web_tokenizer, books, workers,
                                          stage):
    """SIGKILL the whole run (main process and workers) in the middle of a stage, rerun the same command: the outputs
    are byte-identical to a run that was never stopped, and no temporary file is left."""
    cfg_path = write_config(tmp_path, small_crawl, web_tokenizer, workers=workers, books=books)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "plinth", "data", "pipeline", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    final = "extract" if stage == "extract" else "final"
    deadline = time.time() + 240
    while _markers(out, final) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)               # the group is this test's own child and its workers
    proc.wait()
    assert 1 <= _markers(out, final) < 6, f"the kill came too late ({_markers(out, final)} of 6 inputs finished)"
    assert not (out / "data_report.json").exists()
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(out) == snapshot(reference_run)
    assert not [p for p in out.rglob("*.tmp")], "a temporary file was left behind"


def test_cli_errors_are_one_line(tmp_path, small_crawl, web_tokenizer):
    def plinth(*args):
        return subprocess.run([sys.executable, "-m", "plinth", *args], cwd=tmp_path, capture_output=True, text=True)

    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {web: [x.warc.gz]}\nfilters: {lenght: {}}\n", encoding="utf-8")
    r = plinth("data", "pipeline", "--config", str(bad))
    assert r.returncode == 2 and r.stderr.strip() == (
        f"plinth: error: config {bad}: unknown field 'filters.lenght' (did you mean 'length'?)")
    r = plinth("data", "dedup", "--inputs.web", str(small_crawl / "*.warc.gz"), "--dedup.bands", "40",
               "--dedup.rows", "8")
    assert r.returncode == 2 and r.stderr.strip() == (
        "plinth: error: plinth data dedup: dedup.bands x rows (40 x 8) must be <= num_perm (128)")
    r = plinth("data", "extract", "--inputs.web", str(tmp_path / "nothing*.warc.gz"))
    assert r.returncode == 2 and "matches no .warc/.wet/.arc file" in r.stderr and "Traceback" not in r.stderr
    r = plinth("data", "pipeline", "--inputs.web", str(small_crawl / "*.warc.gz"), "--tokenizer",
               str(tmp_path / "none.json"), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 2 and "no tokenizer at" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()                                       # checked before any work
    r = plinth("data", "mix", "--out", str(tmp_path / "m"), "--tokenizer", web_tokenizer)
    assert r.returncode == 2 and "nothing to mix" in r.stderr
    assert "--dedup.threshold" in plinth("data", "pipeline", "--help").stdout


def test_mix_of_collections_upsampling_and_errors(tmp_path, web_tokenizer):
    """No web inputs at all: three local collections mixed by weight, one upsampled; bad totals are refused."""
    def collection(name: str, n: int, words: int) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": " ".join(f"{name}{i} word{j}" for j in range(words))}) + "\n"
                                for i in range(n)), encoding="utf-8")
        return str(path)

    from plinth.config import DataPipelineConfig

    cfg = DataPipelineConfig(out=str(tmp_path / "out"), tokenizer=web_tokenizer, progress=False)
    cfg.mix.sources = {"web": {"weight": 0.6, "inputs": [collection("web", 300, 40)]},
                       "books": {"weight": 0.3, "inputs": [collection("books", 30, 300)]},
                       "ref": {"weight": 0.1, "inputs": [collection("ref", 10, 50)], "max_repeats": 4}}
    run_pipeline(cfg, stages=("mix",))
    mix = json.loads((tmp_path / "out" / "mix.json").read_text())
    for name, w in (("web", 0.6), ("books", 0.3), ("ref", 0.1)):
        assert abs(mix["sources"][name]["share_written"] - w) < 0.02, mix["sources"][name]
    assert mix["sources"]["ref"]["max_times_a_document_is_used"] > 1            # upsampled
    assert mix["sources"]["web"]["max_times_a_document_is_used"] == 1
    first = (tmp_path / "out" / "shards" / "train" / "shard_00000.bin").read_bytes()
    cfg.mix.seed = 5
    run_pipeline(cfg, stages=("mix",))
    assert (tmp_path / "out" / "shards" / "train" / "shard_00000.bin").read_bytes() != first   # seeded
    cfg.mix.total_tokens = 10**9
    with pytest.raises(PlinthError, match="mix.total_tokens: source 'books' has"):
        run_pipeline(cfg, stages=("mix",))
    cfg.mix.total_tokens = 0
    cfg.mix.sources["ref"] = {"weight": 0.1, "inputs": ["pipeline"]}
    with pytest.raises(PlinthError, match="'pipeline' names no web source"):
        run_pipeline(cfg, stages=("mix",))


def test_datatrove_local_executor_gives_the_same_bytes(tmp_path, reference_run, small_crawl, web_tokenizer, books):
    pytest.importorskip("datatrove")
    from plinth.data.engine import make_executors

    cfg = load(write_config(tmp_path, small_crawl, web_tokenizer, workers=2, books=books, engine="datatrove"))
    executors = make_executors(cfg, "local", tasks=3, workers=2)
    assert [type(e).__name__ for e in executors] == ["LocalPipelineExecutor"] * 5
    assert [e.world_size for e in executors] == [3, 1, 3, 1, 1]
    run_pipeline(cfg)
    assert snapshot(tmp_path / "out") == snapshot(reference_run)
    completions = sorted(p.name for p in (tmp_path / "out/work/datatrove/extract/completions").iterdir())
    assert completions == [f"{i:05d}" for i in range(6)]              # one rank per input by default
    run_pipeline(cfg)   # a rerun skips completed ranks (datatrove) and finished inputs (ours): nothing changes
    assert snapshot(tmp_path / "out") == snapshot(reference_run)


def test_slurm_and_ray_executors_are_built_the_same_way(tmp_path, small_crawl):
    """Only constructed (no cluster here): one executor per stage, per-input stages with one task per input, each
    depending on the previous one. Running them needs sbatch or a Ray cluster."""
    pytest.importorskip("datatrove")
    from plinth.config import DataPipelineConfig
    from plinth.data.engine import make_executors

    cfg = DataPipelineConfig(inputs={"web": [str(small_crawl / "*.warc.gz")]}, out=str(tmp_path / "out"))
    for kind, name, kw in (("slurm", "SlurmPipelineExecutor", {"time": "01:00:00", "partition": "cpu"}),
                           ("ray", "RayPipelineExecutor", {})):
        try:
            exs = make_executors(cfg, kind, **kw)
        except ImportError as e:  # Ray itself is not installed: the Ray executor cannot even be built
            assert kind == "ray", e
            continue
        assert [type(e).__name__ for e in exs] == [name] * 5
        assert [e.world_size for e in exs] == [6, 1, 6, 1, 1]
        assert all(b.depends is a for a, b in zip(exs, exs[1:]))
    with pytest.raises(PlinthError, match="unknown executor kind"):
        make_executors(cfg, "dask")
