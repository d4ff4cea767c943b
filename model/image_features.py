"""Product photo attributes: size, resolution, aspect and colour distribution (numpy + pillow, no torch).

Photos are read straight from the catalogue's ``images_subset.tar`` (``images/<id>.jpg``), never extracted.

Colour distribution. Every pixel is named with one of :data:`PALETTE` by fixed rules in HSV (dark, value < 0.3
-> black; unsaturated, saturation < 0.12 -> grey/white; else by hue band, with navy and brown split off blue and
orange by darkness).
Named bins rather than an RGB cube histogram because the catalogue's ``baseColour`` and the titles use
colour *names*: the image's dominant colour can then vote against them in knowledge fusion
(model/knowledge.py). Nearly every product photo sits on a white studio background, which would make "white"
the top colour of almost every item, so near-white pixels (all channels >= 235) are counted separately as
``white_background`` and the distribution is over the remaining (foreground) pixels; when less than 1% of the
photo is foreground (a white product on white), the distribution is over all pixels.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = ("black", "grey", "white", "red", "pink", "orange", "brown", "yellow", "green", "teal", "blue", "navy",
           "purple")
NEAR_WHITE = 235
MIN_FOREGROUND = 0.01
DOMINANT_SHARE = 0.2
BLACK_VALUE = 0.3
GREY_SATURATION = 0.12
ATTRIBUTE_DIM = 5 + len(PALETTE)


def read_images(tar_path: str | Path, ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Photos from ``tar_path`` as uint8 RGB ``[height, width, 3]`` arrays keyed by item id (``images/<id>.jpg``);
    ``ids`` limits the read to those items (the others are skipped without decoding)."""
    wanted = None if ids is None else {int(i) for i in ids}
    photos: dict[int, np.ndarray] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            name = Path(member.name)
            if not member.isfile() or name.suffix.lower() != ".jpg" or not name.stem.isdigit():
                continue
            item = int(name.stem)
            if wanted is not None and item not in wanted:
                continue
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                photos[item] = np.asarray(image.convert("RGB"))
    return photos


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """Palette index (into :data:`PALETTE`) of each pixel: int64 ``[...]`` for uint8 RGB ``[..., 3]``."""
    hsv = np.asarray(Image.fromarray(rgb.reshape(-1, 1, 3).astype(np.uint8)).convert("HSV"), dtype=np.float32)
    hue = hsv[..., 0].reshape(rgb.shape[:-1]) * (360.0 / 256.0)
    sat = hsv[..., 1].reshape(rgb.shape[:-1]) / 255.0
    val = hsv[..., 2].reshape(rgb.shape[:-1]) / 255.0
    index = {name: i for i, name in enumerate(PALETTE)}
    bands = [(15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (200, "teal"), (260, "blue"),
             (290, "purple"), (345, "pink"), (361, "red")]
    names = np.full(hue.shape, index["red"], dtype=np.int64)
    for upper, name in reversed(bands):
        names[hue < upper] = index[name]
    names[(names == index["orange"]) & (val < 0.6)] = index["brown"]
    names[(names == index["red"]) & (sat < 0.5) & (val > 0.6)] = index["pink"]
    names[(names == index["blue"]) & (val < 0.45)] = index["navy"]
    grey = sat < GREY_SATURATION
    names[grey] = np.where(val[grey] > 0.85, index["white"], index["grey"])
    names[val < BLACK_VALUE] = index["black"]
    return names


@dataclass(frozen=True)
class ImageAttributes:
    """What one photo shows without learning: size in pixels, resolution (width x height pixels; the JPEGs
    carry no physical DPI), aspect (width / height), the share of near-white background, the colour
    distribution over :data:`PALETTE` (fractions summing to 1) and its dominant colours (share >= 20%,
    largest first; at least the top one)."""

    width: int
    height: int
    resolution: int
    aspect: float
    white_background: float
    colours: dict[str, float]
    dominant: tuple[str, ...]

    def vector(self) -> np.ndarray:
        """float32 ``[ATTRIBUTE_DIM]``: width/60, height/80, aspect, megapixels x 1000 / 4.8 (1 at 60x80),
        white_background, then the :data:`PALETTE` fractions; catalogue photos give values near [0, 1]."""
        head = [self.width / 60, self.height / 80, self.aspect, self.resolution / 4800, self.white_background]
        return np.asarray(head + [self.colours[name] for name in PALETTE], dtype=np.float32)


def image_attributes(rgb: np.ndarray) -> ImageAttributes:
    """Attributes of one uint8 RGB photo ``[height, width, 3]`` (see the module docstring for the colours)."""
    height, width = rgb.shape[:2]
    background = (rgb >= NEAR_WHITE).all(axis=-1)
    share = float(background.mean())
    pixels = rgb[~background] if 1.0 - share >= MIN_FOREGROUND else rgb.reshape(-1, 3)
    counts = np.bincount(colour_names(pixels), minlength=len(PALETTE)).astype(np.float64)
    fractions = counts / counts.sum()
    order = np.argsort(-fractions, kind="stable")
    dominant = tuple(PALETTE[i] for i in order if fractions[i] >= DOMINANT_SHARE) or (PALETTE[order[0]],)
    return ImageAttributes(
        width, height, width * height, round(width / height, 4), round(share, 4),
        {name: round(float(f), 4) for name, f in zip(PALETTE, fractions, strict=True)}, dominant,
    )
