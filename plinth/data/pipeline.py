"""The broad-data pipeline: web archives -> documents -> filters -> PII -> signatures (per input, N worker processes);
dedup across the whole corpus; finalize (keep, tokenize); mix with local collections into tagged token shards; report.

Each stage is a function over a run folder and also a verb (`plinth data extract|dedup|finalize|mix|report`);
`plinth data pipeline` runs them in order. Per-input work is independent, runs on N local worker processes (or on
datatrove's executors, `engine.py`), and is resumable: every output is written under a temporary name and renamed,
and a stage's stats file, its completion marker, is written last, so a killed run redoes only unfinished inputs and
ends byte-identical to a run that was never stopped. Timings go to separate `.timing.json` files and `run_log.json`,
never into the outputs.

Run folder:
    config.yaml                               the resolved config
    work/fingerprint.json                     what the extract/dedup/finalize outputs depend on
    work/extract/<key>.docs.jsonl|ids.txt|sig.bin|keys.bin|len.bin|stats.json   (per input archive)
    work/dedup/<key>.kind.bin, clusters.jsonl, stats.json
    work/final/<key>.tokens.bin|ntok.bin|stats.json
    work/mix/                                 token caches of the local collections
    docs/<key>.jsonl                          kept web documents with metadata and n_tokens
    shards/{train,val}/                       token shards with per-document source tags (`plinth pretrain` input)
    mix.json, data_report.json, summary.md, report.png, run_log.json
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plinth.common import PlinthError, Progress, atomic_write_bytes, atomic_write_text, remove_stale_temp
from plinth.config import DataPipelineConfig, to_dict, validate
from plinth.data.dedup import EXACT, NEAR, MinHasher, band_hash, deduplicate, exact_key, normalize_text
from plinth.data.filters import FilterChain, RuleStats
from plinth.data.pii import PiiScrubber
from plinth.data.web import ReadStats, archive_format, iter_documents

__all__ = ["STAGES", "InputTask", "plan_inputs", "check_fingerprint", "extract_input", "run_extract", "run_dedup",
           "finalize_input", "run_finalize", "run_mix", "run_report", "run_pipeline", "stage_dirs"]

STAGES = ("extract", "dedup", "finalize", "mix", "report")
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet", ".warc.wet.gz", ".arc", ".arc.gz")
DOC_FIELDS = ("id", "text", "url", "date", "source", "file", "encoding", "lang", "lang_score")
_NOT_FINGERPRINTED = ("workers", "out", "engine", "progress", "report_chart", "mix", "tokenizer")


@dataclass(frozen=True)
class InputTask:
    """One input archive: `key` orders it in the run ("00003-crawl-00003.warc.gz"), `size` is its bytes on disk."""

    key: str
    source: str
    path: str
    size: int


def stage_dirs(cfg: DataPipelineConfig) -> dict[str, Path]:
    """The folders of a run: out, work, extract, dedup, final, mix (token caches), docs, shards."""
    out = Path(cfg.out)
    work = out / "work"
    return {"out": out, "work": work, "extract": work / "extract", "dedup": work / "dedup", "final": work / "final",
            "mix": work / "mix", "docs": out / "docs", "shards": out / "shards"}


# ----------------------------------------------------------------------------------------------------------------------
# Files: private temporary names, atomic small files


def _tmp(path: Path) -> Path:
    """A temporary name beside `path`, private to this process; `remove_stale_temp` recognises it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def _staged(paths: dict[str, Path]) -> Iterator[dict]:
    """Open each path's temporary file for writing; on success fsync and rename them all into place."""
    files = {k: open(_tmp(p), "wb") for k, p in paths.items()}
    try:
        yield files
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        for k, f in files.items():
            f.close()
            _tmp(paths[k]).unlink(missing_ok=True)
        raise
    for f in files.values():
        f.close()
    for p in paths.values():
        os.replace(_tmp(p), p)


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=1) + "\n"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PlinthError(f"{path}: unreadable ({e}); delete it and rerun the stage that writes it") from None


def _clean_stale(folder: Path, key: str) -> None:
    """Remove temporary files a killed attempt at this input left behind (only this key's: others may be running)."""
    for tmp in folder.glob(f".{key}.*.tmp"):
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs and the run folder


def _expand(source: str, spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_file():
        archive_format(p)  # PlinthError naming the file if it is not an archive
        return [p]
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file() and q.name.lower().endswith(ARCHIVE_SUFFIXES))
    elif glob.has_magic(spec):
        found = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True) if Path(m).is_file())
        found = [q for q in found if q.name.lower().endswith(ARCHIVE_SUFFIXES)]
    else:
        raise PlinthError(f"inputs.{source}: {spec} not found (give .warc/.wet/.arc files, folders or globs)")
    if not found:
        raise PlinthError(f"inputs.{source}: {spec!r} matches no .warc/.wet/.arc file (optionally .gz)")
    return found


def plan_inputs(cfg: DataPipelineConfig) -> list[InputTask]:
    """Every input archive: sources in name order, files in path order; this order fixes document order."""
    tasks: list[InputTask] = []
    seen: set[Path] = set()
    for source, specs in cfg.input_specs().items():
        for spec in specs:
            for path in _expand(source, spec):
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)
                tasks.append(InputTask(f"{len(tasks):05d}-{stem}", source, str(path.resolve()),
                                       path.stat().st_size))
    return tasks


def fingerprint(cfg: DataPipelineConfig) -> dict:
    """The config the extract/dedup/finalize outputs depend on (not workers, folders, mix or tokenizer, which are
    checked by the stages that use them), with input paths resolved."""
    d = to_dict(cfg)
    for key in _NOT_FINGERPRINTED:
        d.pop(key)
    d = json.loads(json.dumps(d))  # n-gram keys become strings, as they are stored
    d["inputs"] = [[t.source, t.path] for t in plan_inputs(cfg)]
    return d


def check_fingerprint(cfg: DataPipelineConfig) -> Path:
    """Validate `cfg`, create the run folders, and check that an existing run was made with the same config."""
    validate(cfg, "data pipeline")
    dirs = stage_dirs(cfg)
    for name in ("extract", "dedup", "final", "mix"):
        dirs[name].mkdir(parents=True, exist_ok=True)
    fp_path = dirs["work"] / "fingerprint.json"
    fp = fingerprint(cfg)
    if fp_path.exists():
        old = _read_json(fp_path)
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise PlinthError(f"{cfg.out}: holds a run made with a different config ({', '.join(diff)} differ); "
                              "choose a new --out, or delete that folder to start over")
    else:
        atomic_write_text(fp_path, _dump(fp))
    return dirs["work"]


# ----------------------------------------------------------------------------------------------------------------------
# Worker processes and progress


_STATE: dict = {}
_PRELOAD = ["plinth.data.pipeline", "plinth.data.tokenizer", "py3langid.langid", "fastwarc.warc",
            "resiliparse.extract.html2text"]


class _Meter:
    """Bytes of work done, summed across worker processes in a shared counter (flushed at most twice a second)."""

    def __init__(self, shared=None, local: Callable[[int], None] | None = None):
        self.shared, self.local = shared, local
        self.pending, self.last = 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.pending += n
        now = time.perf_counter()
        if now - self.last >= 0.5:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.pending and self.shared is not None:
            with self.shared.get_lock():
                self.shared.value += self.pending
        elif self.pending and self.local is not None:
            self.local(self.pending)
        self.pending = 0


def _init_worker(cfg: DataPipelineConfig, shared, quiet_tokenizer: bool) -> None:
    if quiet_tokenizer:  # N worker processes already fill the cores; the Rust batch encoder should not add threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE.clear()
    _STATE.update(cfg=cfg, meter=_Meter(shared))


def _call(name: str, task: InputTask) -> dict:
    fn = {"extract": extract_input, "finalize": finalize_input}[name]
    try:
        return fn(task, _STATE["cfg"], _STATE["meter"])
    finally:
        _STATE["meter"].flush()


def _extract_worker(task: InputTask) -> dict:
    return _call("extract", task)


def _finalize_worker(task: InputTask) -> dict:
    return _call("finalize", task)


def _map(stage: str, tasks: list[InputTask], cfg: DataPipelineConfig, total: int, workers: int) -> list[dict]:
    """Run a per-input stage over `tasks` on `workers` processes with a progress bar over `total` bytes; results
    in task order (outputs never depend on scheduling)."""
    with Progress(stage, total=total, unit="B", enabled=cfg.progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            meter = _Meter(local=lambda n: bar.update(advance=n))
            out = []
            for i, task in enumerate(tasks):
                fn = extract_input if stage == "extract" else finalize_input
                out.append(fn(task, cfg, meter))
                meter.flush()
                bar.update(info=f"{i + 1}/{len(tasks)} inputs")
            return out
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        if ctx.get_start_method() == "forkserver":
            # Workers fork from a server that has imported these once (missing ones are skipped), instead of each
            # importing them (~1.5 s of CPU per worker); fork from this process itself is avoided (threads).
            ctx.set_forkserver_preload(_PRELOAD)
        shared = ctx.Value("q", 0)
        worker = _extract_worker if stage == "extract" else _finalize_worker
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(cfg, shared, True)) as pool:
            result = pool.map_async(worker, tasks, chunksize=1)
            while not result.ready():
                result.wait(0.5)
                bar.update(completed=shared.value)
            out = result.get()
            bar.update(completed=shared.value)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: extract, filter, scrub, sign (per input)


def _write_doc(files: dict, doc: dict, hasher: MinHasher | None) -> None:
    text = doc["text"]
    rec = {k: doc[k] for k in DOC_FIELDS if k in doc}
    files["docs"].write((json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    files["ids"].write((str(doc["id"]).replace("\n", " ") + "\n").encode("utf-8"))
    norm = normalize_text(text)  # once, for both the exact key and the shingles
    files["keys"].write(exact_key(text, norm))
    files["len"].write(np.int64(len(text)).tobytes())
    if hasher is not None:
        files["sig"].write(hasher.signature(text, norm).astype("<u4").tobytes())


def extract_input(task: InputTask, cfg: DataPipelineConfig, meter: _Meter | None = None) -> dict:
    """Stage 1 for one archive: read, extract, filter, scrub PII and sign its documents into work/extract/<key>.*;
    returns its stats (read back if this input is already done)."""
    ex = stage_dirs(cfg)["extract"]
    marker = ex / f"{task.key}.stats.json"
    if marker.exists():
        return _read_json(marker)
    _clean_stale(ex, task.key)
    read = ReadStats()
    chain, pii = FilterChain(cfg.filters), PiiScrubber(cfg.pii)
    hasher = MinHasher.from_config(cfg.dedup) if cfg.dedup.near else None
    cpu, wall = Counter(), Counter()
    done = [0]

    def progress(offset: int) -> None:
        if meter is not None:
            meter.add(offset - done[0])
        done[0] = offset

    paths = {s: ex / f"{task.key}.{s}{ext}" for s, ext in (("docs", ".jsonl"), ("ids", ".txt"), ("sig", ".bin"),
                                                            ("keys", ".bin"), ("len", ".bin"))}
    with _staged(paths) as files:
        docs = iter_documents(task.path, task.source, read, cfg.read.reader, cfg.read.extractor,
                              cfg.read.max_payload_bytes, cfg.read.keep_http_errors, progress)
        clock = [time.process_time(), time.perf_counter()]

        def tick(name: str) -> None:
            c, w = time.process_time(), time.perf_counter()
            cpu[name] += c - clock[0]
            wall[name] += w - clock[1]
            clock[:] = c, w

        for doc in docs:
            tick("read_extract")
            doc = chain.apply(doc)
            tick("filters")
            if doc is None:
                continue
            doc = pii.apply(doc)
            tick("pii")
            _write_doc(files, doc, hasher)
            tick("signatures")
        tick("read_extract")
    if meter is not None:
        meter.add(task.size - done[0])
    stats = {"key": task.key, "source": task.source, "path": task.path, "read": read.to_dict(),
             "filters": chain.to_dict(), "pii": pii.to_dict(), "documents_out": _count_lines(paths["ids"])}
    atomic_write_text(ex / f"{task.key}.timing.json", _dump({"cpu": dict(cpu), "wall": dict(wall)}))
    atomic_write_text(marker, _dump(stats))
    return stats


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run_extract(cfg: DataPipelineConfig, workers: int | None = None) -> list[dict]:
    """Stage 1 over every input (finished inputs are skipped)."""
    check_fingerprint(cfg)
    tasks = plan_inputs(cfg)
    return _map("extract", tasks, cfg, sum(t.size for t in tasks), workers or cfg.workers)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: dedup across every input


def _require(marker: Path, stage: str, what: str) -> dict:
    if not marker.exists():
        raise PlinthError(f"{marker}: missing; run `plinth data {stage}` first ({what})")
    return _read_json(marker)


class _Signatures:
    """Row access to the per-input signature files as one (N, num_perm) array, without loading it."""

    def __init__(self, files: list[Path], counts: list[int], num_perm: int):
        self.maps = [np.memmap(f, dtype="<u4", mode="r", shape=(c, num_perm)) if c else None
                     for f, c in zip(files, counts, strict=True)]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        return np.stack([self.maps[s][i - self.offsets[s]] for s, i in zip(shard, idx, strict=True)])

    def band(self, b: int, rows: int, chunk: int = 1 << 16) -> np.ndarray:
        """(N,) hashes of band b, computed in chunks from the memory-mapped signatures."""
        parts = [band_hash(np.asarray(m[i:i + chunk]), b, rows)
                 for m in self.maps if m is not None for i in range(0, len(m), chunk)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def run_dedup(cfg: DataPipelineConfig) -> dict:
    """Stage 2: exact and near-duplicate removal across every input; writes per-input keep masks and clusters."""
    work = check_fingerprint(cfg)
    dd = work / "dedup"
    if (dd / "stats.json").exists():
        return _read_json(dd / "stats.json")
    t0, c0 = time.perf_counter(), time.process_time()
    tasks = plan_inputs(cfg)
    ex = work / "extract"
    counts = [_require(ex / f"{t.key}.stats.json", "extract", t.path)["documents_out"] for t in tasks]
    keys = np.concatenate([np.fromfile(ex / f"{t.key}.keys.bin", dtype="<u8").reshape(-1, 2) for t in tasks]
                          or [np.zeros((0, 2), dtype="<u8")])
    lengths = np.concatenate([np.fromfile(ex / f"{t.key}.len.bin", dtype="<i8") for t in tasks]
                             or [np.zeros(0, dtype="<i8")])
    sigs = None
    with Progress("dedup", total=cfg.dedup.bands, unit="band", enabled=cfg.progress) as bar:
        band = None
        if cfg.dedup.near:
            sigs = _Signatures([ex / f"{t.key}.sig.bin" for t in tasks], counts, cfg.dedup.num_perm)

            def band(b: int) -> np.ndarray:
                bar.update(completed=b + 1)
                return sigs.band(b, cfg.dedup.rows)

        res = deduplicate(int(sum(counts)), cfg.dedup, keys=keys, band=band, sig_rows=sigs.rows if sigs else None,
                          lengths=lengths)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    per_source: dict[str, Counter] = {}
    for t, a, b in zip(tasks, offsets[:-1], offsets[1:], strict=True):
        kind = res.kind[a:b]
        c = per_source.setdefault(t.source, Counter())
        c["documents"] += int(b - a)
        c["exact_removed"] += int(np.count_nonzero(kind == EXACT))
        c["near_removed"] += int(np.count_nonzero(kind == NEAR))
        atomic_write_bytes(dd / f"{t.key}.kind.bin", kind.astype(np.uint8).tobytes())
    ids = _Ids(tasks, offsets, ex)
    examples = _write_clusters(dd / "clusters.jsonl", res, ids)
    stats = dict(res.stats)
    stats["near"]["split_examples"] = [[ids[i] for i in grp] for grp in stats["near"]["split_examples"]]
    stats.update({"per_source": {s: dict(c) for s, c in sorted(per_source.items())}, "examples": examples,
                  "clusters_total": len(res.clusters())})
    atomic_write_text(dd / "timing.json", _dump({"cpu": {"dedup": time.process_time() - c0},
                                                 "wall": {"dedup": time.perf_counter() - t0}}))
    atomic_write_text(dd / "stats.json", _dump(stats))
    return stats


class _Ids:
    """Document ids by global index, reading one input's ids file at a time (clusters come in kept-index order)."""

    def __init__(self, tasks: list[InputTask], offsets: np.ndarray, ex: Path):
        self.tasks, self.offsets, self.ex = tasks, offsets, ex
        self.key, self.ids = None, []

    def __getitem__(self, i: int) -> str:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        key = self.tasks[s].key
        if key != self.key:
            self.key, self.ids = key, (self.ex / f"{key}.ids.txt").read_text(encoding="utf-8").splitlines()
        return self.ids[i - self.offsets[s]]


def _write_clusters(path: Path, res, ids: _Ids, n_examples: int = 3) -> list[dict]:
    """One JSON line per cluster: kept id and removed ids with kind and similarity. Returns a few examples."""
    examples = []
    with _staged({"c": path}) as files:
        for kept, removed in res.clusters():
            rec = {"kept": ids[kept], "size": 1 + len(removed),
                   "removed": [{"id": ids[r], "kind": "exact" if res.kind[r] == EXACT else "near",
                                "similarity": round(float(res.similarity[r]), 4)} for r in removed]}
            files["c"].write((json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
            if len(examples) < n_examples:
                examples.append(rec)
    return examples


# ----------------------------------------------------------------------------------------------------------------------
# Stage 3: finalize (apply dedup, tokenize; per input)


_BATCH_DOCS = 256


def _tokenizer(cfg: DataPipelineConfig):
    from plinth.data.tokenizer import Tokenizer

    cached = _STATE.get("tokenizer")
    if cached is None or cached[0] != cfg.tokenizer:
        _STATE["tokenizer"] = (cfg.tokenizer, Tokenizer.load(cfg.tokenizer))
    return _STATE["tokenizer"][1]


def finalize_input(task: InputTask, cfg: DataPipelineConfig, meter: _Meter | None = None) -> dict:
    """Stage 3 for one archive: the documents dedup kept go to docs/<key>.jsonl (with n_tokens), their token ids
    to work/final/<key>.tokens.bin (uint32, no separators) and counts to <key>.ntok.bin; returns its stats."""
    dirs = stage_dirs(cfg)
    marker = dirs["final"] / f"{task.key}.stats.json"
    tok = _tokenizer(cfg)
    if marker.exists():
        st = _read_json(marker)
        if st["tokenizer_sha256"] != tok.sha256:
            raise PlinthError(f"{cfg.tokenizer} differs from the tokenizer {cfg.out} was finalized with; choose a "
                              f"new --out, or delete {dirs['final']} and {dirs['docs']} to re-tokenize")
        return st
    _require(dirs["dedup"] / "stats.json", "dedup", "all inputs")
    kind = np.fromfile(dirs["dedup"] / f"{task.key}.kind.bin", dtype=np.uint8)
    dirs["docs"].mkdir(exist_ok=True)
    for folder in (dirs["docs"], dirs["final"]):
        _clean_stale(folder, task.key)
    st = {"key": task.key, "source": task.source, "documents": 0, "text_bytes": 0, "tokens": 0, "languages": {},
          "tokenizer_sha256": tok.sha256}
    langs: Counter = Counter()
    c0, t0 = time.process_time(), time.perf_counter()
    paths = {"docs": dirs["docs"] / f"{task.key}.jsonl", "tokens": dirs["final"] / f"{task.key}.tokens.bin",
             "ntok": dirs["final"] / f"{task.key}.ntok.bin"}
    src_path = dirs["extract"] / f"{task.key}.docs.jsonl"
    with open(src_path, "rb") as src, _staged(paths) as out:
        batch: list[dict] = []
        for k, line in zip(kind, src, strict=True):
            if meter is not None:
                meter.add(len(line))
            if k:
                continue
            batch.append(json.loads(line))
            if len(batch) >= _BATCH_DOCS:
                _write_final(tok, batch, out, st, langs)
        _write_final(tok, batch, out, st, langs)
    st["languages"] = dict(sorted(langs.items()))
    atomic_write_text(dirs["final"] / f"{task.key}.timing.json", _dump({
        "cpu": {"tokenize": time.process_time() - c0}, "wall": {"tokenize": time.perf_counter() - t0}}))
    atomic_write_text(marker, _dump(st))
    return st


def _write_final(tok, batch: list[dict], out: dict, st: dict, langs: Counter) -> None:
    """Encode a batch of documents in one call and write them; empties `batch`."""
    if not batch:
        return
    encoded = tok.encode_batch([d["text"] for d in batch])
    lines = []
    for doc, ids in zip(batch, encoded, strict=True):
        doc["n_tokens"] = len(ids)
        lines.append(json.dumps(doc, ensure_ascii=False, sort_keys=True))
        st["text_bytes"] += len(doc["text"].encode("utf-8"))
        langs[doc.get("lang", "unknown")] += 1
    out["docs"].write(("\n".join(lines) + "\n").encode("utf-8"))
    counts = np.array([len(ids) for ids in encoded], dtype="<u4")
    # chain.from_iterable feeds fromiter from C: half the time of a generator expression
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype="<u4", count=int(counts.sum()))
    out["tokens"].write(flat.tobytes())
    out["ntok"].write(counts.tobytes())
    st["documents"] += len(batch)
    st["tokens"] += int(counts.sum())
    batch.clear()


def run_finalize(cfg: DataPipelineConfig, workers: int | None = None) -> list[dict]:
    """Stage 3 over every input (finished inputs are skipped)."""
    work = check_fingerprint(cfg)
    _tokenizer(cfg)  # a missing or bad tokenizer is reported before any worker starts
    tasks = plan_inputs(cfg)
    for t in tasks:
        _require(work / "extract" / f"{t.key}.stats.json", "extract", t.path)
    total = sum((work / "extract" / f"{t.key}.docs.jsonl").stat().st_size for t in tasks)
    return _map("finalize", tasks, cfg, total, workers or cfg.workers)


# ----------------------------------------------------------------------------------------------------------------------
# Stages 4 and 5: mix, report


def run_mix(cfg: DataPipelineConfig) -> dict:
    """Stage 4: sample the mix sources into shards/{train,val} with per-document source tags; returns mix.json."""
    from plinth.data.mix import mix_to_shards

    work = check_fingerprint(cfg)
    return mix_to_shards(cfg, plan_inputs(cfg), _tokenizer(cfg), work)


def run_report(cfg: DataPipelineConfig) -> dict:
    """Stage 5: data_report.json, summary.md and report.png from the stats of the earlier stages."""
    from plinth.data.report import build_report, write_report

    dirs = stage_dirs(cfg)
    check_fingerprint(cfg)
    tasks = plan_inputs(cfg)
    extract = [_require(dirs["extract"] / f"{t.key}.stats.json", "extract", t.path) for t in tasks]
    dedup = _require(dirs["dedup"] / "stats.json", "dedup", "all inputs")
    final = [_require(dirs["final"] / f"{t.key}.stats.json", "finalize", t.path) for t in tasks]
    mix = _require(dirs["out"] / "mix.json", "mix", "the shards")
    report = build_report(cfg, fingerprint(cfg), extract, dedup, final, mix, RuleStats.merge)
    write_report(report, dirs["out"], chart=cfg.report_chart)
    return report


def _write_resolved_config(cfg: DataPipelineConfig) -> None:
    import yaml

    atomic_write_text(Path(cfg.out) / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_pipeline(cfg: DataPipelineConfig, stages: tuple[str, ...] = STAGES, workers: int | None = None) -> dict:
    """Run the named stages in order (all by default) under the run folder's lock, on `cfg.engine`; returns wall
    seconds per stage (also in run_log.json). Raises PlinthError for bad options, inputs or a run folder made with
    another config."""
    from plinth.artifacts import RunLock

    validate(cfg, "data pipeline")
    for stage in stages:
        if stage not in STAGES:
            raise PlinthError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    if {"finalize", "mix"} & set(stages):
        _tokenizer(cfg)  # a missing or bad tokenizer is reported before any work is done
    if {"extract", "dedup", "finalize"} & set(stages):
        plan_inputs(cfg)  # and so are inputs that do not exist
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    with RunLock(out):
        for folder in stage_dirs(cfg).values():
            remove_stale_temp(folder)  # leftovers of a killed run; safe while we hold the lock
        _write_resolved_config(cfg)
        if cfg.engine == "datatrove":
            from plinth.data.engine import run_with_datatrove

            times = run_with_datatrove(cfg, workers=workers, stages=stages)
        else:
            for stage in stages:
                t0 = time.perf_counter()
                if stage == "extract":
                    run_extract(cfg, workers)
                elif stage == "dedup":
                    run_dedup(cfg)
                elif stage == "finalize":
                    run_finalize(cfg, workers)
                elif stage == "mix":
                    run_mix(cfg)
                else:
                    run_report(cfg)
                times[stage] = round(time.perf_counter() - t0, 3)
        atomic_write_text(out / "run_log.json", _dump({"wall_seconds": times, "workers": workers or cfg.workers,
                                                       "engine": cfg.engine, "stages": list(stages)}))
    return times
