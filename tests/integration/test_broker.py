"""The embedded broker starts, serves a produce/consume round trip, stops without leftovers, and with a
fixed port and data folder comes back with its records."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from stream_app.broker import EmbeddedBroker, free_port
from stream_app.exceptions import BrokerError
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
    pid, workdir = broker.pid, broker.workdir
    try:
        assert info.kind == kind and info.host == "127.0.0.1"
        settings = Settings(broker=info.url, partitions=1)
        assert asyncio.run(_round_trip(settings)) == sorted((f"k{i}".encode(), f"v{i}".encode()) for i in range(5))
    finally:
        broker.stop()
    assert not _alive(pid), "the broker process is gone"
    assert not workdir.exists(), "its log and data folder are removed"


async def _read_all(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    return [(record.key, record.value) async for record in consume(settings, [topic], idle_timeout_s=10)]


def test_broker_with_port_and_data_dir_comes_back_with_its_records(tmp_path: Path):
    port, data_dir = free_port(), tmp_path / "kafka"
    records = [("kept", f"k{i}".encode(), f"v{i}".encode()) for i in range(10)]

    with EmbeddedBroker(kind="kafka", port=port, data_dir=data_dir) as info:
        assert info.port == port
        asyncio.run(produce(Settings(broker=info.url, partitions=1), records))
    meta = (data_dir / "data" / "meta.properties").read_text()
    controller_port = (data_dir / "controller.port").read_text()
    assert "cluster.id=" in meta, "formatted into the data folder"

    broker = EmbeddedBroker(kind="kafka", port=port, data_dir=data_dir)
    with broker as info:
        assert info.port == port and broker.workdir == data_dir.resolve()
        assert asyncio.run(_read_all(Settings(broker=info.url), "kept")) == [(k, v) for _, k, v in records]
    assert (data_dir / "data" / "meta.properties").read_text() == meta, "not formatted again: same cluster id"
    assert (data_dir / "controller.port").read_text() == controller_port, "same controller endpoint"
    assert data_dir.is_dir(), "a data folder is kept at stop"


def test_fixed_port_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"{port}.*in use"):
            EmbeddedBroker(kind="kafka", port=port, data_dir=tmp_path / "kafka").start()
    assert not (tmp_path / "kafka").exists(), "nothing was started or formatted"


def test_data_dir_needs_apache_kafka(tmp_path: Path):
    with pytest.raises(BrokerError, match="Apache Kafka"):
        EmbeddedBroker(kind="tansu", data_dir=tmp_path / "kafka").start()
