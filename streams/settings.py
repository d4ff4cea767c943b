"""One settings object for everything that talks to Kafka or Neo4j, and for the local stack.

Values come from, in increasing priority: the defaults below, a TOML file (``IGREC_CONFIG`` or an explicit
path; flat keys named like the fields), and environment variables ``IGREC_<FIELD>`` (upper case).
Secrets (SASL and Neo4j passwords) belong in the environment or in a file outside git; the local stack
generates its Neo4j password once into the state folder.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "IGREC_"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable to set."""


@dataclass(frozen=True)
class Settings:
    """Where igrec's servers are, how to authenticate, and which topics it uses.

    ``kafka_bootstrap`` and ``neo4j_uri`` default to the local stack on ``kafka_port`` / ``neo4j_port``;
    set them to point igrec at existing clusters (then the ``*_port`` fields only matter to ``igrec stack``).
    """

    kafka_bootstrap: str = ""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    neo4j_uri: str = ""
    neo4j_user: str = "neo4j"
    neo4j_password: str = field(default="", repr=False)
    neo4j_database: str = "neo4j"

    topic_events: str = "igrec.events"
    topic_recommendations: str = "igrec.recommendations"
    topic_enriched: str = "igrec.events.enriched"
    topic_triples: str = "igrec.kg.triples"
    topic_dlq: str = "igrec.events.dlq"
    topic_triples_dlq: str = "igrec.kg.triples.dlq"
    topic_partitions: int = 4

    state_dir: Path = ROOT / ".state"
    cache_dir: Path = ROOT / "deploy" / ".cache"
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    neo4j_port: int = 7687
    kafka_heap: str = "768m"
    neo4j_heap: str = "1g"

    def __post_init__(self) -> None:
        for name in ("state_dir", "cache_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser().absolute())
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"IGREC_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r}: use one of {SECURITY_PROTOCOLS}"
            )
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise SettingsError(
                f"{self.kafka_security_protocol} needs IGREC_KAFKA_SASL_MECHANISM, one of {SASL_MECHANISMS}"
            )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then the TOML file (``path`` or ``$IGREC_CONFIG``), then ``IGREC_*`` variables."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        toml_path = path or env.get(f"{ENV_PREFIX}CONFIG")
        if toml_path:
            values.update(_read_toml(Path(toml_path)))
        names = {f.name for f in fields(cls)}
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX) and key != f"{ENV_PREFIX}CONFIG":
                name = key[len(ENV_PREFIX) :].lower()
                if name in names:
                    values[name] = raw
        return cls(**{name: _coerce(cls, name, value) for name, value in values.items()})

    def to_env(self) -> dict[str, str]:
        """``IGREC_*`` variables with which :meth:`load` in a child process gives back these settings."""
        return {f"{ENV_PREFIX}{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    @property
    def neo4j_url(self) -> str:
        return self.neo4j_uri or f"bolt://{self.host}:{self.neo4j_port}"

    @property
    def neo4j_password_file(self) -> Path:
        """Where the local stack keeps the Neo4j password it generated (never committed)."""
        return self.state_dir / "neo4j" / "password"

    def neo4j_auth(self) -> tuple[str, str]:
        """(user, password): ``IGREC_NEO4J_PASSWORD`` if set, else the local stack's generated password."""
        if self.neo4j_password:
            return self.neo4j_user, self.neo4j_password
        if self.neo4j_password_file.exists():
            return self.neo4j_user, self.neo4j_password_file.read_text().strip()
        raise SettingsError(
            f"no Neo4j password: set IGREC_NEO4J_PASSWORD, or start the local stack (`igrec stack up`), "
            f"which writes one to {self.neo4j_password_file}"
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for Kafka when the protocol uses SSL, from the configured CA / client cert files."""
        if "SSL" not in self.kafka_security_protocol:
            return None
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_ssl_certfile:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection and security keyword arguments for any aiokafka client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if (context := self.ssl_context()) is not None:
            kwargs["ssl_context"] = context
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password,
            }
        return kwargs

    def faust_broker(self) -> dict[str, Any]:
        """``broker`` and ``broker_credentials`` keyword arguments for ``faust.App``."""
        import faust.auth

        brokers = ";".join(f"kafka://{server}" for server in self.bootstrap_servers.split(","))
        credentials = None
        if self.kafka_security_protocol.startswith("SASL"):
            credentials = faust.auth.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password,
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        elif self.kafka_security_protocol == "SSL":
            credentials = faust.auth.SSLCredentials(self.ssl_context())
        return {"broker": brokers, "broker_credentials": credentials}

    @property
    def topics(self) -> dict[str, str]:
        """Every igrec topic by role."""
        return {
            "events": self.topic_events,
            "recommendations": self.topic_recommendations,
            "enriched": self.topic_enriched,
            "triples": self.topic_triples,
            "dlq": self.topic_dlq,
            "triples_dlq": self.topic_triples_dlq,
        }


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SettingsError(f"settings file {path} does not exist (IGREC_CONFIG or --config)")
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    unknown = set(data) - {f.name for f in fields(Settings)}
    if unknown:
        raise SettingsError(f"{path}: unknown settings {sorted(unknown)}; known: {[f.name for f in fields(Settings)]}")
    return data


def _coerce(cls: type[Settings], name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(cls)}[name]
    try:
        if kind == "int":
            return int(value)
        if kind == "Path":
            return Path(value).expanduser()
        return str(value)
    except ValueError as error:
        raise SettingsError(f"IGREC_{name.upper()}={value!r} is not a valid {kind}") from error
