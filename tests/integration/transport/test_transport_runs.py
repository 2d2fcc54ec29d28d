"""The transport in one process on the real broker: a full run, restores from snapshots and
changelogs, key mismatches, and the partition-owner map every worker shares."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream_app.transport import PAYLOAD_HEADER, Transport, TransportMetrics
from stream_app.transport.testing import (
    check_outputs,
    count_transport,
    decode_count_state,
    expected_state,
    keyed,
    make_events,
    run_count_to_end,
    wait_until,
)

pytestmark = pytest.mark.integration


def run_to_end(kafka, state_dir: Path, timeout_s: float = 40.0, **kwargs) -> tuple[Transport, dict]:
    """A count transport on ``state_dir`` run until its commits reach the input's end (run_count_to_end)."""
    return run_count_to_end(kafka, kafka.config(state_dir), timeout_s, **kwargs)


def restore_only(kafka, state_dir: Path) -> tuple[Transport, dict]:
    """Start a transport, wait until every partition is restored, stop it."""
    async def main() -> tuple[Transport, dict]:
        transport = count_transport(kafka.config(state_dir), kafka.topic("out"))
        await transport.start()
        task = asyncio.create_task(transport.run())

        async def restored() -> bool:
            return all(transport.is_local(p) for p in range(kafka.partitions))

        await wait_until(restored, 30.0, "all partitions restored")
        state = {key: decode_count_state(value) for key, value in transport.items()}
        transport.stop()
        await task
        return transport, state
    return asyncio.run(main())


def test_a_run_gives_one_output_per_record_and_state_and_offsets_that_match(kafka_topics, tmp_path: Path):
    events = make_events(3000, users=80, seed=1)
    kafka_topics.produce(keyed(events))
    checkpoints_started = []

    transport, state = run_to_end(kafka_topics, tmp_path / "state",
                                  before_checkpoint=lambda: checkpoints_started.append(1))

    check = check_outputs(kafka_topics.outputs(), events)
    assert (check.outputs, check.duplicates, check.missing, check.wrong) == (3000, 0, [], [])
    assert state == expected_state(events)
    assert kafka_topics.changelog_state() == expected_state(events), "a restore from scratch gives the same state"
    group = transport.config.group
    assert kafka_topics.committed(group) == kafka_topics.end_offsets(kafka_topics.topic("in"))
    assert transport.checkpoints >= 1
    assert len(checkpoints_started) >= transport.checkpoints, "the pipeline's write-behind hook ran first"


def test_e_restore_reads_only_the_changelog_tail_after_an_intact_snapshot(kafka_topics, tmp_path: Path):
    changelog = f"{kafka_topics.app_id}-count-changelog"
    first, second = make_events(1500, users=300, seed=2), make_events(3000, users=300, seed=3)[1500:]
    kafka_topics.produce(keyed(first))
    run_to_end(kafka_topics, tmp_path / "a")  # clean stop: snapshots at the changelog end
    snapshot_ends = kafka_topics.end_offsets(changelog)
    kafka_topics.produce(keyed(second))
    fresh, _ = run_to_end(kafka_topics, tmp_path / "b")  # another worker, no snapshot: the whole changelog
    assert fresh.last_restore.total_read == sum(snapshot_ends.values())
    ends = kafka_topics.end_offsets(changelog)

    resumed, state = restore_only(kafka_topics, tmp_path / "a")

    tail = {p: ends[p] - snapshot_ends[p] for p in ends}
    read = {p: resumed.last_restore.records_read[("count", p)] for p in ends}
    assert read == tail, "only the records after the snapshot are read"
    assert 0 < sum(tail.values()) < sum(ends.values())
    assert sum(resumed.last_restore.snapshot_entries.values()) > 0
    assert state == expected_state(first + second)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_e_a_damaged_or_missing_snapshot_falls_back_to_the_whole_changelog(kafka_topics, tmp_path: Path,
                                                                           damage: str):
    events = make_events(1500, users=200, seed=4)
    kafka_topics.produce(keyed(events))
    run_to_end(kafka_topics, tmp_path / "a")
    snapshots = sorted((tmp_path / "a").rglob("*.snapshot"))
    assert len(snapshots) == kafka_topics.partitions
    for path in snapshots:
        if damage == "corrupt":
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(bytes(raw))
        else:
            path.unlink()
    ends = kafka_topics.end_offsets(f"{kafka_topics.app_id}-count-changelog")

    resumed, state = restore_only(kafka_topics, tmp_path / "a")

    assert {p: resumed.last_restore.records_read[("count", p)] for p in ends} == ends
    assert sum(resumed.last_restore.snapshot_entries.values()) == 0
    assert state == expected_state(events)


def test_f_records_keyed_other_than_their_user_are_dead_lettered_and_counted(kafka_topics, tmp_path: Path):
    events = make_events(600, users=20, seed=5)
    stray = [{"event_id": f"x{i}", "user_id": "u1", "ts": events[-1]["ts"] + i, "action": "view"} for i in range(8)]
    records = keyed(events)
    records += [(b"u2", json.dumps(e).encode()) for e in stray[:5]]   # key of another user
    records += [(None, json.dumps(e).encode()) for e in stray[5:]]    # no key at all
    binary = [b"\xff\xfe\x00 not json", bytes(range(256)) * 30]
    records += [(b"u1", value) for value in binary]
    kafka_topics.produce(records)
    registry = CollectorRegistry()
    metrics = TransportMetrics.create(registry)

    _, state = run_to_end(kafka_topics, tmp_path / "state", metrics=metrics)

    assert state == expected_state(events), "no stray record reached the state"
    check = check_outputs(kafka_topics.outputs(), events)
    assert (check.missing, check.wrong) == ([], [])
    letters = kafka_topics.read("dead-letters")
    by_reason: dict[str, list] = {}
    for record in letters:
        by_reason.setdefault(json.loads(record.value)["reason"], []).append(record)
    assert sorted((r, len(v)) for r, v in by_reason.items()) == [("key_mismatch", 8), ("malformed_json", 2)]
    sent = {value for _, value in records[len(events):]}
    assert {dict(r.headers)[PAYLOAD_HEADER] for r in letters} == sent, "payloads kept byte for byte"
    assert sorted(r.key for r in by_reason["key_mismatch"] if r.key is not None) == [b"u2"] * 5
    in_topic = kafka_topics.topic("in")
    assert registry.get_sample_value("stream_app_dead_letters_total",
                                     {"topic": in_topic, "reason": "key_mismatch"}) == 8
    assert registry.get_sample_value("stream_app_events_consumed_total", {"topic": in_topic}) == len(records)


def test_every_worker_knows_which_worker_owns_each_partition(kafka_topics, tmp_path: Path):
    async def main() -> None:
        urls = ["http://10.0.0.1:6066", "http://10.0.0.2:6066"]
        transports = [count_transport(kafka_topics.config(tmp_path / f"w{i}", advertised_url=url),
                                      kafka_topics.topic("out")) for i, url in enumerate(urls)]
        tasks = []
        for transport in transports:
            await transport.start()
            tasks.append(asyncio.create_task(transport.run()))

        async def split() -> bool:
            owned = [{p for p in range(kafka_topics.partitions) if t.is_local(p)} for t in transports]
            return all(owned) and set.union(*owned) == set(range(kafka_topics.partitions)) and not set.intersection(
                *owned) and all(t.owner_of(0) for t in transports)

        try:
            await wait_until(split, 40.0, "both workers owning partitions")
            for partition in range(kafka_topics.partitions):
                owner = urls[0] if transports[0].is_local(partition) else urls[1]
                assert [t.owner_of(partition) for t in transports] == [owner, owner]
        finally:
            for transport in transports:
                transport.stop()
            await asyncio.gather(*tasks)
    asyncio.run(main())
