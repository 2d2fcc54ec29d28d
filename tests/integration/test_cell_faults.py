"""The cell-activity stage through the real worker: a SIGKILL mid-stream changes no window.

Two workers count cells from a live stream; one is SIGKILLed at a moment when it has delivered
cell events past the behavior stage's last commit (so its restart sends them again) and restarted.
An uninterrupted run of the same input (one worker, its own topics on the same broker) runs beside
it. The final ``cell-activity`` windows (last record per cell and window) of the two runs must be
equal, every copy of a window must agree, and the replayed cell events must have been dropped.

Event time advances about 20 times faster than wall time here, so a source partition that stalls
during the outage would fall behind the others by more than any grace: the watermark idle time is
set far beyond the test (no source is taken for idle), as a real-time stream's would be relative
to an outage of seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from schemas import CellActivity, decode
from stream_app.kafka_io import client_options
from stream_app.pipelines.cells import decode_cell_events

if TYPE_CHECKING:
    from tests.integration.conftest import Deployment, Worker

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
USERS, ROUNDS = 30, 40
SPOTS = [(40.70, -74.00), (40.75, -73.98), (40.80, -73.95), (40.72, -73.90), (40.68, -73.97), (40.77, -74.02)]
ENV = {"STREAM_APP_CELL_WINDOW_S": "60", "STREAM_APP_CELL_STEP_S": "30", "STREAM_APP_GRACE_S": "10",
       "STREAM_APP_WATERMARK_IDLE_S": "3600", "STREAM_APP_H3_RESOLUTION": "8"}
Window = tuple[int, int, tuple[tuple[str, int], ...]]  # events, users, actions


def _workload(seed: int) -> list[dict]:
    """Every user at one of the spots each round, 10 s of event time per round, in time order."""
    rng = random.Random(seed)
    return [{"event_id": f"u{u}-{k}", "user_id": f"u{u}", "ts": NOW_MS + k * 10_000 + u * 100,
             "action": rng.choice(["view", "buy", "like"]), "lat": spot[0], "lon": spot[1]}
            for k in range(ROUNDS) for u in range(USERS) for spot in [rng.choice(SPOTS)]]


async def _committed_and_ends(deployment: Deployment, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """``group``'s committed offsets (0 when none) and the end offsets of ``topic``, by partition."""
    admin = AIOKafkaAdminClient(**client_options(deployment.settings))
    consumer = AIOKafkaConsumer(**client_options(deployment.settings))
    await admin.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(deployment.topic(topic), p)
               for p in consumer.partitions_for_topic(deployment.topic(topic)) or ()]
        ends = await consumer.end_offsets(tps)
        found = await admin.list_consumer_group_offsets(group, partitions=tps)
        committed = {tp.partition: max(0, found[tp].offset) if tp in found else 0 for tp in tps}
        return committed, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()
        await admin.close()


def _wait_committed_to_end(deployment: Deployment, stage: str, topic: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        committed, ends = asyncio.run(_committed_and_ends(deployment, f"{deployment.app_id}-{stage}", topic))
        if ends and all(committed[p] >= end for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{stage}: committed offsets {committed} did not reach {ends} in {timeout_s} s")
        time.sleep(0.5)


def _replayable_cell_events(deployment: Deployment) -> int:
    """Cell events already delivered whose source the behavior stage has not committed: what a
    restart of that stage sends again."""
    committed, _ = asyncio.run(_committed_and_ends(deployment, f"{deployment.app_id}-behavior", "user-events"))
    return sum(1 for record in deployment.read_to_end("cell-events")
               for event in decode_cell_events(record.value)
               if event.source_offset >= committed.get(event.source_partition, 0))


def _kill_when(worker: Worker, condition: Callable[[], bool], timeout_s: float = 40.0) -> None:
    """SIGKILL ``worker`` at a moment ``condition`` holds, checked while it is frozen (SIGSTOP)."""
    deadline = time.monotonic() + timeout_s
    while True:
        os.killpg(worker.process.pid, signal.SIGSTOP)
        if condition():
            worker.kill()
            return
        os.killpg(worker.process.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"the kill condition did not hold within {timeout_s} s")
        time.sleep(0.3)


def _windows(deployment: Deployment) -> tuple[dict[tuple[str, int], Window], list[str]]:
    """The last record of each (cell, window) of ``cell-activity``, and the windows whose copies disagree."""
    last: dict[tuple[str, int], Window] = {}
    disagreeing = []
    for record in deployment.read_to_end("cell-activity"):
        activity = decode(record.value, CellActivity)
        assert isinstance(activity, CellActivity)
        key = (activity.cell, activity.window_start)
        window = (activity.events, activity.users, tuple(sorted(activity.actions.items())))
        if key in last and last[key] != window:
            disagreeing.append(f"{key}: {last[key]} then {window}")
        last[key] = window
    return last, disagreeing


def _dropped_replays(workers: list[Worker]) -> float:
    pattern = re.compile(r'^stream_app_duplicate_events_total\{pipeline="cells"\} (\S+)$', re.MULTILINE)
    return sum(float(m.group(1)) for w in workers for m in pattern.finditer(w.metrics_text()))


@pytest.fixture
def reference(deployment: Deployment) -> Deployment:
    """A second namespace on the same broker for the uninterrupted run (workers stopped with the test's)."""
    other = type(deployment)(kafka=deployment.kafka, root=deployment.root / "reference",
                       prefix=f"r{uuid.uuid4().hex[:8]}-", extra_env={})
    other.root.mkdir()
    yield other
    other.stop()


def test_sigkill_mid_stream_gives_the_windows_of_an_uninterrupted_run(deployment, reference):
    events = _workload(7)
    reference.worker("reference", **ENV)
    crashing = deployment.worker("crashing", **ENV)
    survivor = deployment.worker("survivor", **ENV)
    streams = [d.produce_in_background(events, rate=60.0) for d in (reference, deployment)]
    _kill_when(crashing, lambda: _replayable_cell_events(deployment) > 0)
    restarted = deployment.worker("restarted", **ENV)
    for stream in streams:
        stream.join()

    for run in (reference, deployment):
        _wait_committed_to_end(run, "behavior", "user-events", timeout_s=60)
        _wait_committed_to_end(run, "cells", "cell-events", timeout_s=30)
    expected, _ = _windows(reference)
    got, disagreeing = _windows(deployment)

    assert len(expected) > 50, "the uninterrupted run closed windows"
    assert got == expected, (sorted(set(got) ^ set(expected))[:10],
                             [(k, got[k], expected[k]) for k in got if k in expected and got[k] != expected[k]][:10])
    assert not disagreeing, disagreeing[:10]
    assert _dropped_replays([survivor, restarted]) > 0, "the replayed cell events were dropped by their source"
