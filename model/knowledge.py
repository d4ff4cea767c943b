"""Knowledge fusion: normalised, deduplicated entities, one value per single-valued attribute, item-side facts.

Sources of item knowledge and their fixed priority (:data:`SOURCE_PRIORITY`, highest first):

1. ``catalogue``: the fashion metadata columns (gender, baseColour, season, usage, categories);
2. ``title``: what the product title says (colour phrase, gender word, brand prefix);
3. ``image``: the photo's top colour (model/image_features.py);
4. ``kg``: ``kg.txt`` triples of session_kg_dsrhk (they never overlap the fashion attributes).

Normalisation (:func:`normalise`): Unicode NFKC, case-folded, whitespace collapsed, surrounding punctuation
stripped, then the synonym map ``model/resources/synonyms.tsv`` (``navy blue`` -> ``navy``, ``gray`` -> ``grey``).
Two observations are the same entity exactly when their normalised values are equal.

Contradiction rule (:func:`resolve`), for the single-valued attributes (:data:`SINGLE_VALUED`): each source
casts one vote, for its first normalised value; the value with most votes wins; a tie goes to the tied value
backed by the highest-priority source. So catalogue and title agreeing beat the image, a title and the image
agreeing beat the catalogue (two independent sources against one), and catalogue vs image alone is the
catalogue's. Facts carry the winning value with the sources that voted for it.

Facts follow ARCHITECTURE "Neo4j knowledge graph" as :class:`model.facts.Fact`: ``(Item)-[:HAS_KEYWORD {tfidf}]->
(Keyword)``, ``(Item)-[:IN_CATEGORY]->(Category)``, ``(Item)-[:HAS {relation}]->(Entity)`` and item node
properties. Ids: items ``<prefix><id>`` (``fashion:15970``), keywords the normalised word, entities
``<relation>:<value>`` (``colour:navy``, ``brand:puma``), fashion categories the normalised path under the
prefix (``fashion:apparel/topwear/shirts``); kg.txt ids as streams/kg.py writes them (``<prefix><item>``,
categories ``<prefix><entity>``, entities ``<prefix><relation>:<entity>``). All values are absolute.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from model.facts import Fact
from model.fashion import FashionItem
from model.image_features import PALETTE, ImageAttributes
from model.text_features import RESOURCES, TfIdf

SOURCE_PRIORITY = ("catalogue", "title", "image", "kg")
SINGLE_VALUED = frozenset({"colour", "gender", "season", "usage", "brand"})
GENDER_WORDS = frozenset({"men", "women", "boys", "girls", "unisex", "children"})
CATEGORY_RELATIONS = ("cat", "category")
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


@cache
def synonyms() -> dict[str, str]:
    """``variant -> canonical`` from ``model/resources/synonyms.tsv`` (both sides normalised without synonyms)."""
    table = {}
    for line in (RESOURCES / "synonyms.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            variant, canonical = line.split("\t")
            table[_clean(variant)] = _clean(canonical)
    return table


def _clean(value: str) -> str:
    value = _SPACE.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()
    return _EDGE_PUNCT.sub("", value)


def normalise(value: str) -> str:
    """The canonical form of an entity value: NFKC, case-folded, single spaces, no edge punctuation, synonym
    map applied (``"  Navy  Blue "`` -> ``"navy"``); ``""`` for an empty value."""
    value = _clean(value)
    return synonyms().get(value, value)


@dataclass(frozen=True)
class Observation:
    """One source's claim that ``item`` has ``value`` for ``attribute`` (raw, normalised by :func:`resolve`)."""

    item: str
    attribute: str
    value: str
    source: str


@dataclass(frozen=True)
class Resolved:
    """The value kept for ``(item, attribute)``, the sources that voted for it and all distinct candidates."""

    value: str
    sources: tuple[str, ...]
    candidates: tuple[str, ...]


def resolve(observations: Iterable[Observation]) -> dict[tuple[str, str], Resolved]:
    """One value per ``(item, attribute)`` of the single-valued attributes by the module's contradiction rule.

    Values are normalised first (so ``Navy Blue`` and ``navy`` agree); empty values are dropped; a source's
    later observations for the same pair are ignored (one vote per source). Unknown sources rank last.
    """
    votes: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for obs in observations:
        value = normalise(obs.value)
        if value and obs.attribute in SINGLE_VALUED:
            votes[(obs.item, obs.attribute)].setdefault(obs.source, value)
    return {key: _vote(by_source) for key, by_source in votes.items()}


def _priority(source: str) -> int:
    return SOURCE_PRIORITY.index(source) if source in SOURCE_PRIORITY else len(SOURCE_PRIORITY)


def _vote(by_source: Mapping[str, str]) -> Resolved:
    backers: dict[str, list[str]] = defaultdict(list)
    for source, value in by_source.items():
        backers[value].append(source)
    best = min(backers, key=lambda v: (-len(backers[v]), min(_priority(s) for s in backers[v])))
    return Resolved(best, tuple(sorted(backers[best], key=_priority)), tuple(sorted(backers)))


# ---------------------------------------------------------------- reading attributes off titles


def colour_vocabulary(values: Iterable[str]) -> list[str]:
    """Distinct normalised colour phrases (e.g. every catalogue ``baseColour``), for :func:`title_colour`."""
    cleaned = {_clean(v) for v in values} - {""}
    return sorted(cleaned, key=lambda v: (-len(v.split()), v))


def title_colour(title: str, vocabulary: Sequence[str]) -> str:
    """The colour phrase of ``vocabulary`` that occurs first in ``title`` as whole words (the longest one
    starting there: ``navy blue`` over ``navy``), else ``""``; titles name the main colour first
    (``Red & Grey Rucksack``)."""
    padded = f" {_clean(title)} "
    found = [(padded.find(f" {phrase} "), -len(phrase), phrase) for phrase in vocabulary if f" {phrase} " in padded]
    return min(found)[2] if found else ""


def title_gender(title: str) -> str:
    """The first gender word of ``title`` after normalisation (``Men's`` -> ``men``), else ``""``."""
    return next((w for w in map(normalise, _clean(title).split()) if w in GENDER_WORDS), "")


@dataclass(frozen=True)
class BrandModel:
    """Brands as title prefixes, learnt from how titles start.

    ``starts[p]`` counts the titles that start with the word prefix ``p`` (1-4 words). A title's brand is its
    longest prefix that starts at least ``min_titles`` titles, has no gender word, does not end on a stop word
    and extends the next shorter prefix in at least ``min_share`` of that one's titles (``peter england``
    nearly always follows ``peter``; ``turtle check`` is one line of ``turtle``'s). A first word in
    ``generic`` (colours: ``Red Tape``, ``Red Rose``) is never a brand alone, so there the two-word prefix is
    taken whenever it starts ``min_titles`` titles.
    """

    starts: Mapping[str, int]
    generic: frozenset[str] = frozenset()
    min_titles: int = 10
    min_share: float = 0.5

    @classmethod
    def fit(cls, titles: Iterable[str], generic: Iterable[str] = (), min_titles: int = 10,
            min_share: float = 0.5) -> BrandModel:
        starts: Counter[str] = Counter()
        for title in titles:
            words = _clean(title).split()
            starts.update(" ".join(words[:k]) for k in range(1, min(4, len(words)) + 1))
        return cls(dict(starts), frozenset(generic), min_titles, min_share)

    def brand(self, title: str) -> str:
        """The brand prefix of ``title`` or ``""`` (never with a gender word, never the whole title)."""
        from model.text_features import stop_words

        words = _clean(title).split()
        if len(words) < 2 or words[0] in GENDER_WORDS or self.starts.get(words[0], 0) < self.min_titles:
            return ""
        best = "" if words[0] in self.generic else words[0]
        for k in range(2, min(4, len(words) - 1) + 1):
            prefix, shorter = " ".join(words[:k]), " ".join(words[: k - 1])
            count = self.starts.get(prefix, 0)
            if words[k - 1] in GENDER_WORDS or count < self.min_titles:
                break
            if (best or k > 2) and count < self.min_share * self.starts[shorter]:
                break
            if words[k - 1] not in stop_words("en"):
                best = prefix
        return best


# ---------------------------------------------------------------- facts


def category_facts(item_node: str, path: Sequence[str], prefix: str) -> list[Fact]:
    """``IN_CATEGORY`` to every level of a category path (``Apparel > Topwear > Shirts``), ids as normalised
    paths under ``prefix``; the category node gets ``name`` and ``level`` (1 = top)."""
    facts, parts = [], []
    for level, name in enumerate(path, start=1):
        if not name:
            break
        parts.append(normalise(name))
        facts.append(Fact("Item", item_node, "IN_CATEGORY", "Category", prefix + "/".join(parts),
                          tail_props={"name": name, "level": level}))
    return facts


def entity_fact(item_node: str, relation: str, resolved: Resolved) -> Fact:
    """``(Item)-[:HAS {relation, sources}]->(Entity {id: "<relation>:<value>", name: value})``."""
    return Fact("Item", item_node, "HAS", "Entity", f"{relation}:{resolved.value}",
                props={"relation": relation, "sources": list(resolved.sources)},
                tail_props={"name": resolved.value})


def keyword_facts(item_node: str, keywords: Sequence[tuple[str, float]]) -> list[Fact]:
    """``(Item)-[:HAS_KEYWORD {tfidf}]->(Keyword {id: word})`` per ``(word, F)`` (F rounded to 6 places)."""
    return [Fact("Item", item_node, "HAS_KEYWORD", "Keyword", normalise(word), props={"tfidf": round(score, 6)})
            for word, score in keywords]


# ---------------------------------------------------------------- knowledge-graph triples (session_kg_dsrhk)


def relation_names(kg_path: str | Path) -> dict[int, str]:
    """Relation id -> name from the ``relations.txt`` beside a ``kg.txt`` (``brand_id:2`` -> ``brand``);
    ``r<id>`` names are used for relations without one (RetailRocket, KKBOX)."""
    path = Path(kg_path).with_name("relations.txt")
    names = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, relation = line.strip().rpartition(":")
            if sep and name:
                names[int(relation)] = normalise(name).removesuffix("_id")
    return names


def read_kg(kg_path: str | Path) -> np.ndarray:
    """Distinct ``(item, relation, entity)`` rows of a ``kg.txt`` (``item relation entity`` integer lines):
    int64 ``[n, 3]`` in the order of first appearance. The one kg.txt reader: facts, link prediction and the
    knowledge encoder all start here."""
    triples = np.loadtxt(kg_path, dtype=np.int64, ndmin=2).reshape(-1, 3)
    _, first = np.unique(triples, axis=0, return_index=True)
    return triples[np.sort(first)]


def relation_name(names: Mapping[int, str], relation: int) -> str:
    """A relation's name from :func:`relation_names`, ``r<id>`` when it has none."""
    return names.get(relation, f"r{relation}")


def kg_facts(kg_path: str | Path, prefix: str = "") -> Iterator[Fact]:
    """The facts of a ``kg.txt``, deduplicated, with the ids streams/kg.py uses: a category relation ->
    ``(Item)-[:IN_CATEGORY]->(Category)``, any other -> ``(Item)-[:HAS {relation}]->(Entity)``."""
    names = relation_names(kg_path)
    for item, relation, entity in read_kg(kg_path).tolist():
        name = relation_name(names, relation)
        if name in CATEGORY_RELATIONS:
            yield Fact("Item", f"{prefix}{item}", "IN_CATEGORY", "Category", f"{prefix}{entity}")
        else:
            yield Fact("Item", f"{prefix}{item}", "HAS", "Entity", f"{prefix}{name}:{entity}",
                       props={"relation": name})


# ---------------------------------------------------------------- the fashion catalogue


def fashion_observations(
    item: FashionItem, node: str, colours: Sequence[str], brands: BrandModel, image: ImageAttributes | None
) -> list[Observation]:
    """Every source's claims about one catalogue item (see the module docstring for the sources)."""
    claims = [
        ("colour", item.base_colour, "catalogue"), ("gender", item.gender, "catalogue"),
        ("season", item.season, "catalogue"), ("usage", item.usage, "catalogue"),
        ("colour", title_colour(item.title, colours), "title"), ("gender", title_gender(item.title), "title"),
        ("brand", brands.brand(item.title), "title"),
    ]
    if image is not None:
        claims.append(("colour", image.dominant[0], "image"))
    return [Observation(node, attribute, value, source) for attribute, value, source in claims if value]


def item_node_fact(item: FashionItem, node: str, image: ImageAttributes | None) -> Fact:
    """The item node with its title, year and photo attributes (``colour_fractions`` in ``colour_palette``
    order; a fixed set of properties, so re-sending overwrites every one of them)."""
    props: dict[str, object] = {"title": item.title, "article_type": item.article_type}
    if item.year.isdigit():
        props["year"] = int(item.year)
    if image is not None:
        props |= {
            "image_width": image.width, "image_height": image.height, "image_resolution": image.resolution,
            "image_aspect": image.aspect, "white_background": image.white_background,
            "dominant_colours": list(image.dominant), "colour_palette": list(PALETTE),
            "colour_fractions": [image.colours[name] for name in PALETTE],
        }
    return Fact("Item", node, head_props=props)


def fashion_facts(
    items: Sequence[FashionItem], tfidf: TfIdf, images: Mapping[int, ImageAttributes], brands: BrandModel,
    colours: Sequence[str], top: int = 5, prefix: str = "fashion:",
) -> Iterator[Fact]:
    """All item-side facts of the catalogue, item by item: the node, its categories, its resolved attributes
    (``HAS {relation}``) and its top-``top`` TF-IDF keywords. ``tfidf`` was fitted on the items' titles in
    this order; ``colours`` is the :func:`colour_vocabulary` for titles."""
    for index, item in enumerate(items):
        node = f"{prefix}{item.id}"
        image = images.get(item.id)
        yield item_node_fact(item, node, image)
        yield from category_facts(node, (item.master_category, item.sub_category, item.article_type), prefix)
        resolved = resolve(fashion_observations(item, node, colours, brands, image))
        for (_, relation), value in sorted(resolved.items()):
            yield entity_fact(node, relation, value)
        yield from keyword_facts(node, tfidf.keywords(index, top))
