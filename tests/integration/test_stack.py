"""The stack's own behaviour: idempotent start, stale pid files, errors that name the fix, and a killed broker
that comes back on its data."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from deploy import stack
from streams.harness import collect
from streams.replay import publish_payloads
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def _igrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return (
        os.environ
        | {
            "IGREC_STATE_DIR": str(settings.state_dir),
            "IGREC_KAFKA_PORT": str(settings.kafka_port),
            "IGREC_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
            "IGREC_NEO4J_PORT": str(settings.neo4j_port),
        }
        | extra
    )


def test_starting_twice_keeps_the_same_servers(settings: Settings) -> None:
    before = stack.status(settings)
    result = _igrec(["stack", "up"], _env_for(settings))
    assert result.returncode == 0, result.stderr
    assert "kafka: already running" in result.stdout and "neo4j: already running" in result.stdout
    after = stack.status(settings)
    assert {name: entry["pid"] for name, entry in after.items()} == {n: e["pid"] for n, e in before.items()}
    assert all(entry["healthy"] for entry in after.values())


def test_status_exit_code_tells_healthy(settings: Settings, tmp_path: Path) -> None:
    assert _igrec(["stack", "status"], _env_for(settings)).returncode == 0
    empty = _env_for(settings.replace(state_dir=tmp_path / "nothing-here"))
    assert _igrec(["stack", "status"], empty).returncode == 1


def test_port_taken_is_explained(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        blocked = settings.replace(state_dir=tmp_path / "state", kafka_port=port)
        result = _igrec(["stack", "up", "--timeout", "30"], _env_for(blocked))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "IGREC_KAFKA_PORT" in result.stderr, "the error must name the fix"
    assert not (tmp_path / "state" / "kafka" / "kafka.pid").exists(), "nothing may be left half-started"


def test_missing_java_is_explained(settings: Settings, tmp_path: Path) -> None:
    env = _env_for(settings.replace(state_dir=tmp_path / "state"), PATH=str(Path(sys.executable).parent))
    env.pop("JAVA_HOME", None)
    result = _igrec(["stack", "up"], env)
    assert result.returncode == 1
    assert "java not found" in result.stderr
    assert "apt-get install -y openjdk-17-jdk-headless" in result.stderr


def test_too_old_java_is_explained(settings: Settings, tmp_path: Path) -> None:
    fake_home = tmp_path / "jdk11"
    (fake_home / "bin").mkdir(parents=True)
    fake_java = fake_home / "bin" / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake_java.chmod(0o755)
    result = _igrec(["stack", "up"], _env_for(settings.replace(state_dir=tmp_path / "s"), JAVA_HOME=str(fake_home)))
    assert result.returncode == 1
    assert "Java 11" in result.stderr and "17+" in result.stderr


def test_stale_pid_file_is_detected_and_removed(settings: Settings, tmp_path: Path, capsys) -> None:
    stale = settings.replace(state_dir=tmp_path / "state")
    service = stack.services(stale)[0]
    service.home.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    service.pid_file.write_text(str(dead.pid))
    assert stack.read_pid(service) is None
    assert "stale pid file" in capsys.readouterr().out
    assert not service.pid_file.exists()


def test_pid_of_an_unrelated_process_is_not_ours(settings: Settings, tmp_path: Path, capsys) -> None:
    stale = settings.replace(state_dir=tmp_path / "state")
    service = stack.services(stale)[1]
    service.home.mkdir(parents=True)
    service.pid_file.write_text(str(os.getpid()))
    assert stack.read_pid(service) is None, "a recycled pid running something else must not count as Neo4j"
    assert "stale pid file" in capsys.readouterr().out


def test_restart_keeps_data_and_password(settings: Settings) -> None:
    from neo4j import GraphDatabase

    marker = f"restart-{os.getpid()}-{id(settings)}"
    with GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth()) as driver:
        driver.execute_query("MERGE (:Item {id: $id})", id=marker, database_=settings.neo4j_database)
    stack.down(settings, only="neo4j")
    assert stack.status(settings)["neo4j"]["pid"] is None
    stack.up(settings)
    with GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth()) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (n:Item {id: $id}) RETURN count(n) AS n", id=marker, database_=settings.neo4j_database
        )
    assert records[0]["n"] == 1


def test_a_killed_broker_restarts_on_its_data(settings: Settings) -> None:
    """``stack.kill`` is a crash (SIGKILL, no shutdown); ``up`` brings Kafka back with what it acknowledged."""
    topic = f"killed-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(settings, [topic]))
    asyncio.run(publish_payloads(settings, topic, [b'{"event_id": "before-the-crash"}']))
    stack.kill(settings, "kafka", log=lambda _: None)
    assert stack.status(settings)["kafka"]["pid"] is None
    with pytest.raises(stack.StackError, match="not running"):
        stack.kill(settings, "kafka", log=lambda _: None)
    stack.up(settings, log=lambda _: None)
    assert set(asyncio.run(collect(settings, topic, want=1, timeout=60))) == {"before-the-crash"}


def test_reset_is_refused_while_running_and_empties_a_stopped_server(settings: Settings) -> None:
    from neo4j import GraphDatabase

    refused = _igrec(["stack", "reset"], _env_for(settings))
    assert refused.returncode != 0 and "running" in refused.stdout + refused.stderr

    marker = f"reset-{os.getpid()}-{id(settings)}"
    with GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth()) as driver:
        driver.execute_query("MERGE (:Item {id: $id})", id=marker, database_=settings.neo4j_database)
    stack.down(settings, only="neo4j")
    stack.reset(settings, only="neo4j")
    stack.up(settings)
    with GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth()) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (n:Item {id: $id}) RETURN count(n) AS n", id=marker, database_=settings.neo4j_database
        )
    assert records[0]["n"] == 0, "the password survives a reset (the driver logged in); the graph does not"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_a_fresh_stack_is_up_only_once_consumer_groups_can_join(settings: Settings, tmp_path: Path,
                                                                caplog) -> None:
    """Right after `stack up` on a broker seconds old, a consumer joins its group without aiokafka's
    GroupCoordinatorNotAvailable error (the health check waits for the group coordinator)."""
    from aiokafka import AIOKafkaConsumer

    kafka, controller, neo4j = _free_ports(3)
    fresh = settings.replace(state_dir=tmp_path / "fresh", kafka_port=kafka, kafka_controller_port=controller,
                             neo4j_port=neo4j)
    stack.up(fresh)
    try:
        asyncio.run(ensure_topics(fresh, ["fresh-probe"]))

        async def join() -> None:
            consumer = AIOKafkaConsumer("fresh-probe", bootstrap_servers=f"127.0.0.1:{kafka}",
                                        group_id=f"g-{uuid.uuid4().hex}")
            await consumer.start()
            try:
                await consumer.getmany(timeout_ms=3000)
            finally:
                await consumer.stop()

        with caplog.at_level("WARNING", logger="aiokafka"):
            asyncio.run(join())
        assert not [r for r in caplog.records if "Coordinator" in r.getMessage()], caplog.text
    finally:
        stack.down(fresh)
