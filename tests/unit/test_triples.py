"""The triples contract and the Cypher it turns into: whitelisted names only, values as parameters."""

from __future__ import annotations

import orjson
import pytest

from streams.neo4j_sink import EDGE_CYPHER, statements
from streams.triples import MAX_FACTS, RELATIONSHIPS, TripleError, bundles, edge, node, parse

ITEM = {"label": "Item", "id": "1"}


def test_round_trip_through_json() -> None:
    fact = edge(("Session", "s1"), "CLICKED", ("Item", 42), pos=3, ts=1.5)
    assert parse(fact.to_json()) == [fact]
    assert parse(node("Item", "7", title="t", tags=["a", "b"]).to_json())[0].head_props == {
        "title": "t",
        "tags": ["a", "b"],
    }


def test_bundles_round_trip_in_order_and_split_at_the_limit() -> None:
    facts = [edge(("Item", i), "NEXT", ("Item", i + 1), count=i) for i in range(MAX_FACTS + 3)] + [node("Item", "x")]
    messages = bundles(facts)
    assert [len(orjson.loads(m)["facts"]) for m in messages] == [MAX_FACTS, 4]
    assert [t for m in messages for t in parse(m)] == facts
    assert bundles([]) == []


@pytest.mark.parametrize(
    ("message", "reason", "code"),
    [
        ({"facts": []}, "1..1000 facts", "invalid_bundle"),
        ({"facts": {"head": ITEM}}, "1..1000 facts", "invalid_bundle"),
        ({"facts": [{"head": ITEM}] * (MAX_FACTS + 1)}, "1..1000 facts", "invalid_bundle"),
        ({"facts": [{"head": ITEM}, 7]}, r"facts\[1\]: a fact must be an object", "invalid_bundle"),
        ({"facts": [{"head": ITEM}, {"head": ITEM}, {"head": {"label": "Robot", "id": "1"}}]},
         r"facts\[2\]: head.label", "unknown_label"),
        ({"head": ITEM, "facts": [{"head": ITEM}]}, "not both", "fact_and_bundle"),
    ],
)
def test_an_invalid_bundle_is_refused_whole_and_says_which_fact(message: dict, reason: str, code: str) -> None:
    with pytest.raises(TripleError, match=reason) as refused:
        parse(orjson.dumps({"schema_version": 1, **message}))
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"null", "expected a JSON object"),
        ({"head": {"label": "Item", "id": "1"}}, "schema_version"),
        ({"schema_version": 1, "head": {"label": "Item`) DELETE", "id": "1"}}, "head.label"),
        ({"schema_version": 1, "head": {"label": "Item", "id": ""}}, "1..512"),
        ({"schema_version": 1, "head": {"label": "Item", "id": True}}, "string or an integer"),
        (
            {"schema_version": 1, "head": {"label": "Item", "id": "1"}, "rel": "DROP", "tail": {}},
            "unknown relationship",
        ),
        ({"schema_version": 1, "head": {"label": "Item", "id": "1", "props": {"a b": 1}}}, "property name"),
        ({"schema_version": 1, "head": {"label": "Item", "id": "1", "props": {"id": "2"}}}, "property name"),
        ({"schema_version": 1, "head": {"label": "Item", "id": "1", "props": {"x": [1, "a"]}}}, "values"),
        (
            {"schema_version": 1, "head": {"label": "Item", "id": "1"}, "tail": {"label": "Item", "id": "2"}},
            "without a rel",
        ),
    ],
)
def test_invalid_messages_say_why(message, reason: str) -> None:
    raw = message if isinstance(message, bytes) else orjson.dumps(message)
    with pytest.raises(TripleError, match=reason):
        parse(raw)


def test_cypher_names_come_only_from_the_whitelist() -> None:
    for rel, cypher in EDGE_CYPHER.items():
        spec = RELATIONSHIPS[rel]
        assert f"(h:{spec.head} {{id: row.head}})" in cypher and f"(t:{spec.tail} {{id: row.tail}})" in cypher
        assert "$rows" in cypher and "'" not in cypher
    assert "[r:CLICKED {pos: row.props.pos}]" in EDGE_CYPHER["CLICKED"]
    assert "[r:NEXT]" in EDGE_CYPHER["NEXT"]


def test_statements_group_by_type_and_keep_order() -> None:
    facts = [
        edge(("User", "u"), "INTERESTED_IN", ("Interest", "m/0"), weight=0.25),
        node("Item", "a", title="x"),
        edge(("User", "u"), "INTERESTED_IN", ("Interest", "m/0"), weight=0.5),
    ]
    grouped = dict(statements(facts))
    assert [row["props"]["weight"] for row in grouped[EDGE_CYPHER["INTERESTED_IN"]]] == [0.25, 0.5], \
        "the later absolute wins"
    assert len(grouped) == 2


def test_a_counter_keeps_its_largest_value_in_one_row_per_relationship() -> None:
    """Cypher compares every row of a statement with the count stored before the statement, so two rows of one
    pair must become one, holding the larger count, whichever came last."""
    facts = [
        edge(("Item", "a"), "NEXT", ("Item", "b"), count=3),
        edge(("Item", "a"), "NEXT", ("Item", "c"), count=1),
        edge(("Item", "a"), "NEXT", ("Item", "b"), count=2)._replace(head_props={"title": "x"}),
        edge(("Item", "c"), "NEXT", ("Item", "a"), count=4),
        edge(("Item", "a"), "NEXT", ("Item", "c"), count=5),
    ]
    rows = dict(statements(facts))[EDGE_CYPHER["NEXT"]]
    assert [(row["head"], row["tail"], row["props"]["count"]) for row in rows] == [
        ("a", "b", 3), ("a", "c", 5), ("c", "a", 4)]
    assert rows[0]["head_props"] == {"title": "x"}, "other properties are merged, the later winning"


def test_facts_from_model_become_validated_triples() -> None:
    from model.facts import Fact
    from streams.triples import from_fact

    related = from_fact(Fact("Item", "1", "RELATED", "Item", "2", {"type": "co_view", "score": 0.9}))
    assert (related.rel, related.tail_id, related.props) == ("RELATED", "2", {"type": "co_view", "score": 0.9})
    assert from_fact(Fact("Item", "7", head_props={"title": "cap"})).head_props == {"title": "cap"}
    with pytest.raises(TripleError, match="RELATED needs the identifying properties"):
        from_fact(Fact("Item", "1", "RELATED", "Item", "2", {"score": 0.9}))
    with pytest.raises(TripleError, match="is not one of"):
        from_fact(Fact("Brand", "x"))
