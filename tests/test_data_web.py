"""Reading WARC / WET / ARC files and extracting text: formats, both readers, broken and odd records; PII scrubbing."""

from __future__ import annotations

import gzip

import pytest

pytest.importorskip("warcio")
pytest.importorskip("fastwarc")
pytest.importorskip("resiliparse")

from benchmarks.synthetic_crawl import FOREIGN, write_arc  # noqa: E402
from plinth.common import PlinthError  # noqa: E402
from plinth.config import PiiConfig  # noqa: E402
from plinth.data.pii import PiiScrubber, scrub_text  # noqa: E402
from plinth.data.web import ReadStats, archive_format, decode_html, extract_text, iter_documents  # noqa: E402
from tests.web_helpers import ARTICLE, page, write_warc  # noqa: E402

READERS = ("warcio", "fastwarc")


def _read(path, reader="auto", extractor="resiliparse"):
    st = ReadStats()
    docs = list(iter_documents(path, "web", st, reader=reader, extractor=extractor))
    return docs, st


def _pages(n=3):
    return [{"url": f"https://example.org/a{i}", "body": page([ARTICLE, f"Paragraph number {i} is unique here."],
                                                              title=f"Title {i}").encode()} for i in range(n)]


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("reader", READERS)
def test_reads_warc_and_keeps_metadata(tmp_path, gz, reader):
    path = write_warc(tmp_path / ("a.warc.gz" if gz else "a.warc"), _pages(3), gz=gz)
    offsets = []
    st = ReadStats()
    docs = list(iter_documents(path, "web", st, reader=reader, progress=offsets.append))
    assert [d["url"] for d in docs] == [f"https://example.org/a{i}" for i in range(3)]
    assert docs[0]["date"] == "2024-01-01T00:00:00Z"
    assert all(d["source"] == "web" and d["file"] == path.name and d["id"].startswith("urn:uuid:") for d in docs)
    assert "Congress has before it" in docs[0]["text"]
    assert "About us" not in docs[0]["text"]          # navigation removed
    assert st.records["warcinfo"] == 1 and st.records["response"] == 3 and st.documents == 3
    assert offsets == sorted(offsets) and 0 < offsets[-1] <= path.stat().st_size


def test_both_readers_agree(small_crawl):
    path = sorted(small_crawl.glob("*.warc.gz"))[0]
    a, sa = _read(path, "warcio")
    b, sb = _read(path, "fastwarc")
    assert a == b
    assert sa.to_dict() == sb.to_dict()


@pytest.mark.parametrize("reader", READERS)
def test_warc_truncated_header_counted(tmp_path, reader):
    recs = _pages(3)
    recs[1]["truncated"] = True
    docs, st = _read(write_warc(tmp_path / "t.warc.gz", recs), reader)
    assert len(docs) == 2 and st.skipped["truncated"] == 1


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("reader", READERS)
def test_file_cut_mid_record_counts_truncated(tmp_path, gz, reader):
    path = write_warc(tmp_path / ("c.warc.gz" if gz else "c.warc"), _pages(3), gz=gz)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])            # the last record loses its end
    docs, st = _read(path, reader)
    assert [d["url"] for d in docs] == ["https://example.org/a0", "https://example.org/a1"]
    assert st.skipped["truncated"] == 1


@pytest.mark.parametrize("reader", READERS)
def test_garbage_after_records_is_corrupt_stream(tmp_path, reader):
    path = write_warc(tmp_path / "g.warc.gz", _pages(2))
    path.write_bytes(path.read_bytes() + gzip.compress(b"this is not a WARC record\r\n" * 20))
    docs, st = _read(path, reader)
    assert len(docs) == 2
    assert st.skipped["corrupt_stream"] == 1


@pytest.mark.parametrize("reader", READERS)
def test_non_html_http_errors_empty_and_binary(tmp_path, reader):
    recs = _pages(1) + [
        {"url": "https://x.org/img", "body": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "content_type": "image/jpeg"},
        {"url": "https://x.org/404", "body": page(["Not here."]).encode(), "status": "404 Not Found"},
        {"url": "https://x.org/empty", "body": b""},
        {"url": "https://x.org/bin", "body": bytes(range(256)) * 8, "content_type": "text/html"},
        {"url": "https://x.org/boiler", "body": page([], title="").encode()},
    ]
    docs, st = _read(write_warc(tmp_path / "m.warc.gz", recs), reader)
    assert [d["url"] for d in docs] == ["https://example.org/a0"]
    assert st.skipped["non_html"] == 1 and st.skipped["http_error"] == 1
    assert st.skipped["empty"] == 1 and st.skipped["undecodable"] == 1
    assert st.skipped["no_text"] == 1                    # a page of navigation and footer only


CP1252_TEXT = ("The caf\u00e9 \u2013 it\u2019s \u201cquoted\u201d \u2013 costs \u20ac5 and serves "
               "cr\u00e8me br\u00fbl\u00e9e.")


@pytest.mark.parametrize("declare", ["http", "meta", "none"])
@pytest.mark.parametrize("reader", READERS)
def test_cp1252_declared_and_undeclared(tmp_path, declare, reader):
    html = page([ARTICLE, CP1252_TEXT], charset="windows-1252" if declare == "meta" else None)
    ctype = "text/html; charset=windows-1252" if declare == "http" else "text/html"
    docs, st = _read(write_warc(tmp_path / "w.warc.gz", [{"url": "https://x.fr/", "body": html.encode("cp1252"),
                                                          "content_type": ctype}]), reader)
    assert len(docs) == 1
    assert "caf\u00e9" in docs[0]["text"] and "\u20ac5" in docs[0]["text"] and "\u2019s" in docs[0]["text"]


@pytest.mark.parametrize("declare", ["meta", "none"])
def test_shift_jis_declared_and_undeclared(tmp_path, declare):
    ja = ["".join(FOREIGN["ja"][i:i + 4]) for i in range(0, 8, 2)]
    html = page(ja, title="\u30cb\u30e5\u30fc\u30b9", charset="shift_jis" if declare == "meta" else None,
                boilerplate=False)
    docs, _ = _read(write_warc(tmp_path / "j.warc.gz", [{"url": "https://x.jp/", "body": html.encode("shift_jis"),
                                                         "content_type": "text/html"}]))
    assert len(docs) == 1
    assert FOREIGN["ja"][0] in docs[0]["text"]
    assert docs[0]["encoding"] in ("cp932", "shift_jis")


def test_declared_charset_wrong_falls_back():
    body = page([CP1252_TEXT]).encode("cp1252")           # says utf-8, is cp1252
    text, codec = decode_html(body, "utf-8")
    assert "caf\u00e9" in text and codec != "utf-8"


def test_boilerplate_only_page_gives_little_or_no_text():
    text = extract_text(page([], title="Page not found"))
    assert len(text) < 100 and "About us" not in text


@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_extractors_drop_navigation(extractor):
    if extractor == "trafilatura":
        pytest.importorskip("trafilatura")
    text = extract_text(page([ARTICLE, "A second paragraph with a sentence of its own."]), extractor)
    assert "Congress has before it" in text and "second paragraph" in text
    assert "About us" not in text and "Privacy Policy" not in text


def test_wet_conversion_records(tmp_path):
    recs = [{"url": "https://x.org/1", "body": (ARTICLE + "\r\n\r\nSecond line.").encode(), "rec_type": "conversion"},
            {"url": "https://x.org/2", "body": b"\xff\xfe bad utf8", "rec_type": "conversion"},
            {"url": "https://x.org/3", "body": b"  \n ", "rec_type": "conversion"}]
    docs, st = _read(write_warc(tmp_path / "a.warc.wet.gz", recs))
    assert len(docs) == 1 and docs[0]["text"].endswith("\nSecond line.") and "\r" not in docs[0]["text"]
    assert st.records["conversion"] == 3 and st.skipped["undecodable"] == 1 and st.skipped["empty"] == 1


@pytest.mark.parametrize("gz", [True, False])
def test_arc_files(tmp_path, gz):
    path = tmp_path / ("a.arc.gz" if gz else "a.arc")
    write_arc(path, [("http://old.example.com/1", "20010203040506", page([ARTICLE]).encode()),
                     ("http://old.example.com/2", "20010203040507", page([ARTICLE + " Again."]).encode())], gz=gz)
    docs, st = _read(path)
    assert [d["url"] for d in docs] == ["http://old.example.com/1", "http://old.example.com/2"]
    assert docs[0]["date"].startswith("2001-02-03")
    assert "Congress" in docs[0]["text"]
    with pytest.raises(PlinthError, match="fastwarc cannot read ARC"):
        _read(path, "fastwarc")


def test_archive_format_names_the_file(tmp_path):
    assert archive_format("x/CC-MAIN-1.warc.gz") == "warc"
    assert archive_format("x/CC-MAIN-1.warc.wet.gz") == "wet"
    assert archive_format("x/old.arc") == "arc"
    with pytest.raises(PlinthError, match="notes.txt: not a web archive"):
        archive_format(tmp_path / "notes.txt")


# ----------------------------------------------------------------------------------------------------------------------
# PII


def test_emails_and_ips_replaced_and_counted():
    text = ("Write to jane.doe+news@example.co.uk or press@gov.example.org. Server 192.168.1.20 and "
            "8.8.8.8, and 2001:db8::8a2e:370:7334 for v6.")
    out, counts = scrub_text(text, PiiConfig())
    assert "example.co.uk" not in out and "192.168" not in out and "8.8.8.8" not in out and "2001:db8" not in out
    assert out.count("<EMAIL>") == 2 and out.count("<IP>") == 3
    assert counts == {"email": 2, "ip": 3}


def test_pii_look_alikes_are_kept():
    text = "Version 1.2.3 of the tool, the score 999.1.1.1, the time 12:30:45, and user@localhost."
    out, counts = scrub_text(text, PiiConfig())
    assert out == text and not counts


def test_pii_switches_and_per_source_stats():
    s = PiiScrubber(PiiConfig(ips=False))
    d = s.apply({"text": "mail a@b.com from 10.0.0.1", "source": "web"})
    assert d["text"] == "mail <EMAIL> from 10.0.0.1"
    s.apply({"text": "nothing here", "source": "web"})
    assert s.to_dict() == {"web": {"docs_in": 2, "docs_changed": 1, "email": 1, "ip": 0}}
    off = PiiScrubber(PiiConfig(enabled=False))
    assert off.apply({"text": "a@b.com", "source": "web"})["text"] == "a@b.com"
