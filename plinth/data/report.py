"""The data report: data_report.json (complete, machine-readable; it later feeds a model card's training-data
section), summary.md for people and report.png (matplotlib) with the funnel, the per-rule drops, the language mix
and the final token mix.

Everything here is a pure function of the stage stats, so a resumed run writes the same bytes. `REPORT_VERSION`
changes whenever a field changes meaning or moves.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from plinth.common import atomic_write_bytes, atomic_write_text
from plinth.config import DataPipelineConfig
from plinth.data.web import SKIP_REASONS, ReadStats

__all__ = ["REPORT_VERSION", "build_report", "write_report", "render_summary", "render_chart"]

REPORT_VERSION = 1


def _merge_filters(extract: list[dict], merge: Callable[[dict, dict, int], dict], k: int) -> tuple[dict, dict]:
    rules: dict[str, dict[str, dict]] = {}
    langs: dict[str, Counter] = {}
    for st in extract:
        for src, per_rule in st["filters"]["rules"].items():
            acc = rules.setdefault(src, {})
            for name, d in per_rule.items():
                acc[name] = merge(acc[name], d, k) if name in acc else d
        for src, c in st["filters"]["languages"].items():
            langs.setdefault(src, Counter()).update(c)
    return rules, {s: dict(sorted(c.items())) for s, c in sorted(langs.items())}


def build_report(cfg: DataPipelineConfig, fingerprint: dict, extract: list[dict], dedup: dict, final: list[dict],
                 mix: dict, merge: Callable[[dict, dict, int], dict]) -> dict:
    """Assemble the report from the stats of each stage (inputs in run order) and mix.json."""
    sources = sorted({st["source"] for st in extract})
    read = {s: ReadStats() for s in sources}
    pii: dict[str, Counter] = {s: Counter() for s in sources}
    for st in extract:
        read[st["source"]] += ReadStats.from_dict(st["read"])
        pii[st["source"]].update(st["pii"].get(st["source"], {}))
    rules, langs_seen = _merge_filters(extract, merge, cfg.filters.examples_per_rule)
    out: dict[str, Counter] = {s: Counter() for s in sources}
    langs_kept: dict[str, Counter] = {s: Counter() for s in sources}
    for st in final:
        out[st["source"]].update({k: st[k] for k in ("documents", "text_bytes", "tokens")})
        langs_kept[st["source"]].update(st["languages"])
    per_source = {}
    for s in sources:
        r = read[s].to_dict()
        after_filters = sum(st["documents_out"] for st in extract if st["source"] == s)
        d = dedup["per_source"].get(s, {})
        per_source[s] = {
            "files": r["files"], "archive_bytes": r["bytes_in"], "records": r["records"],
            "payload_bytes": r["payload_bytes"], "skipped": r["skipped"], "skipped_bytes": r["skipped_bytes"],
            "encodings": r["encodings"],
            "funnel": {"documents_extracted": r["documents"], "text_bytes_extracted": r["text_bytes"],
                       "after_filters": after_filters, "exact_duplicates_removed": d.get("exact_removed", 0),
                       "near_duplicates_removed": d.get("near_removed", 0), "kept": out[s]["documents"],
                       "kept_text_bytes": out[s]["text_bytes"], "kept_tokens": out[s]["tokens"]},
            "filters": rules.get(s, {}),
            "pii": {k: pii[s].get(k, 0) for k in ("docs_in", "docs_changed", "email", "ip")},
            "languages_before_filter": langs_seen.get(s, {}),
            "languages_kept": dict(sorted(langs_kept[s].items())),
        }
    mix = {k: v for k, v in mix.items() if k != "fingerprint"}
    return {"report_version": REPORT_VERSION, "config": fingerprint | {"mix": mix_config(mix)},
            "inputs": [{"key": st["key"], "source": st["source"], "path": st["path"]} for st in extract],
            "skip_reasons": list(SKIP_REASONS), "sources": per_source,
            "dedup": {k: v for k, v in dedup.items() if k != "per_source"},
            "web_output": {"documents": sum(o["documents"] for o in out.values()),
                           "text_bytes": sum(o["text_bytes"] for o in out.values()),
                           "tokens": sum(o["tokens"] for o in out.values())},
            "tokenizer": mix["tokenizer"], "mix": mix, "shards": mix["shards"]}


def mix_config(mix: dict) -> dict:
    """The mix settings as planned (weights, inputs, repeats), from mix.json."""
    return {"seed": mix["seed"], "total_tokens_target": mix["total_tokens_target"],
            "natural_proportions": mix["natural_proportions"],
            "sources": {n: {k: s[k] for k in ("weight", "inputs", "field", "max_repeats")}
                        for n, s in mix["sources"].items()}}


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:g}"


def _rule_order(report: dict, source: dict) -> list[str]:
    """The rules of a source in the order they ran (the JSON itself is key-sorted)."""
    return [n for n in report["config"]["filters"]["order"] if n in source["filters"]]


def render_summary(report: dict) -> str:
    """A short Markdown summary of the report."""
    lines = ["# Data report", ""]
    for s, d in report["sources"].items():
        f = d["funnel"]
        lines += [f"## Source `{s}`", "",
                  f"{d['files']} archives, {_fmt(d['archive_bytes'])}B on disk, {_fmt(d['payload_bytes'])}B of "
                  f"payloads; {f['documents_extracted']} documents extracted -> {f['after_filters']} after filters -> "
                  f"{f['kept']} after dedup ({f['exact_duplicates_removed']} exact, {f['near_duplicates_removed']} "
                  f"near duplicates removed); {_fmt(f['kept_tokens'])} tokens.", "",
                  "Skipped records: " + (", ".join(f"{k} {v}" for k, v in d["skipped"].items() if v) or "none") + ".",
                  "", "| rule | docs in | kept | dropped | MB in | MB dropped | top reasons |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name in _rule_order(report, d):
            r = d["filters"][name]
            top = ", ".join(f"{k} {v}" for k, v in Counter(r["reasons"]).most_common(3))
            lines.append(f"| {name} | {r['docs_in']} | {r['kept']} | {r['dropped']} | {r['bytes_in'] / 1e6:.2f} | "
                         f"{r['dropped_bytes'] / 1e6:.2f} | {top} |")
        p = d["pii"]
        lines += ["", f"PII: {p['email']} e-mail and {p['ip']} IP addresses replaced in {p['docs_changed']} documents.",
                  "", "Languages (documents reaching the language rule): " +
                  ", ".join(f"{k} {v}" for k, v in Counter(d["languages_before_filter"]).most_common(8)) + ".", ""]
    dd = report["dedup"]
    lines += ["## Dedup", "", f"{dd['documents']} documents: {dd['exact']['removed']} exact duplicates in "
              f"{dd['exact']['clusters']} clusters, {dd['near']['removed']} near duplicates in "
              f"{dd['near']['clusters']} "
              f"clusters; {dd['near'].get('split_components', 0)} LSH components split because members were not all "
              f"similar enough to one kept document.", ""]
    mix = report["mix"]
    lines += ["## Mix (tokens, end-of-document tokens included)", "",
              "| source | weight | target share | share written | train tokens | val tokens | train docs | val docs "
              "| max uses of a doc |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, m in mix["sources"].items():
        lines.append(f"| {s} | {m['weight']:g} | {m['target_share']:.3f} | {m['share_written']:.3f} | "
                     f"{m['train_tokens']} | {m['val_tokens']} | {m['train_documents']} | {m['val_documents']} | "
                     f"{m['max_times_a_document_is_used']} |")
    sh = report["shards"]
    lines += ["", f"Shards: train {sh['train']['tokens']} tokens in {sh['train']['files']} file(s), val "
              f"{sh['val']['tokens']} tokens ({sh['train']['dtype']}); tokenizer {report['tokenizer']['path']} "
              f"(vocabulary {report['tokenizer']['vocab_size']}, sha256 {report['tokenizer']['sha256'][:12]}).", ""]
    for s, m in mix["sources"].items():
        for c in m["reading"].get("collections", []):
            lic = "; ".join(f"{b['name']}: {b['source']}, {b['license']}" for b in c["builtin"])
            skipped = ", ".join(f"{k} {v}" for k, v in c["skipped"].items() if v) or "none skipped"
            lines.append(f"- `{s}` reads {', '.join(c['inputs'])}: {c['documents']} documents from {c['files_read']} "
                         f"file(s), {skipped}" + (f" ({lic})" if lic else "") + ".")
    lines += ["", "![report](report.png)", ""]
    return "\n".join(lines)


def render_chart(report: dict) -> bytes:
    """PNG bytes of four panels: funnel per web source, drops per rule, language mix, token mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for i, (s, d) in enumerate(report["sources"].items()):
        f = d["funnel"]
        steps = ["documents_extracted", "after_filters", "kept"]
        ax.bar([x + i * 0.3 for x in range(3)], [f[k] for k in steps], width=0.3, label=s)
        ax.set_xticks(range(3), ["extracted", "after filters", "after dedup"])
    ax.set_title("Web documents per stage")
    if report["sources"]:
        ax.legend()
    ax = axes[0][1]
    drops: Counter = Counter()
    for d in report["sources"].values():
        for name in _rule_order(report, d):
            drops[name] += d["filters"][name]["dropped"]
    drops["exact dup"] = report["dedup"]["exact"]["removed"]
    drops["near dup"] = report["dedup"]["near"]["removed"]
    ax.barh(list(drops), list(drops.values()), color="tab:red")
    ax.invert_yaxis()
    ax.set_title("Documents dropped per rule")
    ax = axes[1][0]
    langs: Counter = Counter()
    for d in report["sources"].values():
        langs.update(d["languages_before_filter"])
    top = langs.most_common(10)
    ax.bar([k for k, _ in top], [v for _, v in top], color="tab:green")
    ax.set_yscale("log")
    ax.set_title("Language mix before the language rule (documents)")
    ax = axes[1][1]
    mix = report["mix"]["sources"]
    ax.pie([max(1, m["train_tokens"] + m["val_tokens"]) for m in mix.values()],
           labels=[f"{s}\n{m['share_written']:.1%} (target {m['target_share']:.0%})" for s, m in mix.items()])
    ax.set_title("Final mix in tokens")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png", metadata={"Software": None})  # no version or date: same bytes on rerun
    plt.close(fig)
    return buf.getvalue()


def write_report(report: dict, out_dir: Path, chart: bool = True) -> None:
    """Write data_report.json, summary.md and (optionally) report.png into out_dir, each atomically."""
    atomic_write_text(out_dir / "data_report.json",
                      json.dumps(report, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
    atomic_write_text(out_dir / "summary.md", render_summary(report))
    if chart:
        atomic_write_bytes(out_dir / "report.png", render_chart(report))
