"""The behavior pipeline without a broker: per-user plans, one model call per batch, write-behind state.

A batch's events of one user are decided as if they came one by one (applied, re-delivered,
late or an older duplicate); outputs keep each user's order; the store changes only at flush.
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from models.next_action.fallback import MarkovPredictor
from models.next_action.serving import EventPrediction, UserState, update_window
from schemas import AnomalyAlert, NextActionPrediction, UserEvent, decode_user_event
from stream_app.metrics import Metrics
from stream_app.models_holder import HotModel
from stream_app.pipelines.base import Received, partition_of
from stream_app.pipelines.behavior import BatchCounts, BehaviorPipeline, LoadedUser, UserPlan
from stream_app.pipelines.cells import CellEvent, cell_of
from stream_app.settings import Settings
from stream_app.state import StoredUser, decode_user

T0 = 1_700_000_000_000
NOW_S = 1_700_000_100.0
SETTINGS = Settings(grace_s=60.0, top_k=2, state_ttl_s=3600.0, h3_resolution=8)
GRACE_MS = int(SETTINGS.grace_s * 1000)


class RecordingPredictor:
    """A stand-in model: predicts ``after-<token>``; the window it saw depends on the stored state."""

    version = "fake-1"

    def __init__(self) -> None:
        self.calls: list[list[list[str]]] = []

    def predict_many(self, states: list[UserState], sequences: list[list], k: int) -> list[list[EventPrediction]]:
        self.calls.append([[e.token for e in events] for events in sequences])
        results = []
        for state, events in zip(states, sequences, strict=True):
            predicted = []
            for event in events:
                update_window(state, event, window_size=4, window_span_s=1e9)
                predicted.append(EventPrediction([(f"after-{event.token}", 0.75), ("other", 0.25)][:k],
                                                 len(state.window), float(state.event_count)))
            results.append(predicted)
        return results


def _event(event_id: str, ts: int, user: str = "u1", action: str = "view", **extra) -> UserEvent:
    decoded = decode_user_event(msgspec.json.encode({"event_id": event_id, "user_id": user, "ts": ts,
                                                     "action": action, **extra}))
    assert isinstance(decoded, UserEvent), decoded
    return decoded


def _received(*events: UserEvent) -> list[Received[UserEvent]]:
    return [Received(e, e.ts / 1000 + 0.5, 0) for e in events]


def _pipeline(store: dict | None = None, settings: Settings = SETTINGS
              ) -> tuple[BehaviorPipeline, RecordingPredictor, dict, Metrics]:
    predictor, metrics = RecordingPredictor(), Metrics()
    store = {} if store is None else store
    model = HotModel("behavior", None, load=lambda path: predictor, fallback=predictor, metrics=metrics)
    return BehaviorPipeline(settings, store, model, metrics, clock=lambda: NOW_S), predictor, store, metrics


def _decoded(records: list[tuple[bytes, bytes]]) -> list[NextActionPrediction]:
    return [msgspec.json.decode(value, type=NextActionPrediction) for _, value in records]


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------ one user's plan


def _plan(batch: list[tuple[str, int]], stored: StoredUser | None = None) -> tuple[UserPlan, list]:
    plan = UserPlan("u1", LoadedUser(stored or StoredUser()), grace_ms=GRACE_MS, counts=BatchCounts(),
                    action_token=lambda e: e.action)
    for event_id, ts in batch:
        plan.add(_event(event_id, ts), ingested_at_ms=ts)
    plan.predicted([EventPrediction([(f"next-{e.event_id}", 0.5)], 1, 0.0) for e, _ in plan.applied],
                   "v1", processed_at=T0)
    return plan, _decoded(plan.outputs(lambda: T0))


def test_redelivery_late_and_duplicates_inside_one_batch() -> None:
    plan, out = _plan([("a", T0), ("b", T0 + 1000), ("b", T0 + 1000), ("late", T0 - GRACE_MS - 2000),
                       ("a", T0), ("c", T0 + 2000)])
    assert [e.event_id for e, _ in plan.applied] == ["a", "b", "c"]
    # a, b, b again (identical), late (b's prediction marked late), the old duplicate a: nothing, c.
    assert [(p.event_id, p.late) for p in out] == [("a", False), ("b", False), ("b", False), ("late", True),
                                                   ("c", False)]
    outputs = plan.outputs(lambda: T0)
    assert outputs[1] == outputs[2]
    assert out[3].top_k == out[1].top_k and out[3].as_of == T0 - GRACE_MS - 2000
    assert (plan.counts.duplicates, plan.counts.late) == (2, 1)
    plan.update_stored()
    stored = plan.user.stored
    assert stored.recent_ids[-3:] == ["a", "b", "c"] and stored.last_ts_ms == T0 + 2000
    assert stored.last_prediction == outputs[-1][1]


def test_first_event_of_a_batch_checks_the_stored_state() -> None:
    _, before = _plan([("x", T0)])
    stored = StoredUser(last_prediction=msgspec.json.encode(before[0]), recent_ids=["x"], last_ts_ms=T0)
    plan, out = _plan([("x", T0), ("early", T0 - GRACE_MS - 1)], stored=stored)
    assert plan.applied == []
    assert [(p.event_id, p.late) for p in out] == [("x", False), ("early", True)]
    assert plan.outputs(lambda: T0)[0][1] == stored.last_prediction


def test_an_event_within_grace_is_applied_even_when_older() -> None:
    plan, out = _plan([("a", T0), ("older", T0 - GRACE_MS + 1)])
    assert [e.event_id for e, _ in plan.applied] == ["a", "older"]
    assert not any(p.late for p in out)


def test_online_hits_count_the_actual_action_within_the_first_k_of_the_previous_prediction() -> None:
    cases = [(["a", "b", "c", "d", "e", "f"], "a"), (["a", "b", "c", "d", "e", "f"], "e"),
             (["a", "b", "c", "d", "e", "f"], "f"), (["x", "y", "z"], "q"), ([], "a"),
             ([f"t{i}" for i in range(12)], "t9"), ([f"t{i}" for i in range(12)], "t11"), (["a", "b", "a"], "a")]
    counts = BatchCounts()
    for previous, actual in cases:
        counts.score(previous, actual)
    counts.score(None, "a")  # no prediction before: not scored
    assert counts.scored == len(cases)
    assert counts.hits == {k: sum(actual in previous[:k] for previous, actual in cases) for k in (1, 5, 10)}
    assert counts.hits == {1: 2, 5: 3, 10: 5}


# ------------------------------------------------------------------ the pipeline over a batch


def test_one_model_call_per_batch_and_outputs_in_each_users_order() -> None:
    pipeline, predictor, _, metrics = _pipeline()
    batch = _received(_event("a1", T0, "a", "view"), _event("b1", T0 + 1, "b", "buy"),
                      _event("a2", T0 + 2, "a", "like"), _event("b2", T0 + 3, "b", "view"))
    outputs = pipeline.process(batch, cell_partitions=2)
    assert predictor.calls == [[["view", "like"], ["buy", "view"]]], "every user of the batch in one call"
    predictions = _decoded(outputs.predictions)
    assert [(key, p.event_id) for (key, _), p in zip(outputs.predictions, predictions, strict=True)] == \
        [(b"a", "a1"), (b"a", "a2"), (b"b", "b1"), (b"b", "b2")]
    assert [p.top_k[0].action for p in predictions] == ["after-view", "after-like", "after-buy", "after-view"]
    assert [p.window_events for p in predictions] == [1, 2, 1, 2]
    assert {p.model_version for p in predictions} == {"fake-1"}
    assert predictions[0].ingested_at == T0 + 500 and predictions[0].processed_at == int(NOW_S * 1000)
    # a's first prediction (after-view) did not hold "like"; b's (after-buy) did not hold "view".
    assert _sample(metrics, "stream_app_online_scored_total") == 2
    assert _sample(metrics, "stream_app_online_hits_total", k="1") == 0
    assert _sample(metrics, "stream_app_batch_size_count", pipeline="behavior") == 1


def test_state_is_written_behind_only_at_flush() -> None:
    pipeline, _, store, _ = _pipeline()
    pipeline.process(_received(_event("a1", T0, "a"), _event("b1", T0, "b")), cell_partitions=1)
    assert store == {}, "nothing written before the flush"
    assert set(pipeline.dirty) == {"a", "b"}
    assert pipeline.user_summary("a")["event_count"] == 1, "the query API sees unflushed state"
    assert pipeline.flush() == 2
    assert set(store) == {b"a", b"b"} and not pipeline.dirty
    stored = decode_user(store[b"a"])
    assert stored.recent_ids == ["a1"] and stored.last_ts_ms == T0
    assert stored.user_state().event_count == 1
    pipeline.process(_received(_event("a1", T0, "a")), cell_partitions=1)  # a re-delivery changes nothing
    assert not pipeline.dirty and pipeline.flush() == 0


def test_redelivery_and_late_events_after_a_flush_repeat_the_stored_prediction() -> None:
    pipeline, predictor, _, metrics = _pipeline()
    first = pipeline.process(_received(_event("a1", T0), _event("a2", T0 + 1000)), cell_partitions=1)
    pipeline.flush()
    again = pipeline.process(_received(_event("a2", T0 + 1000), _event("late", T0 - GRACE_MS - 1),
                                       _event("a1", T0)), cell_partitions=1)
    assert len(predictor.calls) == 1, "nothing to apply: no model call"
    assert len(again.predictions) == 2, "the re-delivery and the late event; the older duplicate yields nothing"
    assert again.predictions[0] == first.predictions[1], "identical bytes for a re-delivered event"
    late = _decoded(again.predictions)[1]
    assert late.late and late.event_id == "late" and late.top_k == _decoded(first.predictions)[1].top_k
    assert _sample(metrics, "stream_app_duplicate_events_total", pipeline="behavior") == 2
    assert _sample(metrics, "stream_app_late_events_total", pipeline="behavior") == 1


def test_a_new_pipeline_on_the_flushed_store_continues_where_the_last_one_stopped() -> None:
    events = [_event(f"e{k}", T0 + k * 1000, "u", f"a{k % 3}") for k in range(6)]
    running, _, _, _ = _pipeline()
    running.process(_received(*events[:3]), cell_partitions=1)
    running.flush()
    expected = running.process(_received(*events[3:]), cell_partitions=1)

    crashed, _, store, _ = _pipeline()
    crashed.process(_received(*events[:3]), cell_partitions=1)
    crashed.flush()
    restarted, _, _, _ = _pipeline(store=store)
    got = restarted.process(_received(*events[3:]), cell_partitions=1)
    assert got.predictions == expected.predictions
    assert _decoded(got.predictions)[-1].window_events == 4, "the window continued from the stored state"


def test_cell_events_hold_the_batchs_located_events_by_partition() -> None:
    pipeline, _, _, _ = _pipeline()
    located = [_event(f"l{k}", T0 + k, f"u{k}", lat=40.70 + 0.01 * k, lon=-74.0) for k in range(5)]
    outputs = pipeline.process(_received(*located, _event("nowhere", T0, "u9")), cell_partitions=3)
    seen = []
    for key, value in outputs.cell_events:
        cells = msgspec.msgpack.decode(value, type=list[CellEvent])
        assert {partition_of(c.cell.encode(), 3) for c in cells} == {partition_of(key, 3)}
        seen += [(c.cell, c.user_id) for c in cells]
    assert sorted(seen) == sorted((cell_of(e.lat, e.lon, 8), e.user_id) for e in located)


def test_emitted_counts_outputs_events_and_latency_once_the_batch_is_sent() -> None:
    pipeline, _, _, metrics = _pipeline()
    outputs = pipeline.process(_received(_event("a1", T0), _event("a1", T0)), cell_partitions=1)
    assert _sample(metrics, "stream_app_events_processed_total", pipeline="behavior") == 0
    pipeline.emitted(outputs)
    assert _sample(metrics, "stream_app_events_processed_total", pipeline="behavior") == 2
    topic = SETTINGS.topic("next-action-predictions")
    assert _sample(metrics, "stream_app_outputs_total", topic=topic) == 2
    assert _sample(metrics, "stream_app_end_to_end_latency_seconds_count", pipeline="behavior") == 2
    assert _sample(metrics, "stream_app_end_to_end_latency_seconds_sum", pipeline="behavior") == \
        pytest.approx(2 * (NOW_S - (T0 / 1000 + 0.5)))


def test_passthrough_validates_only() -> None:
    from dataclasses import replace

    pipeline, predictor, _, _ = _pipeline(settings=replace(SETTINGS, behavior_mode="passthrough"))
    outputs = pipeline.process(_received(_event("a1", T0)), cell_partitions=1)
    assert (outputs.predictions, outputs.cell_events, outputs.processed) == ([], [], 1)
    assert predictor.calls == [] and not pipeline.dirty


def test_idle_users_expire_in_event_time_but_unflushed_ones_stay() -> None:
    pipeline, _, store, metrics = _pipeline()
    ttl_ms = int(SETTINGS.state_ttl_s * 1000)
    pipeline.process(_received(_event("old", T0, "idle"), _event("x", T0 + ttl_ms // 2, "kept")), cell_partitions=1)
    pipeline.flush()
    pipeline.process(_received(_event("new", T0 + ttl_ms + 1, "busy")), cell_partitions=1)
    assert pipeline.expire_idle() == 1
    assert b"idle" not in store and b"kept" in store and "busy" in pipeline.dirty
    assert pipeline.user_summary("idle") is None
    assert _sample(metrics, "stream_app_state_expired_total", table="user-state") == 1
    assert _sample(metrics, "stream_app_active_users") == 1, "kept (stored, recent); busy is not flushed yet"


# ------------------------------------------------------------------ partitions reloaded or revoked


def test_forget_drops_unflushed_and_cached_users_of_the_given_keys_only():
    pipeline, _, store, _ = _pipeline()
    pipeline.process(_received(_event("a", T0, user="u1"), _event("b", T0, user="u2")), 2)
    assert set(pipeline.dirty) == {"u1", "u2"} and set(pipeline.hot) == {"u1", "u2"}
    assert pipeline.forget(lambda key: key == b"u1") == 1
    assert set(pipeline.dirty) == {"u2"} and set(pipeline.hot) == {"u2"}
    pipeline.flush()
    assert set(store) == {b"u2"}, "a forgotten user's uncommitted change never reaches the store"


# ------------------------------------------------------------------ model faults are loud


def _failing_load(path: str) -> RecordingPredictor:
    raise ValueError("not a checkpoint")


def test_a_configured_checkpoint_that_cannot_be_loaded_stops_the_start(tmp_path):
    from stream_app.models_holder import ModelLoadError

    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="STREAM_APP_ALLOW_FALLBACK"):
        HotModel("behavior", str(path), load=_failing_load, fallback=RecordingPredictor(), metrics=Metrics())
    with pytest.raises(ModelLoadError, match="does not exist"):
        HotModel("behavior", str(tmp_path / "absent.pt"), load=_failing_load, fallback=RecordingPredictor(),
                 metrics=Metrics())


def test_allowed_fallback_is_visible_in_a_metric_and_a_warning_per_reload_attempt(tmp_path, caplog):
    path, metrics = tmp_path / "model.pt", Metrics()
    path.write_bytes(b"garbage")
    model = HotModel("behavior", str(path), load=_failing_load, fallback=RecordingPredictor(), metrics=metrics,
                     allow_fallback=True)
    assert model.on_fallback and _sample(metrics, "stream_app_model_fallback", pipeline="behavior") == 1
    path.write_bytes(b"other garbage")
    with caplog.at_level("WARNING", logger="stream_app.models_holder"):
        assert not model.refresh()
    assert any("could not be loaded" in r.message and r.levelname == "WARNING" for r in caplog.records)
    assert _sample(metrics, "stream_app_model_reloads_total", pipeline="behavior", outcome="failed") == 2


def test_a_checkpoint_file_that_disappears_is_logged_and_counted_once(tmp_path, caplog):
    path, metrics, predictor = tmp_path / "model.pt", Metrics(), RecordingPredictor()
    path.write_bytes(b"model")
    model = HotModel("behavior", str(path), load=lambda p: predictor, fallback=RecordingPredictor(), metrics=metrics)
    assert model.current is predictor and _sample(metrics, "stream_app_model_fallback", pipeline="behavior") == 0
    path.unlink()
    with caplog.at_level("WARNING", logger="stream_app.models_holder"):
        model.refresh()
        model.refresh()
    assert _sample(metrics, "stream_app_model_reloads_total", pipeline="behavior", outcome="missing") == 1
    assert sum("is missing" in r.message for r in caplog.records) == 1
    assert model.current is predictor, "the serving model keeps serving"


# ------------------------------------------------------------------ behavior anomaly alerts


class SurprisalPredictor(RecordingPredictor):
    """``RecordingPredictor`` that also gives each event a surprisal: ``surprisals[token]`` (nats),
    none for a user's first event; its checkpoint metadata carries the population's surprisal."""

    metadata = {"surprisal": {"mean": 1.0, "std": 0.5}}

    def __init__(self, surprisals: dict[str, float]) -> None:
        super().__init__()
        self.surprisals = surprisals

    def predict_many(self, states, sequences, k):
        first = [state.event_count == 0 for state in states]
        results = super().predict_many(states, sequences, k)
        return [[EventPrediction(p.top, p.window_events, p.window_span_s,
                                 None if new and i == 0 else self.surprisals[e.token])
                 for i, (p, e) in enumerate(zip(predicted, events, strict=True))]
                for predicted, events, new in zip(results, sequences, first, strict=True)]


def _alert_pipeline(store: dict | None = None, settings: Settings = SETTINGS):
    predictor, metrics = SurprisalPredictor({"usual": 1.0, "also": 1.2, "odd": 4.0}), Metrics()
    store = {} if store is None else store
    model = HotModel("behavior", None, load=lambda path: predictor, fallback=predictor, metrics=metrics)
    return BehaviorPipeline(settings, store, model, metrics, clock=lambda: NOW_S), store, metrics


def _habitual(user: str, n: int, start: int = T0) -> list[UserEvent]:
    return [_event(f"{user}-h{k}", start + k * 60_000, user, "usual" if k % 3 else "also") for k in range(n)]


def test_a_run_of_improbable_actions_raises_one_behavior_alert_keyed_by_user() -> None:
    pipeline, _, metrics = _alert_pipeline()
    quiet = pipeline.process(_received(*_habitual("victim", 60), *_habitual("other", 60)), cell_partitions=1)
    assert quiet.alerts == []
    start = T0 + 61 * 60_000
    odd = [_event(f"victim-x{k}", start + k * 1000, "victim", "odd") for k in range(8)]
    outputs = pipeline.process(_received(*odd, *_habitual("other", 8, start)), cell_partitions=1)
    assert [key for key, _ in outputs.alerts] == [b"victim"], "one alert (rate-limited), for that user only"
    alert = msgspec.json.decode(outputs.alerts[0][1], type=AnomalyAlert)
    assert alert.kind == "behavior" and alert.key == "victim"
    assert alert.alert_id == f"behavior:victim:{alert_event(odd, alert.ts)}"
    assert alert.observed == pytest.approx(4.0) and alert.expected < 1.3
    assert "odd (p=0.018)" in alert.detail, "the events and the probabilities that caused it"
    assert 3 <= [e.ts for e in odd].index(alert.ts) + 1 <= 6, "within a few events, never one alone"
    pipeline.emitted(outputs)
    assert _sample(metrics, "stream_app_anomaly_alerts_total", kind="behavior") == 1
    assert _sample(metrics, "stream_app_outputs_total", topic=SETTINGS.topic("anomaly-alerts")) == 1


def alert_event(events: list[UserEvent], ts: int) -> str:
    return next(e.event_id for e in events if e.ts == ts)


def test_the_surprise_state_survives_a_restart_through_the_store() -> None:
    """Half a run before the flush, half after a restart on the flushed store: the same alert."""
    start = T0 + 61 * 60_000
    events = _habitual("u", 60) + [_event(f"x{k}", start + k * 1000, "u", "odd") for k in range(8)]
    running, _, _ = _alert_pipeline()
    expected = [running.process(_received(*events[:63]), cell_partitions=1),
                running.process(_received(*events[63:]), cell_partitions=1)]
    crashed, store, _ = _alert_pipeline()
    crashed.process(_received(*events[:63]), cell_partitions=1)
    crashed.flush()
    assert decode_user(store[b"u"]).user_state().surprise.cusum > 0, "the open run is in the stored state"
    restarted, _, _ = _alert_pipeline(store=store)
    got = restarted.process(_received(*events[63:]), cell_partitions=1)
    assert got.alerts == expected[0].alerts + expected[1].alerts and len(got.alerts) == 1


def test_alert_thresholds_come_from_the_settings() -> None:
    from dataclasses import replace

    from models.next_action.anomaly import BehaviorAnomalyConfig

    defaults = BehaviorAnomalyConfig()
    assert (SETTINGS.behavior_alert_threshold, SETTINGS.behavior_alert_reference,
            SETTINGS.behavior_alert_min_gap_s) == (defaults.threshold, defaults.reference, defaults.min_gap_s)
    start = T0 + 61 * 60_000
    events = _habitual("u", 60) + [_event(f"x{k}", start + k * 1000, "u", "odd") for k in range(8)]
    strict, _, _ = _alert_pipeline(settings=replace(SETTINGS, behavior_alert_threshold=100.0))
    assert strict.process(_received(*events), cell_partitions=1).alerts == []
    off, _, _ = _alert_pipeline(settings=replace(SETTINGS, behavior_alerts=False))
    assert off.process(_received(*events), cell_partitions=1).alerts == []



def test_a_clean_generated_run_alerts_on_at_most_half_a_percent_of_users_per_day() -> None:
    """Generated users scored by the generator's own next-action distribution (a calibrated model):
    behavior alerts on at most 0.5 % of users per simulated day."""
    import numpy as np

    from simulation.users import BehaviorConfig, generate_user_events

    workload = generate_user_events(BehaviorConfig(n_users=500, n_events=50_000, seed=11))
    action_id = {a: i for i, a in enumerate(workload.actions)}
    previous: dict[str, int] = {}
    surprisal: dict[tuple, float | None] = {}  # (ts, action, lat, lon) -> -log p under the truth before it
    for i, e in enumerate(workload.events):
        before = previous.get(e["user_id"])
        key = (e["ts"], e["action"], e["lat"], e["lon"])
        assert key not in surprisal
        surprisal[key] = None if before is None else \
            -float(np.log(max(workload.true_next[before, action_id[e["action"]]], 1e-12)))
        previous[e["user_id"]] = i
    known = np.array([v for v in surprisal.values() if v is not None])

    class Oracle(RecordingPredictor):
        metadata = {"surprisal": {"mean": float(known.mean()), "std": float(known.std())}}

        def predict_many(self, states, sequences, k):
            results = super().predict_many(states, sequences, k)
            return [[EventPrediction(p.top, p.window_events, p.window_span_s,
                                     surprisal[(e.ts_ms, e.token, e.lat, e.lon)])
                     for p, e in zip(predicted, events, strict=True)]
                    for predicted, events in zip(results, sequences, strict=True)]

    oracle, metrics = Oracle(), Metrics()
    model = HotModel("behavior", None, load=lambda path: oracle, fallback=oracle, metrics=metrics)
    pipeline = BehaviorPipeline(SETTINGS, {}, model, metrics, clock=lambda: NOW_S)
    events = [_event(e["event_id"], e["ts"], e["user_id"], e["action"], lat=e["lat"], lon=e["lon"])
              for e in workload.events]
    alerted: set[tuple[str, int]] = set()
    for chunk in range(0, len(events), 512):
        outputs = pipeline.process(_received(*events[chunk:chunk + 512]), cell_partitions=1)
        for _, value in outputs.alerts:
            alert = msgspec.json.decode(value, type=AnomalyAlert)
            alerted.add((alert.key, alert.ts // 86_400_000))
    days = (workload.events[-1]["ts"] - workload.events[0]["ts"]) / 86_400_000
    assert len(known) > 45_000
    print(f"clean run: {len(alerted)} user-days alerted of {500 * days:.0f}")
    assert len(alerted) <= 0.005 * 500 * days


def test_the_fallback_predictor_raises_no_behavior_alert_and_says_so_once(caplog) -> None:
    """Its per-user surprisal does not separate an intruder from the user: alerts wait for a checkpoint."""
    predictor, metrics = MarkovPredictor(), Metrics()
    model = HotModel("behavior", None, load=lambda path: predictor, fallback=predictor, metrics=metrics)
    pipeline = BehaviorPipeline(SETTINGS, {}, model, metrics, clock=lambda: NOW_S)
    with caplog.at_level(logging.WARNING, logger="stream_app.pipelines.behavior"):
        habits = [_event(f"victim-h{k}", T0 + k * 60_000, "victim", a)
                  for k, a in enumerate("abcabdabcabdabcabcabdacb" * 5)]
        pipeline.process(_received(*habits), cell_partitions=1)
        start = T0 + 121 * 60_000  # an intruder the fallback's own scorer flags within 8 events (test_fallback)
        odd = [_event(f"victim-x{k}", start + k * 60_000, "victim", a) for k, a in enumerate("xyzwvuxyzwvu")]
        outputs = pipeline.process(_received(*odd), cell_partitions=1)
    assert outputs.alerts == [] and _sample(metrics, "stream_app_anomaly_alerts_total", kind="behavior") == 0
    assert [r.message for r in caplog.records].count(
        "behavior alerts are off while the fallback predictor serves (markov-user): they need a trained "
        "checkpoint (STREAM_APP_CHECKPOINT)") == 1
    assert pipeline.anomaly_scorer(SurprisalPredictor({})) is not None, "a checkpoint's predictor is scored"
