"""``igrec stack reset`` on a stopped stack: which folders it deletes (no server is started)."""

from __future__ import annotations

from pathlib import Path

from deploy import stack
from streams.settings import Settings


def test_a_kafka_reset_deletes_the_workers_local_stores_too(tmp_path: Path) -> None:
    settings = Settings.load(env={"IGREC_STATE_DIR": str(tmp_path)})
    kafka_data = tmp_path / "kafka" / "data" / "igrec.events-0"
    worker_store = tmp_path / "worker" / "igrec-worker" / "tables"
    neo4j_data = tmp_path / "neo4j" / "data" / "databases"
    for folder in (kafka_data, worker_store, neo4j_data):
        folder.mkdir(parents=True)
    stack.reset(settings, log=lambda line: None, only="kafka")
    assert not (tmp_path / "kafka" / "data").exists()
    assert not (tmp_path / "worker").exists(), "a store of the deleted changelogs would outlive them"
    assert neo4j_data.exists()
