"""Dead letters keep the rejected record byte for byte: key, value (header) and headers."""

from __future__ import annotations

import json

from stream_app.transport.dead_letters import (
    MAX_EXACT_PAYLOAD,
    OMITTED_HEADER,
    PAYLOAD_HEADER,
    dead_letter_record,
    key_mismatch,
)


def _letter(value, key=b"u1", headers=()):
    return dead_letter_record(topic="user-events", partition=2, offset=41, key=key, value=value, headers=headers,
                              reason="malformed_json", detail="payload: broken", received_at_ms=1_700_000_000_000)


def test_binary_payload_key_and_headers_survive_exactly() -> None:
    payload = bytes(range(256)) * 40  # 10 KiB, not UTF-8, longer than the JSON's 4,096 characters
    key, value, headers = _letter(payload, key=b"\xff\x00k", headers=[("trace", b"\x01\x02")])

    assert key == b"\xff\x00k"
    assert dict(headers)[PAYLOAD_HEADER] == payload
    assert dict(headers)["trace"] == b"\x01\x02"
    letter = json.loads(value)
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == ("user-events", 2, 41)
    assert letter["reason"] == "malformed_json" and letter["payload_size"] == len(payload)


def test_null_value_has_no_payload_header_and_huge_ones_say_why() -> None:
    assert PAYLOAD_HEADER not in dict(_letter(None)[2])
    headers = dict(_letter(b"x" * (MAX_EXACT_PAYLOAD + 1))[2])
    assert PAYLOAD_HEADER not in headers and OMITTED_HEADER in headers


def test_incoming_dlq_headers_are_not_forwarded_as_ours() -> None:
    headers = _letter(b"new", headers=[(PAYLOAD_HEADER, b"old")])[2]
    assert headers == [(PAYLOAD_HEADER, b"new")]


def test_key_mismatch_names_both_sides() -> None:
    assert key_mismatch(b"u2", "user_id", "u1").reason == "key_mismatch"
    detail = key_mismatch(b"u2", "user_id", "u1").detail
    assert "b'u2'" in detail and "'u1'" in detail
    assert "null" in key_mismatch(None, "user_id", "u1").detail
