"""User events through the real broker: one prediction per event, equal to the offline model."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from models.next_action.features import EventRecord, FeatureSpec, Vocabulary, encode_events
from models.next_action.model import EventTensors, NextActionConfig, NextActionModel
from models.next_action.training import model_version, save_next_action
from schemas import NextActionPrediction, decode
from stream_app.cli.io import to_records
from tests.integration.cell_workload import CELL_ENV, check_cell_windows, closers, expected_windows, located_events

pytestmark = pytest.mark.integration

ACTIONS = [f"a{i}" for i in range(12)]
NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
TOP_K = 5


def _checkpoint(path: Path) -> Path:
    """A small, randomly initialized (seeded) next-action model: equality needs no training."""
    vocab = Vocabulary(ACTIONS)
    spec = FeatureSpec(lat_mean=40.7, lat_std=0.05, lon_mean=-74.0, lon_std=0.05, n_cell_buckets=64)
    config = NextActionConfig(vocab_size=len(vocab), embed_dim=16, hidden_dim=24, n_cell_buckets=64, cell_dim=4,
                              attn_dim=8, pair_dim=4, window_size=6, window_span_s=900.0, dropout=0.0)
    torch.manual_seed(3)
    model = NextActionModel(config).eval()
    metadata = {"config": config.to_dict(), "vocabulary": vocab.to_list(), "features": spec.to_dict()}
    metadata["version"] = model_version(model, metadata)
    return save_next_action(path, model, metadata)


def _workload(users: int, per_user: int, seed: int = 1) -> list[dict]:
    """Interleaved sequences; some events without location, one unseen token (OOV)."""
    rng = random.Random(seed)
    events = []
    for u in range(users):
        ts = NOW_MS + rng.randrange(60_000)
        for k in range(per_user):
            ts += rng.randrange(5_000, 400_000)
            event = {"event_id": f"u{u}-{k}", "user_id": f"u{u}", "ts": ts,
                     "action": rng.choice(ACTIONS + ["never-seen"])}
            if rng.random() < 0.8:
                event.update(lat=40.7 + rng.uniform(-0.05, 0.05), lon=-74.0 + rng.uniform(-0.05, 0.05))
            events.append(event)
    rng.shuffle(events)
    events.sort(key=lambda e: (int(e["event_id"].split("-")[1]), rng.random()))  # interleave, keep per-user order
    return events


def _offline_predictions(checkpoint: Path, events: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """event_id -> top-k from one full-sequence ``forward`` per user."""
    from models.next_action.training import load_next_action

    loaded = load_next_action(checkpoint)
    by_user = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    expected = {}
    for user_events in by_user.values():
        records = [EventRecord(e["action"], e["ts"], e.get("lat"), e.get("lon")) for e in user_events]
        batch = EventTensors.collate([encode_events(records, loaded.vocab, loaded.spec)])
        with torch.inference_mode():
            log_probs = loaded.model(batch)[0]
        probs = log_probs.exp().numpy()
        for position, event in enumerate(user_events):
            expected[event["event_id"]] = probs[position]
    return expected, loaded.vocab


def _assert_matches(predictions: list[NextActionPrediction], expected: dict, vocab: Vocabulary) -> None:
    for prediction in predictions:
        probs = expected[prediction.event_id]
        got = [(s.action, s.prob) for s in prediction.top_k]
        assert len(got) == TOP_K
        for action, prob in got:
            assert prob == pytest.approx(float(probs[vocab.encode(action)]), abs=1e-4), prediction.event_id
        kth = sorted(probs[2:], reverse=True)[TOP_K - 1]  # ids 0/1 are padding and OOV
        assert min(p for _, p in got) >= kth - 1e-4, "streamed top-k are the k most likely actions"


def _metric(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _assert_online_quality_equals_offline(metrics: str, events: list[dict], expected: dict, vocab) -> None:
    """Online Acc@k (each prediction against the user's next event) equals the offline count."""
    by_user = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    scored, hits = 0, {1: 0, 5: 0}
    for user_events in by_user.values():
        for event, following in itertools.pairwise(user_events):
            ranked = np.argsort(-expected[event["event_id"]][2:])[:TOP_K] + 2  # ids 0/1: padding, OOV
            tokens = [vocab.decode(int(i)) for i in ranked]
            scored += 1
            for k in hits:
                hits[k] += following["action"] in tokens[:k]
    assert _metric(metrics, "stream_app_online_scored_total") == scored
    for k, count in hits.items():
        assert _metric(metrics, f'stream_app_online_hits_total{{k="{k}"}}') == count
    assert hits[5] > 0


def _predictions(records) -> list[NextActionPrediction]:
    decoded = [decode(r.value, NextActionPrediction) for r in records]
    assert all(isinstance(p, NextActionPrediction) for p in decoded), "every prediction is schema-valid"
    return decoded


def test_one_prediction_per_event_equal_to_the_offline_model(deployment, tmp_path):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    events = _workload(users=25, per_user=8)
    deployment.worker(STREAM_APP_CHECKPOINT=str(checkpoint), STREAM_APP_TOP_K=str(TOP_K))
    deployment.produce(to_records(events))

    records = deployment.collect("next-action-predictions", len(events))
    predictions = _predictions(records)
    assert sorted(p.event_id for p in predictions) == sorted(e["event_id"] for e in events), \
        "exactly one prediction per event"
    assert all(r.key == p.user_id.encode() for r, p in zip(records, predictions, strict=True)), "keyed by user"
    expected, vocab = _offline_predictions(checkpoint, events)
    _assert_matches(predictions, expected, vocab)
    assert {p.model_version for p in predictions} == {json.loads(records[0].value)["model_version"]}
    assert predictions[0].model_version.startswith("gru-")

    _assert_online_quality_equals_offline(deployment.workers[0].metrics_text(), events, expected, vocab)

    user = deployment.workers[0].get_json("/users/u3")
    last = max((e for e in events if e["user_id"] == "u3"), key=lambda e: e["ts"])
    assert user["event_count"] == 8 and user["latest_prediction"]["event_id"] == last["event_id"]


def _halves(tmp_path: Path, seed: int) -> tuple[Path, list[dict], list[dict], list[dict], dict[str, str]]:
    """A checkpoint, 20 users' events split into each user's first and last five, and the worker env."""
    checkpoint = _checkpoint(tmp_path / "model.pt")
    events = _workload(users=20, per_user=10, seed=seed)
    first = [e for e in events if int(e["event_id"].split("-")[1]) < 5]
    second = [e for e in events if int(e["event_id"].split("-")[1]) >= 5]
    return checkpoint, events, first, second, {"STREAM_APP_CHECKPOINT": str(checkpoint), "STREAM_APP_TOP_K": str(TOP_K)}


def test_restart_recovers_state_exactly(deployment, tmp_path):
    checkpoint, events, first, second, env = _halves(tmp_path, seed=2)

    deployment.worker("before", **env)
    deployment.produce(to_records(first))
    assert len(deployment.collect("next-action-predictions", len(first), settle_s=2)) == len(first)
    deployment.workers[0].stop()

    deployment.worker("after", **env)  # a fresh data dir: state comes back from the changelog only
    deployment.produce(to_records(second))
    records = deployment.collect("next-action-predictions", len(events))
    copies = defaultdict(set)
    for record in records:
        copies[json.loads(record.value)["event_id"]].add(record.value)
    assert set(copies) == {e["event_id"] for e in events}, "nothing lost across the restart"
    assert all(len(values) == 1 for values in copies.values()), "a re-delivered event repeats its prediction"
    predictions = _predictions(records)
    expected, vocab = _offline_predictions(checkpoint, events)
    _assert_matches([p for p in predictions if int(p.event_id.split("-")[1]) >= 5], expected, vocab)


def test_crash_reprocesses_from_the_last_commit_with_the_same_predictions(deployment, tmp_path):
    """SIGKILL mid-stream: the changelog holds the state of the last offset commit, so the events
    after it are processed again from that state and predict exactly what they did before (only
    ``processed_at`` differs); nothing is lost and the rest equals the offline model."""
    checkpoint, events, first, second, env = _halves(tmp_path, seed=3)

    deployment.worker("crashing", **env)
    deployment.produce(to_records(first))
    assert len(deployment.collect("next-action-predictions", len(first), settle_s=0)) >= len(first)
    deployment.workers[0].kill()

    deployment.worker("after", **env)
    deployment.produce(to_records(second))
    records = deployment.collect("next-action-predictions", len(events), settle_s=5)
    copies = defaultdict(list)
    for prediction in _predictions(records):
        copies[prediction.event_id].append(prediction)
    assert set(copies) == {e["event_id"] for e in events}, "nothing lost across the crash"
    for first_copy, *others in copies.values():
        for other in others:  # batches differ on the second pass: probabilities agree to float noise
            assert msgspec.structs.replace(other, processed_at=0, top_k=[]) == \
                msgspec.structs.replace(first_copy, processed_at=0, top_k=[])
            assert {s.action: s.prob for s in other.top_k} == \
                pytest.approx({s.action: s.prob for s in first_copy.top_k}, abs=1e-5)
    expected, vocab = _offline_predictions(checkpoint, events)
    _assert_matches(_predictions(records), expected, vocab)


def test_redelivered_event_gets_the_identical_prediction_and_late_events_change_nothing(deployment, tmp_path):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    base = [{"event_id": f"e{k}", "user_id": "solo", "ts": NOW_MS + k * 60_000, "action": ACTIONS[k]}
            for k in range(4)]
    late = {"event_id": "late", "user_id": "solo", "ts": NOW_MS - 3_600_000, "action": ACTIONS[9]}
    after = {"event_id": "e4", "user_id": "solo", "ts": NOW_MS + 5 * 60_000, "action": ACTIONS[4]}
    deployment.worker(STREAM_APP_CHECKPOINT=str(checkpoint), STREAM_APP_TOP_K=str(TOP_K),
                      STREAM_APP_GRACE_S="60")
    deployment.produce(to_records(base))
    deployment.collect("next-action-predictions", 4, settle_s=1)
    deployment.produce(to_records([base[-1], late, after]))

    records = deployment.collect("next-action-predictions", 7)
    by_id = defaultdict(list)
    for record in records:
        by_id[json.loads(record.value)["event_id"]].append(record.value)
    assert len(by_id["e3"]) == 2 and by_id["e3"][0] == by_id["e3"][1], "re-delivery: identical bytes"
    late_prediction = json.loads(by_id["late"][0])
    assert late_prediction["late"] is True
    assert late_prediction["top_k"] == json.loads(by_id["e3"][0])["top_k"], "late: the current belief"
    expected, vocab = _offline_predictions(checkpoint, base + [after])
    _assert_matches([decode(by_id["e4"][0], NextActionPrediction)], expected, vocab)
    assert "stream_app_late_events_total{pipeline=\"behavior\"} 1.0" in deployment.workers[0].metrics_text()


def test_idle_users_expire(deployment, tmp_path):
    early = [{"event_id": f"x{k}", "user_id": f"idle{k}", "ts": NOW_MS, "action": "a1"} for k in range(2)]
    later = {"event_id": "y", "user_id": "busy", "ts": NOW_MS + 2 * 3_600_000, "action": "a2"}
    worker = deployment.worker(STREAM_APP_STATE_TTL_S="600", STREAM_APP_EXPIRY_INTERVAL_S="1")
    deployment.produce(to_records(early))
    deployment.collect("next-action-predictions", 2, settle_s=0.5)
    assert worker.get_json("/users/idle0")["event_count"] == 1
    deployment.produce(to_records([later]))
    deployment.collect("next-action-predictions", 3, settle_s=3)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "stream_app_state_expired_total{table=\"user-state\"} 2.0" \
            not in worker.metrics_text():
        time.sleep(0.5)
    assert "stream_app_state_expired_total{table=\"user-state\"} 2.0" in worker.metrics_text()
    with pytest.raises(Exception, match="404"):
        worker.get_json("/users/idle0")
    assert worker.get_json("/users/busy")["event_count"] == 1


def test_cell_activity_counts_equal_direct_counts(deployment):
    events = located_events(seed=5, count=120, users=15, start_ms=NOW_MS, id_prefix="c")
    ending = closers(NOW_MS + 3_600_000)  # advance every partition's watermark past the windows above
    expected = expected_windows(events)
    deployment.worker(**CELL_ENV)
    deployment.produce(to_records(events + ending))
    check_cell_windows(deployment.collect("cell-activity", len(expected)), expected)
