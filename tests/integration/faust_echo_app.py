"""A minimal faust-streaming app for the integration test: read ``Click`` records, emit ``Doubled`` ones.

Run as ``python faust_echo_app.py worker``; the topics, app id and data folder come from the environment.
"""

from __future__ import annotations

import os

import faust

from streams.settings import Settings


class Click(faust.Record, serializer="json"):
    user: str
    n: int


class Doubled(faust.Record, serializer="json"):
    user: str
    n: int
    doubled: int


settings = Settings.load()
app = faust.App(
    os.environ["ECHO_APP_ID"],
    **settings.faust_broker(),
    datadir=os.environ["ECHO_DATADIR"],
    web_enabled=False,
    topic_partitions=2,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ["ECHO_IN"], key_type=str, value_type=Click)
sink = app.topic(os.environ["ECHO_OUT"], key_type=str, value_type=Doubled)


@app.agent(source)
async def double(clicks: faust.StreamT[Click]) -> None:
    async for key, click in clicks.items():
        await sink.send(key=key, value=Doubled(user=click.user, n=click.n, doubled=2 * click.n))


if __name__ == "__main__":
    app.main()
