"""Helpers for the web-data tests: small WARC files written with warcio's writer, a small HTML page, a run config,
and output snapshots for byte-for-byte comparisons."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

OUTPUTS = ("docs", "shards", "mix.json", "data_report.json", "summary.md", "report.png", "work/dedup/clusters.jsonl")

ARTICLE = (
    "The Congress has before it many questions of great importance to the welfare of the people. "
    "We must consider with care the condition of our finances and the needs of our defense. "
    "It is the duty of the government to provide for the common good and to protect the rights of every citizen. "
    "I recommend that the Congress give early attention to the measures that I shall lay before it. "
    "The prosperity of the nation depends upon the wisdom and the industry of its people. "
    "Let us therefore work together with confidence in the future of our country and with faith in each other."
)


def page(body_paragraphs: list[str], title: str = "A page", charset: str | None = "utf-8",
         boilerplate: bool = True) -> str:
    """A small HTML page with navigation and footer around the given paragraphs."""
    meta = f'<meta charset="{charset}">' if charset else ""
    nav = ('<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>'
           '<li><a href="/about">About us</a></li></ul></nav>') if boilerplate else ""
    foot = "<footer><p>Copyright 2024 Example Media. Privacy Policy | Terms of Use</p></footer>" if boilerplate else ""
    paras = "".join(f"<p>{p}</p>" for p in body_paragraphs)
    return (f"<!DOCTYPE html><html><head>{meta}<title>{title}</title></head><body>{nav}"
            f"<article><h1>{title}</h1>{paras}</article>{foot}</body></html>")


def write_warc(path: Path, records: list[dict], gz: bool = True) -> Path:
    """records: dicts with url, body (bytes), and optional content_type, status, date, truncated, rec_type."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gz)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "plinth tests"}))
        for i, r in enumerate(records):
            rec_type = r.get("rec_type", "response")
            extra = {"WARC-Date": r.get("date", f"2024-01-{i % 28 + 1:02d}T00:00:00Z")}
            if r.get("truncated"):
                extra["WARC-Truncated"] = "length"
            if rec_type == "conversion":
                rec = w.create_warc_record(r["url"], "conversion", payload=io.BytesIO(r["body"]),
                                           warc_content_type="text/plain", warc_headers_dict=extra)
            else:
                headers = [("Content-Type", r.get("content_type", "text/html; charset=utf-8"))]
                http = StatusAndHeaders(r.get("status", "200 OK"), headers, protocol="HTTP/1.1")
                rec = w.create_warc_record(r["url"], "response", payload=io.BytesIO(r["body"]), http_headers=http,
                                           warc_headers_dict=extra)
            w.write_record(rec)
    return path


def write_config(folder: Path, crawl: Path, tokenizer: str, out: str = "out", workers: int = 1,
                 books: str = "builtin:sotu", **extra) -> Path:
    """A pipeline YAML: the crawl as source `web`, mixed 0.7/0.3 with `books` (a collection)."""
    cfg = {"inputs": {"web": [str(crawl / "*.warc.gz")]}, "out": str(folder / out), "workers": workers,
           "tokenizer": tokenizer, "progress": False,
           "mix": {"seed": 1, "val_fraction": 0.05, "sources": {"web": {"weight": 0.7, "inputs": ["pipeline"]},
                                                                "books": {"weight": 0.3, "inputs": [books]}}}}
    for k, v in extra.items():
        cfg[k] = v
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def load(path: Path):
    """The DataPipelineConfig a YAML file describes, as the CLI builds it."""
    from plinth.cli.args import parse
    from plinth.config import DataPipelineConfig

    return parse(DataPipelineConfig, ["--config", str(path)], prog="data pipeline")


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file of a run, by relative path."""
    files = {}
    for name in OUTPUTS:
        p = out / name
        for f in sorted(p.rglob("*") if p.is_dir() else [p]):
            if f.is_file():
                files[str(f.relative_to(out))] = f.read_bytes()
    return files
