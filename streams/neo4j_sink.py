"""Writes to Neo4j: the schema (uniqueness constraints) and batched, idempotent UNWIND + MERGE writes.

Every write sets absolute values, so replaying the same rows leaves the graph unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from neo4j import Driver, GraphDatabase, ManagedTransaction

from streams.settings import Settings

LABELS = ("User", "Session", "Item", "Category", "Keyword", "Entity", "Interest")

CLICKS_CYPHER = """
UNWIND $rows AS row
MERGE (u:User {id: row.user})
MERGE (s:Session {id: row.session})
MERGE (u)-[:HAD]->(s)
MERGE (i:Item {id: row.item})
MERGE (s)-[c:CLICKED {pos: row.pos}]->(i)
SET c.ts = row.ts
"""


def connect(settings: Settings) -> Driver:
    """A driver for the configured Neo4j, connectivity verified."""
    driver = GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth())
    driver.verify_connectivity()
    return driver


def ensure_schema(driver: Driver, database: str) -> None:
    """Create the uniqueness constraint on ``id`` for every igrec label (idempotent)."""
    for label in LABELS:
        driver.execute_query(
            f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE",
            database_=database,
        )


def _write_clicks(tx: ManagedTransaction, rows: Sequence[dict]) -> None:
    tx.run(CLICKS_CYPHER, rows=list(rows))


def write_clicks(driver: Driver, database: str, rows: Sequence[dict], batch_size: int = 2000) -> None:
    """MERGE users, sessions, items and CLICKED {pos, ts} edges, in batches of managed write transactions.

    Each row: ``{"user", "session", "item", "pos", "ts"}``.
    """
    with driver.session(database=database) as session:
        for begin in range(0, len(rows), batch_size):
            session.execute_write(_write_clicks, rows[begin : begin + batch_size])


def counts(driver: Driver, database: str) -> dict[str, int]:
    """Node counts per igrec label and relationship counts per type."""
    result: dict[str, int] = {}
    for label in LABELS:
        records, _, _ = driver.execute_query(f"MATCH (n:{label}) RETURN count(n) AS n", database_=database)
        result[label] = records[0]["n"]
    records, _, _ = driver.execute_query(
        "MATCH ()-[r]->() RETURN type(r) AS type, count(r) AS n ORDER BY type", database_=database
    )
    result |= {record["type"]: record["n"] for record in records}
    return result
