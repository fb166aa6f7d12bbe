"""Images: decoding with Pillow behind guards, and the resize/crop/augment/normalise transforms (numpy and torch; no
torchvision, which does not install beside the pinned CPU torch).

Every image Plinth reads goes through `decode_image`: a file or bytes becomes an (H, W, 3) uint8 RGB array, or a
`BadImage` whose `reason` is one of `SKIP_REASONS` (zero-size, corrupt, truncated, a header claiming more pixels than
`max_pixels`: the decompression-bomb guard). Grayscale, palette, 16-bit and alpha images are converted to RGB and
counted by mode. Training augmentation (`random_resized_crop`) draws from a numpy Generator, so batch i of a run is a
pure function of (seed, i) and a resumed run sees the same pixels.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SKIP_REASONS = ("empty_file", "corrupt", "truncated", "too_large", "unreadable_file", "missing_image", "no_caption",
                "unlabelled")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; a 20,000 x 20,000 header (a decompression bomb) is refused
# CLIP's normalisation constants (OpenAI CLIP, `clip/clip.py` _transform): per-channel mean and std of its data.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BadImage(Exception):
    """An image that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Decoded:
    """A decoded image: (H, W, 3) uint8 RGB pixels and the mode it was stored in (L, P, RGBA, I;16, ...)."""

    pixels: np.ndarray
    mode: str


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file name with an image extension Plinth reads."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def decode_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode a file path or encoded bytes into RGB pixels; raise BadImage(reason) for anything unusable.

    The pixel count is checked from the header before any pixel data is decoded, so a small file claiming a huge
    size (a decompression bomb) costs nothing. Truncated files are refused, not padded (Pillow's default).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise BadImage("missing_image", f"{source}: file not found") from None
        except OSError as e:
            raise BadImage("unreadable_file", f"{source}: {e.strerror or e}") from None
    if not data:
        raise BadImage("empty_file", "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise BadImage("too_large", str(e)) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise BadImage("corrupt", str(e) or type(e).__name__) from None
        w, h = im.size
        if w <= 0 or h <= 0:
            raise BadImage("corrupt", f"size {w}x{h}")
        if w * h > max_pixels:
            raise BadImage("too_large", f"{w}x{h} pixels is more than the limit of {max_pixels:,} (decompression-"
                                        "bomb guard; raise --max_pixels if the image is genuine)")
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise BadImage("too_large", str(e)) from None
        except OSError as e:
            reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
            raise BadImage(reason, str(e)) from None
        except (ValueError, SyntaxError, EOFError, IndexError, struct.error) as e:
            raise BadImage("corrupt", str(e) or type(e).__name__) from None
    return Decoded(to_rgb_array(im), im.mode)


def to_rgb_array(im) -> np.ndarray:
    """A PIL image in any mode as (H, W, 3) uint8 RGB. Alpha is composited on white; 16/32-bit gray is rescaled."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        im = Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def gray_to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) gray, or (H, W, 3) → (H, W, 3) uint8."""
    if a.ndim == 3 and a.shape[2] == 3:
        return a.astype(np.uint8, copy=False)
    a = a.reshape(a.shape[0], a.shape[1])
    return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry


def resize_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (bicubic, antialiased when shrinking), then crop the centre square.

    This is what evaluation and `plinth.load` pipelines do to every image (CLIP's eval transform). A 1x1 image is
    scaled up like any other.
    """
    from PIL import Image

    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(pixels).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def random_resized_crop(pixels: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.6, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = False) -> np.ndarray:
    """A random crop covering `scale` of the area with aspect ratio in `ratio` (log-uniform), resized to `size`.

    The Inception-style crop CLIP trains with (torchvision's RandomResizedCrop: 10 tries, then the centre crop);
    Pillow resizes the box directly (no intermediate copy). `flip`: mirror left-right half the time.
    """
    from PIL import Image

    h, w = pixels.shape[:2]
    area = h * w
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        side = min(h, w)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    out = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """A square image resized to `size` x `size` (bicubic); the identity when it already is."""
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# To tensors


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its pixels: square side, per-channel mean and std. Stored as preprocess.json beside it."""

    image_size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def to_dict(self) -> dict:
        """The JSON form (preprocess.json)."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "resize": "shorter side to image_size (bicubic), centre crop"}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Read preprocess.json's mapping."""
        return cls(int(d["image_size"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))

    def normalise(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised pixel values (what the models take)."""
        x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """Decoded RGB arrays of any size → one (B, 3, S, S) batch (resize shorter side, centre crop, normalise)."""
        arrays = [resize_center_crop(gray_to_rgb(a), self.image_size) for a in images]
        return self.normalise(torch.from_numpy(np.stack(arrays)))
