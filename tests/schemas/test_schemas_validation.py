"""The generic decode path: framing checks, the reason set, and the encoder helpers."""

from typing import Annotated

import pytest
from msgspec import Meta

from schemas import REJECTION_REASONS, Rejection, SchemaError, UserEvent, decode, decode_user_event, encode
from schemas.timestamps import format_ms, to_epoch_ms

T0 = 1_795_849_200_000
VALID = b'{"event_id":"e","user_id":"u","ts":1795849200000,"action":"v"}'


def clock() -> float:
    return T0 / 1000


@pytest.mark.parametrize(("raw", "reason"), [
    (None, "empty"),
    (b"", "empty"),
    (b" \n\t", "empty"),
    (b"{" + b" " * 20_000 + b"}", "too_large"),
    (b"\xff\xfe{}", "malformed_json"),
    (b'{"event_id": "e"', "malformed_json"),
    (VALID + b" trailing", "malformed_json"),
    (b'{"event_id":"\\ud800"}', "malformed_json"),
    (b"[" * 7_000 + b"]" * 7_000, "invalid_field"),  # refused at the first byte: not an object
    # Nesting deeper than msgspec's recursion limit: refused as malformed where the limit is hit
    # (Python 3.11), or the unknown field is skipped and the missing event_id refused (Python 3.13).
    (b'{"x":' + b"[" * 8_000 + b"]" * 8_000 + b"}", ("malformed_json", "invalid_field")),
    (b"null", "invalid_field"),
    (b"12", "invalid_field"),
])
def test_framing_rejections(raw, reason):
    result = decode_user_event(raw, clock=clock)
    allowed = reason if isinstance(reason, tuple) else (reason,)
    assert isinstance(result, Rejection) and result.reason in allowed, result
    assert result.detail


def test_max_bytes_is_inclusive():
    assert isinstance(decode_user_event(VALID, max_bytes=len(VALID), clock=clock), UserEvent)
    assert decode_user_event(VALID, max_bytes=len(VALID) - 1, clock=clock).reason == "too_large"


def test_the_clock_decides_what_is_in_the_future():
    assert isinstance(decode_user_event(VALID, clock=clock), UserEvent)
    too_early = decode_user_event(VALID, clock=lambda: clock() - 2 * 86_400)
    assert too_early.reason == "bad_timestamp" and too_early.detail.startswith("ts:")


def test_reasons_are_a_closed_set():
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS) == 6
    with pytest.raises(SchemaError):
        Rejection(reason="something new", detail="x")


def test_decode_refuses_types_it_cannot_decode():
    with pytest.raises(SchemaError):
        decode(VALID, Annotated[int, Meta(min_length=1)])


def test_encode_is_compact_and_stable():
    event = decode_user_event(VALID, clock=clock)
    assert encode(event) == VALID
    assert encode(Rejection(reason="empty", detail="payload: no bytes")) == (
        b'{"reason":"empty","detail":"payload: no bytes"}')


@pytest.mark.parametrize("text", ["", "2026-13-01", "now", "0"])
def test_to_epoch_ms_rejects_non_iso(text):
    with pytest.raises(SchemaError):
        to_epoch_ms(text)


def test_format_ms():
    assert format_ms(T0) == "2026-11-28T07:00:00.000Z"
    assert format_ms(10**20) == "out of calendar"
