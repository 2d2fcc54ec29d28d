"""Validation tables for the input records: what is accepted, what is rejected and why."""

from datetime import UTC, datetime

import pytest

from schemas import (
    FieldError,
    Rejection,
    TrafficReading,
    UserEvent,
    decode_traffic_reading,
    decode_user_event,
    encode,
)

NOW = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DROP = object()  # marks a field to leave out of the payload


def clock() -> float:
    return NOW.timestamp()


def user_event(**changes):
    base = {"event_id": "e-1", "user_id": "u-1", "ts": NOW_MS, "action": "view"}
    return {k: v for k, v in {**base, **changes}.items() if v is not DROP}


def reading(**changes):
    base = {"sensor_id": "s-1", "ts": NOW_MS, "speed": 52.5}
    return {k: v for k, v in {**base, **changes}.items() if v is not DROP}


def as_bytes(payload) -> bytes:
    return payload if isinstance(payload, bytes) else encode(payload)


VALID_USER_EVENTS = [
    pytest.param(user_event(), id="minimal"),
    pytest.param(user_event(item_id="i-9", category="shoes", session_id="s", lat=48.1, lon=11.5,
                            properties={"price": 9.5, "qty": 2, "gift": True, "coupon": "X"}), id="full"),
    pytest.param(user_event(lat=-90.0, lon=180.0), id="coordinate bounds"),
    pytest.param(user_event(item_id=None, lat=None, lon=None), id="explicit nulls"),
    pytest.param(user_event(schema_version=3, extra={"nested": [1]}), id="unknown fields ignored"),
    pytest.param(user_event(event_id="x" * 128, properties={"k" * 64: "v" * 256}), id="length bounds"),
    pytest.param(user_event(properties={f"k{i}": i for i in range(32)}), id="32 properties"),
    pytest.param(user_event(ts="2026-11-28T07:00:00Z"), id="iso ts"),
    pytest.param(user_event(ts=NOW_MS + 86_400_000), id="one day ahead"),
    pytest.param(b'{"event_id":"a","event_id":"b","user_id":"u","ts":1795849200000,"action":"v"}',
                 id="duplicate key"),
]

INVALID_USER_EVENTS = [
    pytest.param(user_event(event_id=""), "out_of_range", "event_id", id="empty id"),
    pytest.param(user_event(user_id="u" * 129), "out_of_range", "user_id", id="long id"),
    pytest.param(user_event(user_id=DROP), "invalid_field", "user_id", id="missing user_id"),
    pytest.param(user_event(user_id=5), "invalid_field", "user_id", id="numeric user_id"),
    pytest.param(user_event(action=DROP), "invalid_field", "action", id="missing action"),
    pytest.param(user_event(item_id=5), "invalid_field", "item_id", id="numeric item_id"),
    pytest.param(user_event(ts=DROP), "invalid_field", "ts", id="missing ts"),
    pytest.param(user_event(ts="yesterday"), "bad_timestamp", "ts", id="unparsable ts"),
    pytest.param(user_event(ts=1.7e12), "bad_timestamp", "ts", id="float ts"),
    pytest.param(user_event(ts=True), "bad_timestamp", "ts", id="bool ts"),
    pytest.param(user_event(ts=1_795_849_200), "bad_timestamp", "ts", id="seconds not ms"),
    pytest.param(user_event(ts="1999-12-31T23:59:59Z"), "bad_timestamp", "ts", id="before 2000"),
    pytest.param(user_event(ts=NOW_MS + 86_400_001), "bad_timestamp", "ts", id="too far ahead"),
    pytest.param(user_event(ts="2026-11-28T07:00:00Z" + " " * 64), "bad_timestamp", "ts", id="long ts"),
    pytest.param(user_event(lat=123.0, lon=1.0), "out_of_range", "lat", id="lat range"),
    pytest.param(user_event(lat=1.0, lon=-180.5), "out_of_range", "lon", id="lon range"),
    pytest.param(user_event(lat=1.0), "invalid_field", "lon", id="lat without lon"),
    pytest.param(user_event(lon=1.0), "invalid_field", "lat", id="lon without lat"),
    pytest.param(user_event(lat="1", lon=1.0), "invalid_field", "lat", id="string lat"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1795849200000,"action":"v","lat":1e999,"lon":1}',
                 "out_of_range", "lat", id="infinite lat"),
    pytest.param(user_event(properties={f"k{i}": i for i in range(33)}), "out_of_range", "properties",
                 id="33 properties"),
    pytest.param(user_event(properties={"k" * 65: 1}), "out_of_range", "properties", id="long property key"),
    pytest.param(user_event(properties={"k": "v" * 257}), "out_of_range", "properties",
                 id="long property value"),
    pytest.param(user_event(properties={"k": [1]}), "invalid_field", "properties", id="nested property"),
    pytest.param(user_event(properties={"k": None}), "invalid_field", "properties", id="null property"),
    pytest.param(user_event(properties={"k": 2**64}), "out_of_range", "properties", id="huge int property"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1795849200000,"action":"v","properties":{"k":-1e999}}',
                 "out_of_range", "properties", id="infinite property"),
    pytest.param(user_event(properties=["k"]), "invalid_field", "properties", id="properties list"),
    pytest.param([user_event()], "invalid_field", "payload", id="array payload"),
    pytest.param(b'"text"', "invalid_field", "payload", id="string payload"),
]

VALID_READINGS = [
    pytest.param(reading(), id="minimal"),
    pytest.param(reading(network="la", flow=12.0, occupancy=0.3, lat=34.0, lon=-118.2), id="full"),
    pytest.param(reading(speed=0.0, occupancy=0.0, flow=0.0), id="zeros"),
    pytest.param(reading(speed=300, occupancy=1), id="upper bounds as ints"),
    pytest.param(reading(ts="2026-11-28T08:00:00+01:00", unit="kmh", lanes=3), id="iso ts, unknown field"),
    pytest.param(reading(ts="2000-01-01"), id="first accepted instant"),
    pytest.param(reading(speed=DROP, value=61.5, kind="speed", unit="km/h"), id="speed as value"),
    pytest.param(reading(speed=61.5, value=61.5), id="speed and equal value"),
    pytest.param(reading(speed=DROP, value=412, kind="count", unit="passengers/h"), id="count over 300"),
    pytest.param(reading(speed=DROP, value=10**30, kind="count"), id="huge count"),
    pytest.param(reading(speed=DROP, value=7.0, kind="count"), id="whole float count"),
    pytest.param(reading(speed=DROP, value=0, kind="count"), id="zero count"),
    pytest.param(reading(speed=DROP, value=1850.5, kind="flow", unit="veh/h"), id="flow"),
    pytest.param(reading(speed=DROP, value=0.42, kind="occupancy"), id="occupancy fraction"),
    pytest.param(reading(speed=DROP, value=42, kind="occupancy", unit="%"), id="occupancy percent"),
]

INVALID_READINGS = [
    pytest.param(reading(sensor_id=DROP), "invalid_field", "sensor_id", id="missing sensor"),
    pytest.param(reading(network=""), "out_of_range", "network", id="empty network"),
    pytest.param(reading(speed=DROP), "invalid_field", "value", id="missing speed and value"),
    pytest.param(reading(speed="fast"), "invalid_field", "speed", id="string speed"),
    pytest.param(reading(speed=-0.1), "out_of_range", "speed", id="negative speed"),
    pytest.param(reading(speed=300.5), "out_of_range", "speed", id="speed above 300"),
    pytest.param(reading(flow=-1.0), "out_of_range", "flow", id="negative flow"),
    pytest.param(b'{"sensor_id":"s","ts":1795849200000,"speed":1,"flow":1e999}', "out_of_range", "flow",
                 id="infinite flow"),
    pytest.param(reading(occupancy=1.5), "out_of_range", "occupancy", id="occupancy above 1"),
    pytest.param(reading(lat=10.0), "invalid_field", "lon", id="lat without lon"),
    pytest.param(reading(ts="1999-12-31T23:59:59.999Z"), "bad_timestamp", "ts", id="just before 2000"),
    pytest.param(reading(ts=None), "bad_timestamp", "ts", id="null ts"),
    pytest.param(reading(speed=DROP, value=-3, kind="count"), "out_of_range", "value", id="negative count"),
    pytest.param(reading(speed=DROP, value=2.5, kind="count"), "out_of_range", "value", id="fractional count"),
    pytest.param(reading(speed=DROP, value=1, kind="bicycles"), "invalid_field", "kind", id="unknown kind"),
    pytest.param(reading(speed=DROP, value=301, kind="speed"), "out_of_range", "value", id="speed value above 300"),
    pytest.param(reading(speed=DROP, value=-1.0, kind="flow"), "out_of_range", "value", id="negative flow value"),
    pytest.param(reading(speed=DROP, value=42, kind="occupancy"), "out_of_range", "value",
                 id="occupancy above 1 without %"),
    pytest.param(reading(speed=DROP, value=101, kind="occupancy", unit="%"), "out_of_range", "value",
                 id="occupancy above 100 %"),
    pytest.param(reading(value=12, kind="count"), "invalid_field", "speed", id="speed with a count"),
    pytest.param(reading(value=50.0), "invalid_field", "value", id="speed and value disagree"),
    pytest.param(reading(speed=DROP, value="12", kind="count"), "invalid_field", "value", id="string value"),
    pytest.param(reading(speed=DROP, value=1, kind="count", unit="u" * 33), "out_of_range", "unit", id="long unit"),
]


@pytest.mark.parametrize("payload", VALID_USER_EVENTS)
def test_valid_user_events_are_accepted(payload):
    event = decode_user_event(as_bytes(payload), clock=clock)
    assert isinstance(event, UserEvent), event
    assert isinstance(event.ts, int)


@pytest.mark.parametrize(("payload", "reason", "field"), INVALID_USER_EVENTS)
def test_invalid_user_events_are_rejected(payload, reason, field):
    result = decode_user_event(as_bytes(payload), clock=clock)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.detail.startswith(field), result


@pytest.mark.parametrize("payload", VALID_READINGS)
def test_valid_readings_are_accepted(payload):
    result = decode_traffic_reading(as_bytes(payload), clock=clock)
    assert isinstance(result, TrafficReading), result
    assert result.network == (payload.get("network") or "default")


@pytest.mark.parametrize(("payload", "reason", "field"), INVALID_READINGS)
def test_invalid_readings_are_rejected(payload, reason, field):
    result = decode_traffic_reading(as_bytes(payload), clock=clock)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.detail.startswith(field), result


@pytest.mark.parametrize(("payload", "kind", "value", "speed"), [
    (reading(), "speed", 52.5, 52.5),
    (reading(speed=DROP, value=52.5), "speed", 52.5, 52.5),
    (reading(speed=DROP, value=412, kind="count"), "count", 412, None),
    (reading(speed=DROP, value=7.0, kind="count"), "count", 7, None),
    (reading(speed=DROP, value=0.4, kind="occupancy"), "occupancy", 0.4, None),
])
def test_every_reading_has_a_value_and_speed_readings_keep_speed(payload, kind, value, speed):
    result = decode_traffic_reading(as_bytes(payload), clock=clock)
    assert (result.kind, result.value, result.speed) == (kind, value, speed)
    assert result.measured == float(value) and type(result.value) is type(value)
    assert decode_traffic_reading(encode(result), clock=clock) == result


def test_rejections_say_what_to_send():
    unknown = decode_traffic_reading(as_bytes(reading(speed=DROP, value=1, kind="bicycles")), clock=clock)
    assert unknown.detail == "kind: invalid enum value 'bicycles'; expected one of speed, flow, count, occupancy"
    negative = decode_traffic_reading(as_bytes(reading(speed=DROP, value=-3, kind="count")), clock=clock)
    assert negative == Rejection(reason="out_of_range", detail="value: count must be non-negative, got -3")
    missing = decode_traffic_reading(as_bytes(reading(speed=DROP)), clock=clock)
    assert "send value (with kind and unit) or speed" in missing.detail
    percent = decode_traffic_reading(as_bytes(reading(speed=DROP, value=42, kind="occupancy")), clock=clock)
    assert "send unit % for 0..100" in percent.detail


def test_out_of_range_detail_names_the_value():
    result = decode_user_event(encode(user_event(lat=123.0, lon=1.0)), clock=clock)
    assert result == Rejection(reason="out_of_range", detail="lat: expected `float` <= 90.0, got 123.0")


@pytest.mark.parametrize(("ts", "expected_ms"), [
    (NOW_MS, NOW_MS),
    ("2026-11-28T07:00:00Z", NOW_MS),
    ("2026-11-28T07:00:00+00:00", NOW_MS),
    ("2026-11-28T08:00:00+01:00", NOW_MS),
    ("2026-11-28T02:00:00-05:00", NOW_MS),
    ("2026-11-28T07:00:00", NOW_MS),
    ("2026-11-28 07:00:00", NOW_MS),
    ("2026-11-28T07:00:00.123Z", NOW_MS + 123),
    ("2026-11-28T06:59:59.999999Z", NOW_MS - 1),
    ("2026-11-28", NOW_MS - 7 * 3_600_000),
])
def test_timestamps_normalize_to_epoch_ms(ts, expected_ms):
    event = decode_user_event(encode(user_event(ts=ts)), clock=clock)
    assert isinstance(event, UserEvent), event
    assert event.ts == expected_ms
    assert encode(event).count(str(expected_ms).encode()) == 1


def test_constructing_in_code_normalizes_and_checks():
    event = UserEvent(event_id="e", user_id="u", ts="2026-11-28T07:00:00Z", action="v")
    assert event.ts == NOW_MS
    with pytest.raises(FieldError, match="lon"):
        UserEvent(event_id="e", user_id="u", ts=NOW_MS, action="v", lat=1.0)
    with pytest.raises(FieldError, match="speed"):
        TrafficReading(sensor_id="s", ts=NOW_MS, speed=float("nan"))


def test_records_are_frozen_and_hashable():
    event = UserEvent(event_id="e", user_id="u", ts=NOW_MS, action="v", properties={"a": 1})
    with pytest.raises(AttributeError):
        event.ts = 0
    assert len({event, UserEvent(event_id="e", user_id="u", ts=NOW_MS, action="v", properties={"a": 1})}) == 1
    assert hash(TrafficReading(sensor_id="s", ts=NOW_MS, speed=1.0))


def test_defaults_are_left_out_of_the_json():
    assert encode(UserEvent(event_id="e", user_id="u", ts=NOW_MS, action="v")) == (
        b'{"event_id":"e","user_id":"u","ts":%d,"action":"v"}' % NOW_MS)
    assert b"network" not in encode(TrafficReading(sensor_id="s", ts=NOW_MS, speed=1.0))
