"""The fashion catalogue (shared/data/fashion_product_images_small) and item feature arrays for the fusion encoder.

Item feature arrays follow the id convention of the session models: row 0 is padding, row ``k`` belongs to
``item_ids[k - 1]``, and a bool ``present`` mask says which rows carry a modality (missing titles or photos
stay zero rows with ``present = False``, so the fusion encoder can skip them). numpy only.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_FOLDER = Path("/work/shared/data/fashion_product_images_small")
IMAGES_TAR = "images_subset.tar"


@dataclass(frozen=True)
class FashionItem:
    """One catalogue row; ``"NA"`` and empty cells are ``""``."""

    id: int
    gender: str
    master_category: str
    sub_category: str
    article_type: str
    base_colour: str
    season: str
    year: str
    usage: str
    title: str


def load_items(folder: str | Path = DEFAULT_FOLDER, subset: bool = True) -> list[FashionItem]:
    """Items of ``items_subset.csv`` (the 2,637 with photos; ``subset=False``: all 44,446 of ``styles_full.csv``),
    in file order (sorted by id)."""
    path = Path(folder) / ("items_subset.csv" if subset else "styles_full.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))

    def cell(row: dict[str, str], key: str) -> str:
        value = (row.get(key) or "").strip()
        return "" if value == "NA" else value

    return [
        FashionItem(int(r["id"]), cell(r, "gender"), cell(r, "masterCategory"), cell(r, "subCategory"),
                    cell(r, "articleType"), cell(r, "baseColour"), cell(r, "season"), cell(r, "year"),
                    cell(r, "usage"), cell(r, "productDisplayName"))
        for r in rows
    ]


def padded_matrix(
    item_ids: Sequence[int], rows: Mapping[int, np.ndarray], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``rows[item]`` for ``item_ids`` under a padding row.

    Returns ``(matrix, present)``: float32 ``[len(item_ids) + 1, dim]`` with row 0 zeros and row ``k`` =
    ``rows[item_ids[k - 1]]`` (zeros where the item has no row), and bool ``[len(item_ids) + 1]``, False at
    row 0 and for items missing from ``rows``.
    """
    matrix = np.zeros((len(item_ids) + 1, dim), dtype=np.float32)
    present = np.zeros(len(item_ids) + 1, dtype=bool)
    for k, item in enumerate(item_ids, start=1):
        row = rows.get(item)
        if row is not None:
            matrix[k] = row
            present[k] = True
    return matrix, present


def text_arrays(
    items: Sequence[FashionItem], item_ids: Sequence[int], cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Title embeddings for the fusion encoder: float32 ``[len(item_ids) + 1, 384]`` and bool ``present``
    (see :func:`padded_matrix`); an item without a title (or not in ``items``) is absent."""
    from model.text_features import EMBEDDING_DIM, embed_texts

    titled = [it for it in items if it.title]
    vectors = embed_texts([it.title for it in titled], cache_dir=cache_dir)
    return padded_matrix(item_ids, {it.id: v for it, v in zip(titled, vectors, strict=True)}, EMBEDDING_DIM)


def image_arrays(
    item_ids: Sequence[int], photos: Mapping[int, np.ndarray], visual: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Photo features for the fusion encoder: float32 ``[len(item_ids) + 1, ATTRIBUTE_DIM (+ dim)]`` and bool
    ``present`` (see :func:`padded_matrix`).

    Columns: :meth:`model.image_features.ImageAttributes.vector` (size, aspect, resolution, white background,
    colour distribution), then, with ``visual`` (a ``visual_embeddings.npz`` from ``igrec items images``), the
    learned visual embedding. An item without a photo (or, with ``visual``, without an embedding) is absent.
    """
    from model.image_features import ATTRIBUTE_DIM, image_attributes

    rows = {i: image_attributes(photos[i]).vector() for i in item_ids if i in photos}
    dim = ATTRIBUTE_DIM
    if visual is not None:
        with np.load(visual, allow_pickle=False) as saved:
            vectors = dict(zip(saved["ids"].tolist(), saved["vectors"], strict=True))
            dim += saved["vectors"].shape[1]
        rows = {i: np.concatenate([row, vectors[i]]) for i, row in rows.items() if i in vectors}
    return padded_matrix(item_ids, rows, dim)
