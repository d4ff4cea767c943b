"""Settings: defaults, TOML file, IGREC_* environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.load(env={})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.neo4j_url == "bolt://127.0.0.1:7687"
    assert settings.topics["events"] == "igrec.events"
    assert settings.topics["dlq"] == "igrec.events.dlq"


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "igrec.toml"
    config.write_text('kafka_bootstrap = "a:1,b:2"\nneo4j_database = "recs"\ntopic_partitions = 12\n')
    settings = Settings.load(config, env={"IGREC_NEO4J_DATABASE": "other", "IGREC_KAFKA_PORT": "19092"})
    assert settings.bootstrap_servers == "a:1,b:2"
    assert settings.neo4j_database == "other"
    assert settings.topic_partitions == 12 and settings.kafka_port == 19092


def test_ports_move_the_local_defaults() -> None:
    settings = Settings.load(env={"IGREC_KAFKA_PORT": "19092", "IGREC_NEO4J_PORT": "17687"})
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.neo4j_url == "bolt://127.0.0.1:17687"


def test_sasl_settings_reach_the_kafka_clients() -> None:
    env = {
        "IGREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "IGREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "IGREC_KAFKA_SASL_USERNAME": "svc",
        "IGREC_KAFKA_SASL_PASSWORD": "s3cret",
    }
    settings = Settings.load(env=env)
    kwargs = settings.aiokafka_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings), "secrets must not leak into logs"
    broker = settings.faust_broker()
    assert broker["broker"] == "kafka://127.0.0.1:9092"
    assert broker["broker_credentials"].mechanism.value == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IGREC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "IGREC_KAFKA_SECURITY_PROTOCOL"),
        ({"IGREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "IGREC_KAFKA_SASL_MECHANISM"),
        ({"IGREC_KAFKA_PORT": "ninety"}, "IGREC_KAFKA_PORT"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env=env)


def test_unknown_file_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "igrec.toml"
    config.write_text('kafka_bootstrapp = "typo:9092"\n')
    with pytest.raises(SettingsError, match="kafka_bootstrapp"):
        Settings.load(config, env={})


def test_neo4j_password_comes_from_env_or_the_stack_file(tmp_path: Path) -> None:
    assert Settings.load(env={"IGREC_NEO4J_PASSWORD": "pw"}).neo4j_auth() == ("neo4j", "pw")
    settings = Settings.load(env={"IGREC_STATE_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="IGREC_NEO4J_PASSWORD"):
        settings.neo4j_auth()
    settings.neo4j_password_file.parent.mkdir(parents=True)
    settings.neo4j_password_file.write_text("generated\n")
    assert settings.neo4j_auth() == ("neo4j", "generated")


def test_to_env_round_trips_through_load(tmp_path: Path) -> None:
    settings = Settings.load(
        env={
            "IGREC_STATE_DIR": str(tmp_path),
            "IGREC_KAFKA_PORT": "19092",
            "IGREC_TOPIC_EVENTS": "t.events",
            "IGREC_NEO4J_PASSWORD": "pw",
        }
    )
    assert Settings.load(env=settings.to_env()) == settings
