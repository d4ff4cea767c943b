"""The Python driver against the real Neo4j: authentication, managed write and read transactions."""

from __future__ import annotations

import uuid

import pytest
from neo4j import GraphDatabase, ManagedTransaction
from neo4j.exceptions import AuthError

from streams.settings import Settings

pytestmark = pytest.mark.integration


def _write_clicks(tx: ManagedTransaction, rows: list[dict]) -> None:
    tx.run(
        "UNWIND $rows AS row "
        "MERGE (s:Session {id: row.session}) MERGE (i:Item {id: row.item}) "
        "MERGE (s)-[c:CLICKED {pos: row.pos}]->(i) SET c.ts = row.ts",
        rows=rows,
    )


def test_write_then_read_with_authentication(settings: Settings) -> None:
    session_id = f"test-{uuid.uuid4().hex}"
    rows = [{"session": session_id, "item": f"item-{i % 3}", "pos": i, "ts": 1000 + i} for i in range(6)]
    driver = GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth())
    with driver, driver.session(database=settings.neo4j_database) as session:
        session.execute_write(_write_clicks, rows)
        session.execute_write(_write_clicks, rows)
        records = session.execute_read(
            lambda tx: tx.run(
                "MATCH (:Session {id: $id})-[c:CLICKED]->(i:Item) RETURN c.pos AS pos, i.id AS item ORDER BY pos",
                id=session_id,
            ).data()
        )
    assert records == [{"pos": i, "item": f"item-{i % 3}"} for i in range(6)], "MERGE must not duplicate"


def test_wrong_password_is_refused(settings: Settings) -> None:
    driver = GraphDatabase.driver(settings.neo4j_url, auth=(settings.neo4j_user, "not-the-password"))
    with driver, pytest.raises(AuthError):
        driver.verify_connectivity()
