"""The KRaft cluster id that ``igrec stack up`` formats Kafka's storage with (no server is started)."""

from __future__ import annotations

import base64
import re

from deploy import stack


def test_a_cluster_id_that_would_read_as_an_option_is_drawn_again() -> None:
    dash_first = bytes([0xF8]) + bytes(15)
    plain = bytes(range(16))
    assert base64.urlsafe_b64encode(dash_first).decode().startswith("-")
    draws = iter([dash_first, dash_first, plain])
    cluster_id = stack.kafka_cluster_id(lambda: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(plain).decode().rstrip("=")


def test_random_cluster_ids_are_22_url_safe_characters_never_led_by_a_dash() -> None:
    ids = {stack.kafka_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)
