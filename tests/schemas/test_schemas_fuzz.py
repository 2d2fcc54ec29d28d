"""Property tests: any bytes become a valid record or a Rejection, and accepted records obey every rule."""

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import force_setattr

from schemas import (
    MAX_FUTURE_MS,
    MIN_TIMESTAMP_MS,
    REJECTION_REASONS,
    Rejection,
    TrafficReading,
    UserEvent,
    decode,
    decode_traffic_reading,
    decode_user_event,
    encode,
    to_dict,
    to_epoch_ms,
)
from schemas.base import require_coordinate_pair, require_finite
from schemas.events import _require_finite_properties
from schemas.validation import decode_each

NOW_MS = 1_795_849_200_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

USER_EVENT = {"event_id": "e-1", "user_id": "u-1", "ts": "2026-11-28T07:00:00Z", "action": "view",
              "item_id": "i", "category": "c", "lat": 48.1, "lon": 11.5, "session_id": "s",
              "properties": {"price": 9.5, "qty": 2, "gift": True, "coupon": "X"}}
READING = {"sensor_id": "s-1", "network": "la", "ts": NOW_MS, "speed": 52.5, "flow": 3.0, "occupancy": 0.5,
           "lat": 34.0, "lon": -118.2}
COUNT_READING = {"sensor_id": "s-2", "ts": NOW_MS, "value": 412, "kind": "count", "unit": "passengers/h"}
DECODERS = [(decode_user_event, USER_EVENT), (decode_traffic_reading, READING), (decode_traffic_reading, COUNT_READING)]


def clock() -> float:
    return NOW_MS / 1000


class _UserEventCheckedInFull(UserEvent, frozen=True, kw_only=True):
    """``UserEvent`` whose every check runs as a call on every event: the reference for its fast path."""

    def __post_init__(self) -> None:
        force_setattr(self, "ts", to_epoch_ms(self.ts))
        require_finite(self, "lat", "lon")
        require_coordinate_pair(self.lat, self.lon)
        _require_finite_properties(self.properties)


CLASSES = {decode_user_event: UserEvent, decode_traffic_reading: TrafficReading}


numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0, -1, 1e308, 2**63, -(2**63) - 1, 946_684_799_999, NOW_MS + MAX_FUTURE_MS + 1, 300.0001, -90.0001])
scalars = st.none() | st.booleans() | numbers | st.text(max_size=300)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=70), inner, max_size=40), max_leaves=60)
field_names = st.sampled_from(sorted(set(USER_EVENT) | set(READING) | set(COUNT_READING))) | st.text(max_size=10)


def check_common(record, now_ms: int) -> None:
    assert isinstance(record.ts, int) and MIN_TIMESTAMP_MS <= record.ts <= now_ms + MAX_FUTURE_MS
    assert (record.lat is None) == (record.lon is None)
    if record.lat is not None:
        assert -90 <= record.lat <= 90 and -180 <= record.lon <= 180


def check_user_event(event: UserEvent) -> None:
    for value in (event.event_id, event.user_id, event.action):
        assert isinstance(value, str) and 1 <= len(value) <= 128
    assert len(event.properties) <= 32
    for key, value in event.properties.items():
        assert len(key) <= 64
        assert not isinstance(value, str) or len(value) <= 256
        assert not isinstance(value, float) or math.isfinite(value)
        assert not isinstance(value, int) or -(2**63) <= value < 2**63


def check_reading(reading: TrafficReading) -> None:
    assert 1 <= len(reading.sensor_id) <= 128 and 1 <= len(reading.network) <= 128
    assert reading.kind in ("speed", "flow", "count", "occupancy") and reading.value >= 0
    if reading.kind == "speed":
        assert reading.speed == reading.value and 0 <= reading.speed <= 300 and math.isfinite(reading.speed)
    else:
        assert reading.speed is None
    if reading.kind == "count":
        assert isinstance(reading.value, int)
    else:
        assert isinstance(reading.value, float) and math.isfinite(reading.value)
    assert reading.flow is None or 0 <= reading.flow < math.inf
    assert reading.occupancy is None or 0 <= reading.occupancy <= 1


def check_outcome(decoder, raw: bytes) -> None:
    result = decoder(raw, clock=clock)
    assert decode_each([raw, raw], CLASSES[decoder], clock=clock) == [result, result], "a batch decodes alike"
    if decoder is decode_user_event:
        reference = decode(raw, _UserEventCheckedInFull, clock=clock)
        if isinstance(result, Rejection):
            assert reference == result
        else:
            assert to_dict(reference) == to_dict(result)
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.detail
        return
    check_common(result, NOW_MS)
    if isinstance(result, UserEvent):
        check_user_event(result)
    else:
        assert isinstance(result, TrafficReading)
        check_reading(result)
    assert decoder(encode(result), clock=clock) == result


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(DECODERS))
def test_arbitrary_bytes(raw, decoder_and_sample):
    check_outcome(decoder_and_sample[0], raw)


@FUZZ
@given(json_values, st.sampled_from(DECODERS))
def test_arbitrary_json(value, decoder_and_sample):
    check_outcome(decoder_and_sample[0], json.dumps(value).encode())


@FUZZ
@given(st.sampled_from(DECODERS), st.lists(st.tuples(field_names, json_values | st.just(...)), max_size=3))
def test_mutated_valid_records(decoder_and_sample, changes):
    decoder, sample = decoder_and_sample
    payload = dict(sample)
    for name, value in changes:
        if value is ...:
            payload.pop(name, None)
        else:
            payload[name] = value
    check_outcome(decoder, json.dumps(payload).encode())


@FUZZ
@given(st.sampled_from(DECODERS), st.data())
def test_corrupted_valid_bytes(decoder_and_sample, data):
    decoder, sample = decoder_and_sample
    raw = bytearray(json.dumps(sample).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw)))
        replacement = data.draw(st.binary(max_size=3))
        raw[position:position + data.draw(st.integers(0, 3))] = replacement
    check_outcome(decoder, bytes(raw))


recent = st.datetimes(min_value=datetime(1999, 12, 30), max_value=datetime(2026, 11, 30))


@FUZZ
@given(st.one_of(recent, st.datetimes()), st.timezones() | st.none())
def test_any_iso_time_normalizes_or_is_a_bad_timestamp(moment, zone):
    moment = moment.replace(tzinfo=zone)
    result = decode_traffic_reading(json.dumps(dict(READING, ts=moment.isoformat())).encode(), clock=clock)
    if isinstance(result, Rejection):
        assert result.reason == "bad_timestamp", result
        return
    as_utc = moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)
    assert result.ts == (as_utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _event_payload(**changes) -> bytes:
    payload = {**USER_EVENT, **changes}
    return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()


def test_the_checks_fast_path_decides_every_kind_of_event_as_the_checks_do():
    cases = [_event_payload(), _event_payload(ts=NOW_MS), _event_payload(lat=..., lon=...),
             _event_payload(lat=None, lon=None), _event_payload(lon=...), _event_payload(lat=None),
             _event_payload(lat=48, lon=11), _event_payload(properties={}), _event_payload(properties=...),
             _event_payload(ts="2026-11-28T07:00:00"), _event_payload(ts=True), _event_payload(lat=91.0),
             _event_payload(ts=MIN_TIMESTAMP_MS - 1), _event_payload(ts=NOW_MS + MAX_FUTURE_MS + 1),
             _event_payload().replace(b'"price": 9.5', b'"price": 1e999'),
             _event_payload().replace(b'"lat": 48.1', b'"lat": 1e999'), b"", b"  ", b"{", b"x" * 20000]
    results = decode_each(cases, UserEvent, clock=clock)
    reasons = []
    for raw, result in zip(cases, results, strict=True):
        reference = decode(raw, _UserEventCheckedInFull, clock=clock)
        assert result == decode_user_event(raw, clock=clock)
        if isinstance(result, Rejection):
            assert reference == result
            reasons.append(result.reason)
        else:
            assert to_dict(reference) == to_dict(result)
            reasons.append("ok")
    assert reasons == ["ok", "ok", "ok", "ok", "invalid_field", "invalid_field", "ok", "ok", "ok", "ok",
                       "bad_timestamp", "out_of_range", "bad_timestamp", "bad_timestamp", "out_of_range",
                       "out_of_range", "empty", "empty", "malformed_json", "too_large"]
