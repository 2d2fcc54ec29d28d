"""Faults through the real worker on the transport hot path, every event counted by its id.

SIGKILL a worker while events flow, restart it: no event is missing, duplicated predictions agree
(top-k and model version), every user's state equals an uninterrupted run's, and the committed
offsets reach the end of the input within seconds after it stops.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

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
from stream_app.cli.io import to_records
from stream_app.kafka_io import client_options, produce

pytestmark = pytest.mark.integration

ACTIONS = [f"a{i}" for i in range(12)]
NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
USERS, PER_USER, TOP_K = 40, 10, 5


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


def _workload(seed: int) -> list[dict]:
    """Each user's events in time order, users interleaved."""
    rng = random.Random(seed)
    return [{"event_id": f"u{u}-{k}", "user_id": f"u{u}", "ts": NOW_MS + k * 60_000 + u, "action": rng.choice(ACTIONS)}
            for k in range(PER_USER) for u in range(USERS)]


def _produce_in_background(deployment, events: list[dict], rate: float) -> threading.Thread:
    records = [(deployment.topic(t), k, v) for t, k, v in to_records(events)]
    thread = threading.Thread(target=lambda: asyncio.run(produce(deployment.settings, records, rate=rate)))
    thread.start()
    return thread


async def _commit_lag(settings, group: str, topic: str) -> int:
    """Records of ``topic`` after ``group``'s committed offsets (all partitions)."""
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
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(ends[tp] - max(0, committed[tp].offset if tp in committed else 0) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


def _wait_for_commits(deployment, timeout_s: float) -> float:
    """Seconds until the behavior group's committed offsets reach the end of user-events."""
    started = time.monotonic()
    group, topic = f"{deployment.app_id}-behavior", deployment.topic("user-events")
    while True:
        lag = asyncio.run(_commit_lag(deployment.settings, group, topic))
        if lag == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"committed offsets still {lag} records behind after {timeout_s} s")
        time.sleep(0.5)


@pytest.mark.parametrize("seed", [11, 12])
def test_sigkill_mid_stream_loses_nothing_and_duplicates_agree(deployment, tmp_path, seed):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    env = {"STREAM_APP_CHECKPOINT": str(checkpoint), "STREAM_APP_TOP_K": str(TOP_K)}
    events = _workload(seed)
    deployment.worker("crashing", **env)
    producer = _produce_in_background(deployment, events, rate=100.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(deployment.collect("next-action-predictions", 120, timeout_s=2,
                                                                 settle_s=0)) < 120:
        pass
    deployment.workers[0].kill()
    restarted = deployment.worker("after", **env)
    producer.join()

    records = deployment.collect("next-action-predictions", len(events), settle_s=3)
    copies: dict[str, list[NextActionPrediction]] = defaultdict(list)
    for record in records:
        prediction = decode(record.value, NextActionPrediction)
        assert isinstance(prediction, NextActionPrediction)
        copies[prediction.event_id].append(prediction)
    missing = {e["event_id"] for e in events} - set(copies)
    assert not missing, f"{len(missing)} events have no prediction"
    for first, *others in copies.values():
        for other in others:
            assert [s.action for s in other.top_k] == [s.action for s in first.top_k], first.event_id
            assert other.model_version == first.model_version
            assert msgspec.structs.replace(other, processed_at=0, top_k=[]) == \
                msgspec.structs.replace(first, processed_at=0, top_k=[])
    for user in range(USERS):
        assert restarted.get_json(f"/users/u{user}")["event_count"] == PER_USER, f"u{user}'s state"
    assert _wait_for_commits(deployment, timeout_s=15) < 15
