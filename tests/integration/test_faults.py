"""Faults through the real worker on the transport hot path, every event counted by its id.

- SIGKILL a worker while it holds processed but uncommitted events, restart it: the restart
  replays them (duplicates > 0), no event is missing, duplicated predictions agree (top-k and
  model version), every user's state equals an uninterrupted run's, and the committed offsets
  reach the end of the input within seconds after it stops.
- The same SIGKILL with no checkpoint (the per-user Markov fallback): duplicates agree, probabilities too.
- Scale 1 -> 2 -> 1 on a live stream, the second worker SIGKILLed: the same, read from the survivor.
- ``exactly_once``, SIGKILLed inside an open transaction: a ``read_committed`` reader sees every
  event once; the aborted copies are visible only to a ``read_uncommitted`` reader.
- The broker SIGKILLed and restarted on the same port and data: nothing missing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
import torch
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel
from models.next_action.training import model_version, save_next_action
from schemas import NextActionPrediction, decode
from stream_app.broker import EmbeddedBroker, free_port
from stream_app.cli.io import to_records
from stream_app.kafka_io import client_options

if TYPE_CHECKING:
    from tests.integration.conftest import Deployment, Worker

pytestmark = pytest.mark.integration

ACTIONS = [f"a{i}" for i in range(12)]
NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
USERS, TOP_K = 40, 5
PREDICTIONS = "next-action-predictions"


def _checkpoint(path: Path) -> Path:
    """A small, randomly initialized (seeded) next-action model."""
    vocab, spec = Vocabulary(ACTIONS), FeatureSpec(n_cell_buckets=16)
    config = NextActionConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=12, n_cell_buckets=16, cell_dim=4,
                              attn_dim=8, pair_dim=4, window_size=6, dropout=0.0)
    torch.manual_seed(3)
    model = NextActionModel(config).eval()
    metadata = {"config": config.to_dict(), "vocabulary": vocab.to_list(), "features": spec.to_dict()}
    metadata["version"] = model_version(model, metadata)
    return save_next_action(path, model, metadata)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"STREAM_APP_CHECKPOINT": str(_checkpoint(tmp_path / "model.pt")), "STREAM_APP_TOP_K": str(TOP_K),
            **extra}


def _workload(seed: int, per_user: int) -> list[dict]:
    """Each user's events in time order, users interleaved."""
    rng = random.Random(seed)
    return [{"event_id": f"u{u}-{k}", "user_id": f"u{u}", "ts": NOW_MS + k * 60_000 + u, "action": rng.choice(ACTIONS)}
            for k in range(per_user) for u in range(USERS)]


def _predictions(deployment: Deployment, isolation: str = "read_uncommitted") -> dict[str, list[NextActionPrediction]]:
    """Every prediction written so far, by event id (duplicates in the lists)."""
    copies: dict[str, list[NextActionPrediction]] = defaultdict(list)
    for record in deployment.read_to_end(PREDICTIONS, isolation):
        prediction = decode(record.value, NextActionPrediction)
        assert isinstance(prediction, NextActionPrediction)
        copies[prediction.event_id].append(prediction)
    return copies


def _wait_for_predictions(deployment: Deployment, count: int, timeout_s: float = 60.0,
                          isolation: str = "read_uncommitted") -> dict[str, list[NextActionPrediction]]:
    """Predictions once ``count`` distinct events have one (or the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        copies = _predictions(deployment, isolation)
        if len(copies) >= count or time.monotonic() > deadline:
            return copies
        time.sleep(0.5)


async def _commit_lag(settings, group: str, topic: str) -> tuple[int, int]:
    """(records of ``topic`` after ``group``'s committed offsets, committed offsets summed)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    consumer = AIOKafkaConsumer(**client_options(settings))
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = await consumer.end_offsets(tps)
        found = await admin.list_consumer_group_offsets(group, partitions=tps)
        committed = {tp: max(0, found[tp].offset) if tp in found else 0 for tp in tps}
        return sum(ends[tp] - committed[tp] for tp in tps), sum(committed.values())
    finally:
        await consumer.stop()
        await admin.close()


def _behavior_commits(deployment: Deployment) -> tuple[int, int]:
    group, topic = f"{deployment.app_id}-behavior", deployment.topic("user-events")
    return asyncio.run(_commit_lag(deployment.settings, group, topic))


def _wait_for_commits(deployment: Deployment, timeout_s: float) -> float:
    """Seconds until the behavior group's committed offsets reach the end of user-events."""
    started = time.monotonic()
    while True:
        lag, _ = _behavior_commits(deployment)
        if lag == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"committed offsets still {lag} records behind after {timeout_s} s")
        time.sleep(0.5)


def _kill_when(worker: Worker, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """SIGKILL ``worker`` at a moment ``condition`` holds. It is checked while the worker is frozen
    (SIGSTOP), so no checkpoint slips in between the check and the kill."""
    pgid = worker.process.pid
    deadline = time.monotonic() + timeout_s
    while True:
        os.killpg(pgid, signal.SIGSTOP)
        if condition():
            worker.kill()  # SIGKILL ends a stopped process too
            return
        os.killpg(pgid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"the kill condition did not hold within {timeout_s} s")
        time.sleep(0.2)


def _check_predictions(copies: dict[str, list[NextActionPrediction]], events: list[dict]) -> int:
    """Every event has a prediction and its copies agree; the number of extra copies."""
    missing = {e["event_id"] for e in events} - set(copies)
    assert not missing, f"{len(missing)} events have no prediction, e.g. {sorted(missing)[:5]}"
    for first, *others in copies.values():
        for other in others:
            assert [s.action for s in other.top_k] == [s.action for s in first.top_k], first.event_id
            assert other.model_version == first.model_version
            assert msgspec.structs.replace(other, processed_at=0, top_k=[]) == \
                msgspec.structs.replace(first, processed_at=0, top_k=[])
    return sum(len(c) - 1 for c in copies.values())


def _check_user_counts(worker: Worker, per_user: int) -> None:
    for user in range(USERS):
        assert worker.get_json(f"/users/u{user}")["event_count"] == per_user, f"u{user}'s state"


def _kill_past_commit_and_restart(deployment: Deployment, events: list[dict], env: dict[str, str]
                                  ) -> tuple[int, Worker]:
    """Stream ``events`` into a worker, SIGKILL it once it has predicted events past its last
    commit, start another and wait for the input to be sent: (events past the commit, the restarted)."""
    crashing = deployment.worker("crashing", **env)
    producer = deployment.produce_in_background(events, rate=100.0)
    _wait_for_predictions(deployment, 100)
    ahead = 0

    def processed_past_commit() -> bool:
        nonlocal ahead
        ahead = len(_predictions(deployment)) - _behavior_commits(deployment)[1]
        return ahead > 0

    _kill_when(crashing, processed_past_commit)
    restarted = deployment.worker("after", **env)
    producer.join()
    return ahead, restarted


@pytest.mark.parametrize("seed", [11, 12])
def test_sigkill_mid_stream_loses_nothing_and_duplicates_agree(deployment, tmp_path, seed):
    env, per_user = _env(tmp_path), 10
    events = _workload(seed, per_user)
    ahead, restarted = _kill_past_commit_and_restart(deployment, events, env)

    duplicates = _check_predictions(_wait_for_predictions(deployment, len(events), timeout_s=90), events)
    assert duplicates >= ahead > 0, "the events processed after the last commit are processed again"
    _check_user_counts(restarted, per_user)
    assert _wait_for_commits(deployment, timeout_s=15) < 15


def test_scale_out_and_in_with_sigkill_loses_nothing(deployment, tmp_path):
    env, per_user = _env(tmp_path), 25
    events = _workload(21, per_user)
    before, during = events[:len(events) * 3 // 5], events[len(events) * 3 // 5:]
    first = deployment.worker("first", **env)
    producer = deployment.produce_in_background(before, rate=60.0)
    _wait_for_predictions(deployment, 100)
    second = deployment.worker("second", **env)
    consumed = 'stream_app_events_consumed_total{topic="' + deployment.topic("user-events") + '"}'
    deadline = time.monotonic() + 45
    while consumed not in second.metrics_text() and time.monotonic() < deadline:
        time.sleep(0.3)  # the second worker owns a partition once it has consumed from it
    assert consumed in second.metrics_text(), "the second worker took over a partition"
    producer.join()  # each user's events stay in time order across the two producers
    producer = deployment.produce_in_background(during, rate=60.0)  # ~7 s: the kill lands while it sends
    time.sleep(1.0)
    assert producer.is_alive()
    second.kill()
    producer.join()

    _check_predictions(_wait_for_predictions(deployment, len(events), timeout_s=90), events)
    _check_user_counts(first, per_user)
    assert _wait_for_commits(deployment, timeout_s=20) < 20


def test_exactly_once_sigkill_shows_read_committed_readers_each_event_once(deployment, tmp_path):
    env, per_user = _env(tmp_path, STREAM_APP_PROCESSING_GUARANTEE="exactly_once"), 10
    events = _workload(31, per_user)
    crashing = deployment.worker("crashing", **env)
    producer = deployment.produce_in_background(events, rate=100.0)
    _wait_for_predictions(deployment, 100, isolation="read_committed")

    def transaction_open_with_outputs() -> bool:
        uncommitted = _predictions(deployment, "read_uncommitted")
        return sum(map(len, uncommitted.values())) > sum(map(len, _predictions(deployment, "read_committed").values()))

    _kill_when(crashing, transaction_open_with_outputs)
    restarted = deployment.worker("after", **env)
    producer.join()

    committed = _wait_for_predictions(deployment, len(events), timeout_s=90, isolation="read_committed")
    assert _check_predictions(committed, events) == 0, "a read_committed reader sees each event once"
    assert _check_predictions(_predictions(deployment, "read_uncommitted"), events) > 0, "the aborted copies exist"
    _check_user_counts(restarted, per_user)
    assert _wait_for_commits(deployment, timeout_s=15) < 15


def test_broker_killed_and_restarted_in_place_loses_nothing(deployment, tmp_path):
    broker = EmbeddedBroker(kind="kafka", port=free_port(), data_dir=tmp_path / "broker")
    deployment.kafka = broker.start()  # this test's own broker, not the session's
    try:
        env, per_user = _env(tmp_path), 6
        events = _workload(41, per_user)
        half = len(events) // 2
        worker = deployment.worker("w", **env)
        deployment.produce(to_records(events[:half]))
        assert len(_wait_for_predictions(deployment, half)) >= half
        os.killpg(broker.pid, signal.SIGKILL)
        time.sleep(3)
        broker.start()  # same port, same data
        deployment.produce(to_records(events[half:]))
        _check_predictions(_wait_for_predictions(deployment, len(events), timeout_s=60), events)
        _check_user_counts(worker, per_user)
        assert _wait_for_commits(deployment, timeout_s=20) < 20
    finally:
        deployment.stop()
        broker.stop()


def test_broker_killed_while_the_worker_starts_loses_nothing(deployment, tmp_path):
    """Faust's start gives up on a broker that goes away under it: the worker starts again by itself
    (same pid) until the broker is back, then serves every event."""
    broker = EmbeddedBroker(kind="kafka", port=free_port(), data_dir=tmp_path / "broker")
    deployment.kafka = broker.start()
    try:
        env, per_user = _env(tmp_path), 4
        events = _workload(43, per_user)
        worker = deployment.worker("w", **env)  # its web server is up: the stages are starting
        os.killpg(broker.pid, signal.SIGKILL)
        time.sleep(3)
        broker.start()  # same port, same data
        deployment.produce(to_records(events))
        _check_predictions(_wait_for_predictions(deployment, len(events), timeout_s=90), events)
        _check_user_counts(worker, per_user)
        assert worker.process.poll() is None, "the worker is still the process the test started"
    finally:
        deployment.stop()
        broker.stop()


def test_sigkill_with_the_fallback_model_duplicates_agree(deployment):
    """No checkpoint: the per-user Markov fallback serves. Its predictions depend only on the user's
    changelogged state, so the events replayed after a crash get the same top-k, probabilities included."""
    env, per_user = {"STREAM_APP_TOP_K": str(TOP_K)}, 10
    events = _workload(13, per_user)
    ahead, restarted = _kill_past_commit_and_restart(deployment, events, env)

    copies = _wait_for_predictions(deployment, len(events), timeout_s=90)
    assert _check_predictions(copies, events) >= ahead > 0, "the events processed after the last commit came again"
    assert all(other.top_k == first.top_k for first, *others in copies.values() for other in others)
    assert {c[0].model_version for c in copies.values()} == {"markov-user"}
    _check_user_counts(restarted, per_user)
