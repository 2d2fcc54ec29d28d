"""Output records survive encode -> decode unchanged, and dead letters are built as documented."""

import msgspec
import pytest

from schemas import (
    ActionScore,
    AnomalyAlert,
    CellActivity,
    DeadLetter,
    HorizonForecast,
    NextActionPrediction,
    Rejection,
    SensorAggregate,
    TrafficForecast,
    decode,
    encode,
    to_dict,
)
from schemas.outputs import MAX_PAYLOAD_CHARS

T0 = 1_795_849_200_000  # 2026-11-28T07:00:00Z


def clock() -> float:
    return T0 / 1000


OUTPUTS = [
    pytest.param(ActionScore(action="buy", prob=0.25), id="ActionScore"),
    pytest.param(NextActionPrediction(
        event_id="e", user_id="u", as_of=T0, top_k=[ActionScore(action="buy", prob=0.7),
                                                   ActionScore(action="view", prob=0.2)],
        model_version="gru-3", window_events=12, window_span_s=340.5, event_ts=T0, ingested_at=T0 + 4,
        processed_at=T0 + 9), id="NextActionPrediction"),
    pytest.param(NextActionPrediction(
        event_id="e", user_id="u", as_of=T0, top_k=[], model_version="gru-3", window_events=0,
        window_span_s=0.0, event_ts=T0, ingested_at=T0, processed_at=T0, late=True), id="late prediction"),
    pytest.param(HorizonForecast(minutes=15, speed=61.0), id="HorizonForecast"),
    pytest.param(TrafficForecast(
        sensor_id="s", network="la", window_end=T0, observed=None, imputed=True,
        horizons=[HorizonForecast(minutes=m, speed=50.0 + m) for m in (5, 15, 30)], model_version="tgcn-1",
        processed_at=T0 + 2), id="TrafficForecast"),
    pytest.param(SensorAggregate(
        sensor_id="s", network="la", window_start=T0 - 300_000, window_end=T0, mean_speed=55.0,
        min_speed=40.0, max_speed=70.5, count=9, flow_sum=120.0), id="SensorAggregate"),
    pytest.param(SensorAggregate(
        sensor_id="s", network="la", window_start=T0 - 300_000, window_end=T0, mean_speed=55.0,
        min_speed=55.0, max_speed=55.0, count=1), id="SensorAggregate without flow"),
    pytest.param(CellActivity(
        cell="8928308280fffff", resolution=9, window_start=T0 - 60_000, window_end=T0, events=5, users=2,
        actions={"view": 4, "buy": 1}), id="CellActivity"),
    pytest.param(AnomalyAlert(
        alert_id="a-1", kind="forecast_residual", key="s", network="la", ts=T0, observed=12.0,
        expected=61.0, score=4.2, severity="critical", detail="speed collapsed"), id="AnomalyAlert"),
    pytest.param(AnomalyAlert(
        alert_id="a-2", kind="behavior", key="u", ts=T0, observed=0.0, expected=3.0, score=2.1,
        severity="warning"), id="AnomalyAlert for a user"),
    pytest.param(DeadLetter.from_record(
        b'{"bad": tru', b"u-1", source_topic="user-events", partition=3, offset=42,
        reason="malformed_json", detail="payload: JSON is malformed", received_at=T0), id="DeadLetter"),
]


@pytest.mark.parametrize("record", OUTPUTS)
def test_round_trip(record):
    data = encode(record)
    assert decode(data, type(record), clock=clock) == record
    assert msgspec.json.decode(data) == to_dict(record)


def test_defaults_are_omitted_and_restored():
    alert = AnomalyAlert(alert_id="a", kind="profile_drop", key="s", ts=T0, observed=1.0, expected=2.0,
                         score=1.0, severity="warning")
    assert set(to_dict(alert)) == {"alert_id", "kind", "key", "ts", "observed", "expected", "score", "severity"}
    assert decode(encode(alert), AnomalyAlert, clock=clock).detail == ""


@pytest.mark.parametrize(("field", "value"), [("kind", "other"), ("severity", "info")])
def test_alert_enums_are_closed(field, value):
    payload = to_dict(AnomalyAlert(alert_id="a", kind="behavior", key="u", ts=T0, observed=1.0,
                                   expected=2.0, score=1.0, severity="warning")) | {field: value}
    result = decode(msgspec.json.encode(payload), AnomalyAlert, clock=clock)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_field" and result.detail.startswith(field)


def test_nested_errors_name_the_path():
    result = decode(b'{"event_id":"e","top_k":[{"action":"x","prob":1.5}]}', NextActionPrediction)
    assert result == Rejection(reason="out_of_range", detail="top_k[0].prob: expected `float` <= 1.0")


def test_dead_letter_truncates_and_replaces():
    raw = b"\xff" + "é".encode() * 5000
    letter = DeadLetter.from_record(raw, b"k\xfe", source_topic="t", partition=0, offset=7,
                                    reason="too_large", detail="payload: too big", received_at=T0)
    assert letter.payload_size == len(raw) == 10_001
    assert letter.truncated and len(letter.payload) == MAX_PAYLOAD_CHARS
    assert letter.payload.startswith("\ufffdé")
    assert letter.key == "k\ufffd"


def test_dead_letter_without_key_or_value():
    letter = DeadLetter.from_record(None, None, source_topic="t", partition=0, offset=0, reason="empty",
                                    detail="payload: no bytes", received_at=T0)
    assert (letter.key, letter.payload, letter.payload_size, letter.truncated) == (None, "", 0, False)


def test_predictions_are_built_positionally_and_left_out_of_the_garbage_collector():
    import gc

    assert encode(ActionScore("buy", 0.25)) == encode(ActionScore(action="buy", prob=0.25)) == \
        b'{"action":"buy","prob":0.25}'
    prediction = NextActionPrediction(event_id="e1", user_id="u1", as_of=T0, top_k=[ActionScore("buy", 0.25)],
                                      model_version="v1", window_events=1, window_span_s=0.0, event_ts=T0,
                                      ingested_at=T0, processed_at=T0)
    assert not gc.is_tracked(prediction) and not gc.is_tracked(prediction.top_k[0])
    assert decode(encode(prediction), NextActionPrediction, clock=clock) == prediction
