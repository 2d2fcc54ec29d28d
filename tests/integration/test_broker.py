"""The embedded broker starts, serves a produce/consume round trip, and stops without leftovers."""

from __future__ import annotations

import asyncio
import os

import pytest

from stream_app.broker import EmbeddedBroker
from stream_app.kafka_io import consume, produce
from stream_app.settings import Settings

pytestmark = pytest.mark.integration


async def _round_trip(settings: Settings) -> list[tuple[bytes, bytes]]:
    await produce(settings, [("round-trip", f"k{i}".encode(), f"v{i}".encode()) for i in range(5)])
    got = []
    async for record in consume(settings, ["round-trip"], idle_timeout_s=5):
        got.append((record.key, record.value))
        if len(got) == 5:
            break
    return sorted(got)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("kind", ["kafka", "tansu"])
def test_broker_round_trip_and_clean_stop(kind):
    broker = EmbeddedBroker(kind=kind)
    info = broker.start()
    pid, workdir = broker.pid, broker._workdir
    try:
        assert info.kind == kind and info.host == "127.0.0.1"
        settings = Settings(broker=info.url, partitions=1)
        assert asyncio.run(_round_trip(settings)) == sorted((f"k{i}".encode(), f"v{i}".encode()) for i in range(5))
    finally:
        broker.stop()
    assert not _alive(pid), "the broker process is gone"
    assert not workdir.exists(), "its log and data folder are removed"
