"""A broker outage under a running transport (a broker of its own, SIGKILLed and restarted on the
same port and data): one log line for the outage and one when it ends, however many connection
attempts fail in between, and nothing lost once the broker is back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.broker import EmbeddedBroker, free_port
from stream_app.transport import TransportConfig, install_outage_filter
from stream_app.transport.testing import check_outputs, count_transport, keyed, make_events

pytestmark = pytest.mark.integration

OUTAGE_S = 8.0


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _send(bootstrap: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in keyed(events):
            await producer.send("in", key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def _outputs(bootstrap: str, count: int, timeout_s: float = 30.0) -> list[dict]:
    consumer = AIOKafkaConsumer("out", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                values.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return values


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_broker_outage_is_logged_once_and_survived(tmp_path: Path):
    broker = EmbeddedBroker(kind="kafka", port=free_port(), data_dir=tmp_path / "broker")
    info = broker.start()
    collect = Collect()
    logging.getLogger().addHandler(collect)
    noise = install_outage_filter()
    quiet_s, noise.quiet_s = noise.quiet_s, 2.0
    events = make_events(1000, users=20)
    try:
        async def main() -> tuple[list[logging.LogRecord], int, list[dict]]:
            admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(name, 2, 1) for name in ("in", "out", "dead-letters")])
            await admin.close()
            await _send(info.bootstrap, events[:500])
            config = TransportConfig(name="count", app_id="outage", input_topic="in", dead_letter_topic="dead-letters",
                                     state_dir=tmp_path / "state", client_options={"bootstrap_servers": info.bootstrap},
                                     commit_interval_s=0.5, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                     rebalance_timeout_ms=3000)
            transport = count_transport(config, "out")
            await transport.start()
            task = asyncio.create_task(transport.run())
            await _until(lambda: transport.is_local(0) and transport.is_local(1), 30, "partitions restored")
            seen_before, outages_before = len(collect.records), noise.outages
            os.killpg(broker.pid, signal.SIGKILL)
            await _until(lambda: noise.in_outage, 15, "the outage to be noticed")
            await asyncio.sleep(OUTAGE_S)
            suppressed = noise.suppressed
            await asyncio.to_thread(broker.start)  # same port, same data
            await _send(info.bootstrap, events[500:])
            outputs = await _outputs(info.bootstrap, len(events))
            await _until(lambda: not noise.in_outage, 30, "the end of the outage to be reported")
            transport.stop()
            await task
            assert noise.outages - outages_before == 1
            return collect.records[seen_before:], suppressed, outputs

        during, suppressed, outputs = asyncio.run(main())
    finally:
        noise.quiet_s = quiet_s
        logging.getLogger().removeHandler(collect)
        broker.stop()

    aiokafka_lines = [r.getMessage() for r in during if r.name.startswith("aiokafka")]
    assert suppressed >= 20, "the outage produced many connection errors"
    assert sum("counted, not logged" in line for line in aiokafka_lines) == 1
    # What remains is the broker's restart as the group sees it (a rejoin, leaders moving), not per-attempt noise.
    assert len(aiokafka_lines) <= 12, aiokafka_lines
    summaries = [r.getMessage() for r in during if r.name == "stream_app.transport.noise"]
    assert len(summaries) == 1 and "more were not logged" in summaries[0]
    check = check_outputs(outputs, events)
    assert (check.missing, check.wrong) == ([], [])


def test_a_transport_started_while_the_broker_is_down_waits_for_it(tmp_path: Path):
    """A worker's stage may start while its broker restarts (the stages start one after another):
    the start is retried until the broker is back, then every event is processed."""
    broker = EmbeddedBroker(kind="kafka", port=free_port(), data_dir=tmp_path / "broker")
    info = broker.start()
    events = make_events(300, users=10)
    try:
        async def main() -> list[dict]:
            admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(name, 2, 1) for name in ("in", "out", "dead-letters")])
            await admin.close()
            await _send(info.bootstrap, events)
            os.killpg(broker.pid, signal.SIGKILL)
            config = TransportConfig(name="count", app_id="late-broker", input_topic="in",
                                     dead_letter_topic="dead-letters", state_dir=tmp_path / "state",
                                     client_options={"bootstrap_servers": info.bootstrap}, commit_interval_s=0.5,
                                     session_timeout_ms=6000, heartbeat_interval_ms=1000, rebalance_timeout_ms=3000)
            transport = count_transport(config, "out")
            starting = asyncio.create_task(transport.start())
            await asyncio.sleep(3)
            assert not starting.done(), "the start waits for the broker rather than failing"
            await asyncio.to_thread(broker.start)  # same port, same data
            await asyncio.wait_for(starting, 60)
            task = asyncio.create_task(transport.run())
            outputs = await _outputs(info.bootstrap, len(events))
            transport.stop()
            await task
            return outputs

        outputs = asyncio.run(main())
    finally:
        broker.stop()
    check = check_outputs(outputs, events)
    assert (check.missing, check.wrong) == ([], [])
