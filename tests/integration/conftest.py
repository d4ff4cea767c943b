"""Integration fixtures: the real local Kafka + Neo4j, started once per test session.

The test stack has its own state folder and ports (``IGREC_TEST_*`` to change them), so it never touches a
demo stack running beside it. A stack that was already up is reused and left running; one started here
starts from an empty Kafka (topics of earlier runs would pile up and slow the broker's start) and is
stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import stack
from streams.settings import ROOT, Settings


def _test_settings() -> Settings:
    env = os.environ
    return Settings.load(env={}).replace(
        state_dir=ROOT / ".state" / "test",
        kafka_port=int(env.get("IGREC_TEST_KAFKA_PORT", 19092)),
        kafka_controller_port=int(env.get("IGREC_TEST_KAFKA_CONTROLLER_PORT", 19093)),
        neo4j_port=int(env.get("IGREC_TEST_NEO4J_PORT", 17687)),
    )


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings of a running, healthy local stack."""
    test_settings = _test_settings()
    report = stack.status(test_settings)
    was_running = all(entry["healthy"] for entry in report.values())
    if not any(entry["pid"] for entry in report.values()):
        stack.reset(test_settings, only="kafka")
    stack.up(test_settings, timeout=240)
    yield test_settings
    if not was_running and not os.environ.get("IGREC_TEST_KEEP_STACK"):
        stack.down(test_settings)


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test, so tests never read each other's messages."""
    return f"test.{uuid.uuid4().hex[:12]}"


DIGINETICA = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split"


@pytest.fixture(scope="session")
def artefact(tmp_path_factory) -> Path:
    """A Diginetica-sized artefact (43,097 items) made by the real export path from a seeded random-weight
    IGRec. The worker's behaviour does not depend on the weights being trained, only on the artefact being a
    real one. A random network has more near-tied top-20 scores than a trained one (about 1 case in 2,000
    here swaps two items 1e-6 apart), so the parity check runs on 2,000 cases, where the 99.9 % bar allows
    two such swaps, not on a few hundred, where it allows none."""
    torch = pytest.importorskip("torch")
    from export.exporter import ExportOptions, build_artefact
    from model.network import ModelConfig, build_network

    root = tmp_path_factory.mktemp("artefact")
    torch.manual_seed(0)
    config = ModelConfig(n_items=43_097, dim=32, interests=2, steps=1)
    net = build_network(config).eval()
    checkpoint = root / "run" / "best.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": net.state_dict(), "config": config.to_dict(), "train": {"max_len": 50}}, checkpoint)
    out, report = build_artefact(
        ExportOptions(checkpoint=str(checkpoint), out=str(root / "art"), data=str(DIGINETICA), parity_cases=2000)
    )
    assert report.passed
    return out


@pytest.fixture(scope="session")
def scorer(artefact: Path):
    from export.scorer import Scorer

    return Scorer(artefact, providers="cpu")
