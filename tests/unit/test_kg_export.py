"""RDF export (parsed back by a real Turtle parser), the kg.txt reader, and the picture."""

from __future__ import annotations

from pathlib import Path

import rdflib

from streams.kg import SCHEMA_NS, Subgraph, draw, kg_txt_triples, to_turtle
from streams.settings import ROOT

TMALL_KG = ROOT.parent / "shared" / "data" / "session_kg_dsrhk" / "Tmall" / "kg.txt"


def _graph() -> Subgraph:
    return Subgraph(
        nodes={
            "a": ("Item", "12 3/x", {"id": "12 3/x", "title": 'say "hi"\nMATCH (n) DELETE n', "n": 3}),
            "b": ("Item", "7", {"id": "7", "tags": ["red", "blue"]}),
            "c": ("Category", "41778", {"id": "41778"}),
        },
        rels=[("a", "NEXT", {"count": 3}, "b"), ("a", "IN_CATEGORY", {}, "c")],
    )


def test_plain_turtle_parses_back_to_the_same_facts() -> None:
    parsed = rdflib.Graph().parse(data=to_turtle(_graph(), star=False), format="turtle")
    ig = rdflib.Namespace(SCHEMA_NS)
    a = rdflib.URIRef("urn:igrec:Item/12%203%2Fx")
    b = rdflib.URIRef("urn:igrec:Item/7")
    assert (a, rdflib.RDF.type, ig.Item) in parsed
    assert str(parsed.value(a, ig.title)) == 'say "hi"\nMATCH (n) DELETE n'
    assert parsed.value(a, ig.n).toPython() == 3
    assert (a, ig.NEXT, b) in parsed
    assert (a, ig.IN_CATEGORY, rdflib.URIRef("urn:igrec:Category/41778")) in parsed
    assert {str(v) for v in parsed.objects(b, ig.tags)} == {"red", "blue"}
    assert len(parsed) == 3 + 3 + 2 + 2 + 2


def test_star_annotates_relationship_properties() -> None:
    text = to_turtle(_graph(), star=True)
    assert '<< <urn:igrec:Item/12%203%2Fx> ig:NEXT <urn:igrec:Item/7> >> ig:count "3"^^xsd:long .' in text
    assert "<< <urn:igrec:Item/12%203%2Fx> ig:IN_CATEGORY" not in text, "no annotation without properties"


def test_kg_txt_uses_relation_names_and_categories() -> None:
    facts = list(kg_txt_triples(TMALL_KG, prefix="t:", limit=3))
    assert [(f.rel, f.head_id, f.tail_id, f.props) for f in facts] == [
        ("IN_CATEGORY", "t:8944", "t:41778", {}),
        ("HAS", "t:8944", "t:seller:42599", {"relation": "seller"}),
        ("HAS", "t:8944", "t:brand:49107", {"relation": "brand"}),
    ]


def test_picture_is_a_png(tmp_path: Path) -> None:
    path = draw(_graph(), tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
