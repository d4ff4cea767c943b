"""RDF export (parsed back by a real Turtle parser), the kg.txt reader, and the picture."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import rdflib

from model.facts import Fact
from streams.kg import SCHEMA_NS, Subgraph, draw, facts_jsonl_triples, kg_txt_triples, to_turtle
from streams.settings import ROOT
from streams.triples import TripleError

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
    facts = [f for f in kg_txt_triples(TMALL_KG, prefix="t:") if f.head_id == "t:8944"]
    assert len(list(kg_txt_triples(TMALL_KG, limit=3))) == 3
    assert [(f.rel, f.head_id, f.tail_id, f.props) for f in facts] == [
        ("IN_CATEGORY", "t:8944", "t:41778", {}),
        ("HAS", "t:8944", "t:seller:42599", {"relation": "seller"}),
        ("HAS", "t:8944", "t:brand:49107", {"relation": "brand"}),
    ]


def test_picture_is_a_png(tmp_path: Path) -> None:
    path = draw(_graph(), tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def _write_facts(path: Path, facts: list) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(f.__dict__ if isinstance(f, Fact) else f) for f in facts) + b"\n")
    return path


def test_facts_file_becomes_prefixed_triples(tmp_path: Path) -> None:
    path = _write_facts(tmp_path / "facts.jsonl", [
        Fact("Item", "15970", "HAS_KEYWORD", "Keyword", "shirt", {"tfidf": 0.4}, head_props={"title": "Navy Shirt"}),
        Fact("Item", "15970", "RELATED", "Item", "1535", {"type": "also_bought", "score": 0.93}),
        Fact("Item", "1535", head_props={"title": "Puma Cap"}),
    ])
    triples = list(facts_jsonl_triples(path, prefix="t:"))
    assert [(t.head_id, t.rel, t.tail_id) for t in triples] == [
        ("t:15970", "HAS_KEYWORD", "t:shirt"), ("t:15970", "RELATED", "t:1535"), ("t:1535", None, None)]
    assert triples[0].head_props == {"title": "Navy Shirt"} and triples[1].props["score"] == 0.93


@pytest.mark.parametrize(("line", "reason"), [
    (b"{not json", "facts.jsonl:2: unexpected"),
    (b'{"head_label": "Item"}', "facts.jsonl:2: expected an object with the fields of a Fact"),
    (b'{"head_label": "Item", "head_id": "1", "colour": "red"}', "expected an object with the fields"),
    (b'{"head_label": "Item", "head_id": "1", "rel": "OWNS", "tail_label": "Item", "tail_id": "2"}',
     "facts.jsonl:2: unknown relationship type 'OWNS'"),
])
def test_a_bad_fact_refuses_the_file_naming_its_line(tmp_path: Path, line: bytes, reason: str) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_bytes(orjson.dumps(Fact("Item", "1").__dict__) + b"\n" + line + b"\n")
    with pytest.raises(TripleError, match=reason.replace("(", r"\(")):
        list(facts_jsonl_triples(path))
