"""`stream-app dead-letters`: a worker's dead letters summarized per reason, and one reason replayed
onto the input topic byte-exact (key, value and headers), on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from stream_app.kafka_io import client_options

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


def _event(i: int, user: str = "u1") -> bytes:
    return json.dumps({"event_id": f"e{i}", "user_id": user, "ts": NOW_MS - 60_000 + i, "action": "view"}).encode()


# (key, value, headers, expected reason)
REJECTED = [
    (b"u1", b'{"event_id": "x1", "user_id": "u1", "ts', [], "malformed_json"),
    (b"u2", b"\xff\xfe\x00\x01\x80binary\x00payload", [("trace", b"\x00\xffid-1")], "malformed_json"),
    (None, bytes(range(256)), [("a", b"1"), ("b", b"")], "malformed_json"),
    (b"u3", json.dumps({"event_id": "x", "user_id": "u3", "ts": NOW_MS}).encode(), [], "invalid_field"),
    (b"u4", b"[]", [], "invalid_field"),
    (b"other-user", _event(99, user="u5"), [], "key_mismatch"),
]
EXPECTED_COUNTS = Counter(reason for *_, reason in REJECTED)


async def _send(settings, topic: str, records: list) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(settings))
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(topic, value=value, key=key, headers=headers or None)
        await producer.flush()
    finally:
        await producer.stop()


def _cli(deployment, *args: str) -> str:
    env = {**os.environ, "STREAM_APP_TOPIC_PREFIX": deployment.prefix}
    done = subprocess.run([sys.executable, "-m", "stream_app", "dead-letters", "--broker", deployment.kafka.url,
                           *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_summary_counts_per_reason_and_replay_is_byte_exact(deployment):
    deployment.worker()
    valid = [(b"u1", _event(i), []) for i in range(5)]
    asyncio.run(_send(deployment.settings, deployment.topic("user-events"),
                      valid[:2] + [(k, v, h) for k, v, h, _ in REJECTED] + valid[2:]))
    deployment.collect("dead-letters", len(REJECTED), settle_s=1)

    summary = json.loads(_cli(deployment, "--json"))
    assert summary["total"] == len(REJECTED)
    counts = {(g["reason"], g["source_topic"]): g["count"] for g in summary["groups"]}
    assert counts == {(reason, deployment.topic("user-events")): n for reason, n in EXPECTED_COUNTS.items()}
    assert all(g["replayable"] == g["count"] for g in summary["groups"]), "every transport dead letter is replayable"
    text = _cli(deployment)
    assert f"{len(REJECTED)} dead letters" in text and "malformed_json" in text and "key_mismatch" in text

    dry = _cli(deployment, "replay", "--reason", "malformed_json", "--dry-run")
    assert dry.count("would send ") == EXPECTED_COUNTS["malformed_json"] + 1  # one line each, and the total
    sent = _cli(deployment, "replay", "--reason", "malformed_json")
    assert f"sent {EXPECTED_COUNTS['malformed_json']} of {EXPECTED_COUNTS['malformed_json']}" in sent

    # The input topic now holds each malformed_json record twice (original and replay) and every
    # other record once: the dry run sent nothing, the reason selected nothing else.
    total = len(valid) + len(REJECTED) + EXPECTED_COUNTS["malformed_json"]
    records = deployment.collect("user-events", total, settle_s=2)
    seen = Counter((r.key, r.value, tuple((n, bytes(d)) for n, d in r.headers or ())) for r in records)
    assert len(records) == total
    for key, value, headers, reason in REJECTED:
        assert seen[(key, value, tuple(headers))] == (2 if reason == "malformed_json" else 1), (reason, value[:40])

    # A replayed record still invalid is dead-lettered again by the running worker.
    again = deployment.collect("dead-letters", len(REJECTED) + EXPECTED_COUNTS["malformed_json"], settle_s=1)
    assert len(again) == len(REJECTED) + EXPECTED_COUNTS["malformed_json"]


def test_replay_by_offsets_and_offsets_file(deployment, tmp_path):
    deployment.worker()
    asyncio.run(_send(deployment.settings, deployment.topic("user-events"),
                      [(k, v, h) for k, v, h, _ in REJECTED[:3]]))
    letters = deployment.collect("dead-letters", 3, settle_s=1)
    first = sorted(letters, key=lambda r: (r.partition, r.offset))[0]
    out = _cli(deployment, "replay", "--offsets", f"{first.partition}:{first.offset}", "--dry-run")
    assert f"would send {first.partition}:{first.offset} " in out and "would send 1 of 1" in out
    offsets = tmp_path / "offsets.txt"
    offsets.write_text("# every partition, offsets 0 to 100\n0-100\n")
    assert "would send 3 of 3" in _cli(deployment, "replay", "--offsets-file", str(offsets), "--dry-run")
