"""Failures injected at the worst moments of a checkpoint, in one process on the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from stream_app.transport import TransportMetrics
from stream_app.transport.changelog import decode_mark
from stream_app.transport.testing import (
    check_outputs,
    count_transport,
    expected_state,
    keyed,
    make_events,
    run_count_to_end,
)

pytestmark = pytest.mark.integration


class Crash(Exception):
    """Stands for the process dying: the transport closes without a checkpoint."""


def test_changelog_flushed_but_offsets_not_committed_is_undone_on_restore(kafka_topics, tmp_path):
    events = make_events(2000, users=40, seed=41)
    kafka_topics.produce(keyed(events[:1000]))
    config = kafka_topics.config(tmp_path / "state")
    run_count_to_end(kafka_topics, config)
    kafka_topics.produce(keyed(events[1000:]))

    async def crash_between_flush_and_commit() -> None:
        transport = count_transport(config, kafka_topics.topic("out"))
        await transport.start()

        async def die(offsets) -> None:  # the changelog and outputs are flushed; the commit never happens
            raise Crash("killed before the offset commit")

        transport._consumer.commit = die
        with pytest.raises(Crash):
            await transport.run()

    asyncio.run(crash_between_flush_and_commit())
    changelog = f"{kafka_topics.app_id}-count-changelog"
    ends = kafka_topics.end_offsets(changelog)
    marks = {tp.partition: decode_mark(meta.metadata)["count"] for tp, meta in asyncio.run(
        _offsets(kafka_topics, config.group)).items()}
    assert any(ends[p] > marks[p] for p in ends), "the crash left changelog records past the committed mark"

    resumed = run_count_to_end(kafka_topics, config)[0]

    check = check_outputs(kafka_topics.outputs(), events)
    assert (check.missing, check.wrong) == ([], []), "replayed outputs equal the first ones"
    assert check.duplicates > 0
    assert kafka_topics.changelog_state() == expected_state(events), "orphaned keys were rewritten"
    assert sum(resumed.last_restore.orphans.values()) > 0


async def _offsets(kafka, group):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        return await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()


def test_exactly_once_failed_transactions_are_aborted_and_replayed(kafka_topics, tmp_path, monkeypatch):
    events = make_events(2000, users=40, seed=42)
    kafka_topics.produce(keyed(events))
    original = AIOKafkaProducer.commit_transaction
    failures = {"left": 2}

    async def flaky_commit(self) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise KafkaError("injected: transaction coordinator unavailable")
        await original(self)

    monkeypatch.setattr(AIOKafkaProducer, "commit_transaction", flaky_commit)
    config = kafka_topics.config(tmp_path / "state", guarantee="exactly_once")

    registry = CollectorRegistry()
    run_count_to_end(kafka_topics, config, metrics=TransportMetrics.create(registry))

    assert failures["left"] == 0
    assert registry.get_sample_value("stream_app_transport_checkpoint_failures_total",
                                     {"pipeline": "count", "stage": "deliver"}) == 2
    check = check_outputs(kafka_topics.outputs(isolation_level="read_committed"), events)
    assert (check.missing, check.wrong, check.duplicates) == ([], [], 0)
    assert check_outputs(kafka_topics.outputs(), events).duplicates > 0, "the aborted outputs were written"
    assert kafka_topics.changelog_state(isolation_level="read_committed") == expected_state(events)
