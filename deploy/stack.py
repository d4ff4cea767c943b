"""The local stack: Apache Kafka (KRaft, one node) and Neo4j Community, from Maven Central, on 127.0.0.1.

``fetch`` resolves both with Maven into the git-ignored cache folder and compiles the small embedded-Neo4j
launcher; ``up`` starts what is not running and waits until Kafka answers a metadata request and Neo4j
answers ``RETURN 1``; ``down`` stops them cleanly. All data, logs, pid files and the generated Neo4j
password live under ``Settings.state_dir``. Every failure raises ``StackError`` with the fix in its message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

HERE = Path(__file__).resolve().parent
JAVA_MIN = 17
KAFKA_MAIN = "kafka.Kafka"
NEO4J_MAIN = "IgrecNeo4j"


class StackError(RuntimeError):
    """The stack cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class Service:
    """One server of the stack: how to start it, where it keeps its files, how to know it is healthy."""

    name: str
    ports: tuple[int, ...]
    main_class: str
    settings: Settings

    @property
    def home(self) -> Path:
        return self.settings.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "stdout.log"

    @property
    def lib(self) -> Path:
        return self.settings.cache_dir / "lib" / self.name


def services(settings: Settings) -> list[Service]:
    return [
        Service("kafka", (settings.kafka_port, settings.kafka_controller_port), KAFKA_MAIN, settings),
        Service("neo4j", (settings.neo4j_port,), NEO4J_MAIN, settings),
    ]


# ---------------------------------------------------------------- tools: java, javac, mvn


def find_java(tool: str = "java") -> str:
    """Path of ``tool`` (java or javac) from JAVA_HOME or PATH, checked to be version 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / tool if java_home else None
    path = str(candidate) if candidate and candidate.exists() else shutil.which(tool)
    if not path:
        raise StackError(
            f"{tool} not found: Kafka 4 and Neo4j 5.26 need a JDK {JAVA_MIN}+. Install one with "
            f"`apt-get install -y openjdk-17-jdk-headless` (`make setup` does this), or set JAVA_HOME to a JDK."
        )
    result = subprocess.run([path, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'(?:version "|javac )(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < JAVA_MIN:
        raise StackError(
            f"{path} is Java {major or 'of unknown version'}; Kafka 4 and Neo4j 5.26 need {JAVA_MIN}+. "
            f"Install openjdk-17-jdk-headless or point JAVA_HOME at a JDK {JAVA_MIN}+."
        )
    return path


def find_maven() -> str:
    path = shutil.which("mvn")
    if not path:
        raise StackError("mvn not found: install Maven with `apt-get install -y maven` (`make setup` does this).")
    return path


# ---------------------------------------------------------------- fetch: jars and the Neo4j launcher


def fetch(settings: Settings, log: Callable[[str], None] = print) -> None:
    """Resolve Kafka and Neo4j jars from Maven Central into the cache; compile the Neo4j launcher."""
    repo = settings.cache_dir / "m2"
    for service in services(settings):
        marker = service.lib / ".complete"
        pom = HERE / "maven" / service.name / "pom.xml"
        if marker.exists() and marker.read_text() == pom.read_text():
            continue
        log(f"resolving {service.name} from Maven Central into {service.lib} ...")
        shutil.rmtree(service.lib, ignore_errors=True)
        command = [
            find_maven(), "-B", "-q", "-f", str(pom), f"-Dmaven.repo.local={repo}",
            "dependency:copy-dependencies", f"-DoutputDirectory={service.lib}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"Maven could not resolve {service.name} (is Maven Central reachable?):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )
        marker.write_text(pom.read_text())
    _compile_launcher(settings)


def _launcher_dir(settings: Settings) -> Path:
    return settings.cache_dir / "classes"


def _compile_launcher(settings: Settings) -> None:
    source = HERE / "neo4j" / f"{NEO4J_MAIN}.java"
    out = _launcher_dir(settings)
    target = out / f"{NEO4J_MAIN}.class"
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return
    out.mkdir(parents=True, exist_ok=True)
    classpath = str(settings.cache_dir / "lib" / "neo4j" / "*")
    result = subprocess.run(
        [find_java("javac"), "-cp", classpath, "-d", str(out), str(source)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"compiling {source.name} failed:\n{result.stderr[-2000:]}")


# ---------------------------------------------------------------- process bookkeeping


def read_pid(service: Service) -> int | None:
    """The pid of this service's running process, or None; a stale pid file is explained and removed."""
    if not service.pid_file.exists():
        return None
    text = service.pid_file.read_text().strip()
    pid = int(text) if text.isdigit() else -1
    if pid > 0 and _is_our_process(pid, service):
        return pid
    reason = f"process {pid} is gone" if pid > 0 else "it is not a pid"
    print(
        f"note: stale pid file {service.pid_file} ({reason}: the last {service.name} was not stopped with "
        f"`igrec stack down`, e.g. the machine restarted or it was killed); removing it"
    )
    service.pid_file.unlink(missing_ok=True)
    return None


def _is_our_process(pid: int, service: Service) -> bool:
    """True if ``pid`` is alive and runs this service's main class with this state folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return service.main_class in cmdline and any(str(service.home) in arg for arg in cmdline)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _check_ports_free(service: Service) -> None:
    env_names = {
        service.settings.kafka_port: "IGREC_KAFKA_PORT",
        service.settings.kafka_controller_port: "IGREC_KAFKA_CONTROLLER_PORT",
        service.settings.neo4j_port: "IGREC_NEO4J_PORT",
    }
    for port in service.ports:
        if port_in_use(service.settings.host, port):
            raise StackError(
                f"port {port} on {service.settings.host} is already in use, so {service.name} cannot start. "
                f"Stop whatever listens there (`ss -ltnp 'sport = :{port}'` shows it), or choose another "
                f"port: {env_names[port]}=<free port>."
            )


# ---------------------------------------------------------------- start commands


def kafka_cluster_id(draw: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding.

    An id that starts with "-" is drawn again, as Kafka's own ``Uuid.randomUuid`` does:
    ``kafka-storage format -t -x...`` reads it as an option and fails (one draw in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(draw()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_command(service: Service) -> list[str]:
    settings = service.settings
    config = service.home / "server.properties"
    data = service.home / "data"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{settings.host}:{settings.kafka_controller_port}",
                f"listeners=PLAINTEXT://{settings.host}:{settings.kafka_port},"
                f"CONTROLLER://{settings.host}:{settings.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{settings.host}:{settings.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                f"num.partitions={settings.topic_partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=8",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    (service.home / "log4j2.properties").write_text(_KAFKA_LOG4J.format(logs=service.home / "logs"))
    java = find_java()
    classpath = str(service.lib / "*")
    if not (data / "meta.properties").exists():
        cluster_id = kafka_cluster_id()
        result = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage in {data} failed:\n{result.stdout}{result.stderr}")
    return [
        java, f"-Xmx{settings.kafka_heap}", f"-Xms{settings.kafka_heap}",
        f"-Dlog4j2.configurationFile={service.home / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={service.home / 'logs'}",
        "-cp", classpath, KAFKA_MAIN, str(config),
    ]


_KAFKA_LOG4J = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


def _neo4j_command(service: Service) -> list[str]:
    settings = service.settings
    password_file = settings.neo4j_password_file
    if settings.neo4j_password:
        password_file.write_text(settings.neo4j_password)
    elif not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(18))
    password_file.chmod(0o600)
    classpath = f"{service.lib / '*'}{os.pathsep}{_launcher_dir(settings)}"
    return [
        find_java(), f"-Xmx{settings.neo4j_heap}", "-XX:+UseG1GC", "-cp", classpath, NEO4J_MAIN,
        str(service.home), settings.host, str(settings.neo4j_port), str(password_file),
    ]


# ---------------------------------------------------------------- health


HEALTH_GROUP = "igrec-health"
"""The consumer group whose coordinator :func:`kafka_healthy` looks up (no consumer ever joins it)."""


def kafka_healthy(settings: Settings, timeout: float = 5.0) -> bool:
    """True if the broker answers a metadata request, has a controller and a group coordinator.

    A broker seconds old answers metadata before its group coordinator is up (the offsets topic is created
    on the first lookup): consumers that start then get ``GroupCoordinatorNotAvailable`` and log it as an
    error while they retry. Waiting for the coordinator here keeps that out of the workers' and the sink's
    logs on a fresh stack."""
    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs(), request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            if not cluster.get("brokers") or cluster.get("controller_id", -1) < 0:
                return False
            return await asyncio.wait_for(admin.find_coordinator(HEALTH_GROUP), timeout) >= 0
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    try:
        return asyncio.run(probe())
    except Exception:
        return False


def neo4j_healthy(settings: Settings, timeout: float = 5.0) -> bool:
    """True if Neo4j authenticates igrec's credentials and answers ``RETURN 1``."""
    from neo4j import GraphDatabase

    try:
        with GraphDatabase.driver(
            settings.neo4j_url, auth=settings.neo4j_auth(), connection_timeout=timeout
        ) as driver, driver.session(database=settings.neo4j_database) as session:
            return session.run("RETURN 1 AS one").single()["one"] == 1
    except Exception:
        return False


HEALTH: dict[str, Callable[[Settings], bool]] = {"kafka": kafka_healthy, "neo4j": neo4j_healthy}
COMMANDS: dict[str, Callable[[Service], list[str]]] = {"kafka": _kafka_command, "neo4j": _neo4j_command}


# ---------------------------------------------------------------- up / down / status


def up(settings: Settings, timeout: float = 180.0, log: Callable[[str], None] = print) -> dict[str, int]:
    """Start every service that is not running and wait until all are healthy; returns pid per service."""
    find_java()
    fetch(settings, log=log)
    with _stack_lock(settings):
        return _start_all(settings, timeout, log)


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """Serialise ``up`` and ``down`` on one state folder, so two of them at once cannot both start a server."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / "stack.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another `igrec stack` command on {settings.state_dir} to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _start_all(settings: Settings, timeout: float, log: Callable[[str], None]) -> dict[str, int]:
    started: dict[str, subprocess.Popen] = {}
    pids: dict[str, int] = {}
    for service in services(settings):
        pid = read_pid(service)
        if pid is not None:
            log(f"{service.name}: already running (pid {pid})")
            pids[service.name] = pid
            continue
        _check_ports_free(service)
        (service.home / "logs").mkdir(parents=True, exist_ok=True)
        command = COMMANDS[service.name](service)
        with service.log_file.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=service.home,
            )
        service.pid_file.write_text(str(process.pid))
        started[service.name] = process
        pids[service.name] = process.pid
        log(f"{service.name}: starting (pid {process.pid}, ports {service.ports}, logs {service.home / 'logs'})")
    deadline = time.monotonic() + timeout
    for service in services(settings):
        _wait_healthy(service, started.get(service.name), deadline, log)
    return pids


def _wait_healthy(
    service: Service, process: subprocess.Popen | None, deadline: float, log: Callable[[str], None]
) -> None:
    healthy = HEALTH[service.name]
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            service.pid_file.unlink(missing_ok=True)
            raise StackError(
                f"{service.name} exited with code {process.returncode} while starting; the end of its log "
                f"({service.log_file}):\n{_tail(service.log_file)}"
            )
        if healthy(service.settings):
            log(f"{service.name}: healthy")
            return
        time.sleep(1.0)
    raise StackError(
        f"{service.name} did not become healthy in time; the end of its log ({service.log_file}):\n"
        f"{_tail(service.log_file)}\nIf the machine is just slow, retry; `igrec stack down` stops it."
    )


def down(
    settings: Settings, timeout: float = 60.0, log: Callable[[str], None] = print, only: str | None = None
) -> None:
    """Stop the running services, or just ``only`` (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    with _stack_lock(settings):
        for service in services(settings):
            if only in (None, service.name):
                _stop(service, timeout, log)


def kill(settings: Settings, name: str, log: Callable[[str], None] = print) -> None:
    """SIGKILL one running service, as a crash would: no shutdown, no flush (``bench/bench_crash.py`` uses it to
    take the broker away under a running worker). ``up`` starts it again on the same data."""
    with _stack_lock(settings):
        service = next(s for s in services(settings) if s.name == name)
        pid = read_pid(service)
        if pid is None:
            raise StackError(f"{name} is not running")
        _signal_and_wait(pid, service, signal.SIGKILL, timeout=10)
        service.pid_file.unlink(missing_ok=True)
        log(f"{name}: killed (pid {pid})")


def reset(settings: Settings, log: Callable[[str], None] = print, only: str | None = None) -> None:
    """Delete the stored data of the stopped services (or just ``only``): Kafka's topics and offsets, Neo4j's
    graph. Refused while a service runs. Each starts empty next time; Neo4j keeps its password file.

    With Kafka's data go the workers' local state stores in their default place (``<state_dir>/worker``): a
    store remembers changelog offsets and per-user event offsets of the deleted topics, so a worker would
    refuse to start on it (faust's ``ConsistencyError``) or take the new topics' first events for repeats.
    A worker given its own ``--data-dir`` needs that folder deleted by hand."""
    chosen = [service for service in services(settings) if only in (None, service.name)]
    with _stack_lock(settings):
        running = [service.name for service in chosen if read_pid(service) is not None]
        if running:
            raise StackError(f"{' and '.join(running)} running; stop the stack (`igrec stack down`) before a reset")
        for service in chosen:
            folders = [service.home / "data"]
            if service.name == "kafka":
                folders.append(settings.state_dir / "worker")
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
                log(f"{service.name}: data deleted ({folder})")


def _stop(service: Service, timeout: float, log: Callable[[str], None]) -> None:
    pid = read_pid(service)
    if pid is None:
        log(f"{service.name}: not running")
        return
    if not _signal_and_wait(pid, service, signal.SIGTERM, timeout):
        log(f"{service.name}: did not stop within {timeout:.0f}s; killing pid {pid}")
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    service.pid_file.unlink(missing_ok=True)
    log(f"{service.name}: stopped")


def _signal_and_wait(pid: int, service: Service, sig: signal.Signals, timeout: float) -> bool:
    """Send ``sig`` to the service's process group and reap it; True if it is gone within ``timeout`` seconds."""
    os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _is_our_process(pid, service) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    _reap(pid)
    return not _is_our_process(pid, service)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def status(settings: Settings) -> dict[str, dict[str, object]]:
    """Per service: pid (or None), whether it is healthy, its ports and log folder."""
    report: dict[str, dict[str, object]] = {}
    for service in services(settings):
        pid = read_pid(service)
        report[service.name] = {
            "pid": pid,
            "healthy": pid is not None and HEALTH[service.name](settings),
            "ports": list(service.ports),
            "logs": str(service.home / "logs"),
        }
    return report


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
