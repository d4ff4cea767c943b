"""The artefact folder contract, shared by the exporter (torch side) and the Scorer (no torch).

An artefact is a folder::

    model.onnx   ONNX graph: session graphs -> (top-K item indices, their log-probabilities)
    items.tsv    vocabulary: ``index<TAB>external_id`` for indices 1..n_items (0 is padding)
    card.json    model card: what, from which data and commit, how good, and the sha256 of every other file
    interests.npy  optional, float32 ``[n_items + 1, k]``: each item's soft assignment to the model's k
                 interests (row 0, padding, is zero); the worker reads interest weights from it without torch

Only the standard library and numpy here, so the stream worker can import it without torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMAT = "igrec-onnx-artefact"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
ITEMS_FILE = "items.tsv"
CARD_FILE = "card.json"
INTERESTS_FILE = "interests.npy"
ITEMS_HEADER = "index\texternal_id"
SUPPORTED_OPSETS = range(17, 22)
"""ai.onnx opsets this runtime accepts: 18 is what we export; 17..21 run on onnxruntime >= 1.20."""
MIN_IDENTICAL = 0.999
"""Parity bar: the share of top-K lists (items and order) identical to PyTorch's."""
MAX_SCORE_DIFF = 1e-4
"""Parity bar: the largest |score difference| to PyTorch over the sorted top-K scores."""
MIN_SAME_SET = 0.999
"""Parity bar: the share of top-K item sets (order aside) identical to PyTorch's."""
INT8_MIN_IDENTICAL = 0.99
"""Parity bar of the int8 item product (``export.precision``): its log-normaliser is exact only for the top
candidates, so near-tied items (a few thousandths of a log-probability apart) may swap places."""
INT8_MAX_SCORE_DIFF = 2e-2
"""Parity bar of the int8 item product: the normaliser's error from the items outside the top candidates."""
METADATA_KEYS = ("igrec.format_version", "igrec.k", "igrec.n_items", "igrec.opset")
"""Keys written into the ONNX model's metadata_props, cross-checked against the card at load time."""


class ArtefactError(RuntimeError):
    """A corrupted or incompatible artefact; the message names the file and what is wrong with it."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model.onnx of a 43k-item model is ~35 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of every regular file in ``folder`` except the card itself."""
    folder = Path(folder)
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CARD_FILE}


def write_items(path: str | Path, external_ids: Sequence[str]) -> None:
    """Write the vocabulary: ``external_ids[i - 1]`` is the external id of index ``i`` (1-based)."""
    lines = [ITEMS_HEADER]
    for i, ext in enumerate(external_ids, 1):
        ext = str(ext)
        if not ext or "\t" in ext or "\n" in ext:
            raise ValueError(f"external id {ext!r} of item {i} is empty or contains a tab/newline")
        lines.append(f"{i}\t{ext}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_items(path: str | Path) -> list[str]:
    """External ids ``[n_items + 1]`` by index; entry 0 (padding) is ``""``. Raises :class:`ArtefactError`
    if the rows are not exactly 1..n in order or an id repeats (the index <-> id map must be a bijection)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != ITEMS_HEADER:
        raise ArtefactError(f"{path}: first line must be {ITEMS_HEADER!r}")
    ids = [""]
    for row, line in enumerate(lines[1:], 1):
        index, sep, ext = line.partition("\t")
        if not sep or not index.isdigit() or int(index) != row or not ext:
            raise ArtefactError(f"{path}:{row + 1}: expected '{row}<TAB>external id', got {line[:80]!r}")
        ids.append(ext)
    if len(set(ids)) != len(ids):
        raise ArtefactError(f"{path}: an external id appears more than once")
    return ids


def read_card(folder: str | Path) -> dict:
    """The parsed card.json of an artefact folder (no verification; see :func:`verify_card`)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtefactError(f"{path}: missing (is {folder} an igrec artefact folder?)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        raise ArtefactError(f"{path}: expected a JSON object")
    return card


def verify_card(card: dict, folder: str | Path) -> None:
    """Refuse a card this runtime cannot serve: unknown format or version, unsupported opset, missing
    fields, or a file whose sha256 differs from the card (corruption or tampering)."""
    folder = Path(folder)
    where = folder / CARD_FILE
    if card.get("format") != FORMAT:
        raise ArtefactError(f"{where}: format {card.get('format')!r}, expected {FORMAT!r}")
    if card.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(f"{where}: format_version {card.get('format_version')!r}; this runtime reads "
                            f"version {FORMAT_VERSION} only (re-export the checkpoint with this igrec)")
    for key in ("k", "n_items", "onnx", "files", "graphs"):
        if key not in card:
            raise ArtefactError(f"{where}: missing field {key!r}")
    opset = card["onnx"].get("opset")
    if opset not in SUPPORTED_OPSETS:
        raise ArtefactError(f"{where}: ONNX opset {opset!r} is not supported by this runtime "
                            f"(supported: {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1})")
    files = card["files"]
    for name in (MODEL_FILE, ITEMS_FILE):
        if name not in files:
            raise ArtefactError(f"{where}: no checksum for {name}")
    for name, expected in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise ArtefactError(f"{path}: listed in the card but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtefactError(f"{path}: sha256 {actual[:16]}... differs from the card's {expected[:16]}... "
                                "(file corrupted or modified after export)")


def read_interests(folder: str | Path, n_items: int) -> np.ndarray | None:
    """The item -> interest weight table ``[n_items + 1, k]`` of an artefact, or None if it has none.

    Call after :func:`verify_card` (the checksum covers the file); a table of the wrong shape is refused.
    """
    path = Path(folder) / INTERESTS_FILE
    if not path.is_file():
        return None
    try:
        table = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ArtefactError(f"{path}: not a numpy array file ({exc})") from exc
    if table.ndim != 2 or table.shape[0] != n_items + 1 or table.dtype != np.float32:
        raise ArtefactError(f"{path}: expected float32 [{n_items + 1}, k], found {table.dtype} {list(table.shape)}")
    return table
