"""A tiny stateful pipeline on user events, for the transport's fault tests and its benchmark.

Per user: how many events so far and the sum of their event times. One output per event, keyed by
user, with those running values: a replay after a crash must give byte-identical outputs, and the
final state must equal an uninterrupted run's. ``python -m stream_app.transport.testing`` runs it
as a worker process (what the crash tests kill).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from schemas import UserEvent, decode_user_event
from stream_app.transport.batch import Batch, Outputs, per_record
from stream_app.transport.config import GUARANTEES, TransportConfig
from stream_app.transport.metrics import TransportMetrics
from stream_app.transport.transport import Transport

__all__ = ["run_count_to_end", "wait_until", "TopicsUnderTest",
           "CountOutput", "count_processor", "passthrough_processor", "decode_count_state", "decode_events",
           "count_transport", "make_events", "keyed", "expected_outputs", "expected_state", "OutputCheck",
           "check_outputs", "main"]

_STATE = struct.Struct("<qq")  # count, sum of ts
#: A user event or an output as JSON-ready fields.
Event = dict[str, Any]


class CountOutput(msgspec.Struct, frozen=True):
    """One output per input event: the user's running count and sum of event times after it."""

    event_id: str
    user_id: str
    count: int
    ts_sum: int


_encode = msgspec.json.Encoder().encode
decode_events = per_record(decode_user_event)


def decode_count_state(raw: bytes) -> tuple[int, int]:
    """(count, sum of ts) from a stored value."""
    count, total = _STATE.unpack_from(raw)
    return count, total


def count_processor(output_topic: str, state_padding: int = 0) -> Callable[[Batch[UserEvent]], Outputs]:
    """A processor: per-user running count and ts sum in the default store, one output per event.
    ``state_padding`` bytes are added to every stored value (a realistic state size for benchmarks)."""
    padding = bytes(state_padding)

    def process(batch: Batch[UserEvent]) -> Outputs:
        out = []
        for partition, events in batch.records.items():
            store = batch.state.store(partition)
            for event in events:
                key = event.user_id.encode()
                raw = store.get(key)
                count, total = _STATE.unpack_from(raw) if raw is not None else (0, 0)
                count, total = count + 1, total + event.ts
                store[key] = _STATE.pack(count, total) + padding
                out.append((key, _encode(CountOutput(event.event_id, event.user_id, count, total))))
        return {output_topic: out}

    return process


def passthrough_processor(batch: Batch[UserEvent]) -> Outputs:
    """No state, no outputs: the transport's own cost."""
    return {}


def make_events(n: int, users: int, seed: int = 0, start_ms: int | None = None) -> list[Event]:
    """``n`` user events with ids ``e<i>``, users ``u<j>`` drawn at random, event times increasing
    (from an hour ago by default: valid for the schema, which refuses future times)."""
    rng = random.Random(seed)
    start = int(time.time() * 1000) - 3_600_000 if start_ms is None else start_ms
    return [{"event_id": f"e{i}", "user_id": f"u{rng.randrange(users)}", "ts": start + i * 7, "action": "view"}
            for i in range(n)]


def keyed(events: Iterable[Event]) -> list[tuple[bytes, bytes]]:
    """(key, value) input records: each event keyed by its user, as the producers of the app do."""
    return [(e["user_id"].encode(), json.dumps(e).encode()) for e in events]


def expected_outputs(events: Iterable[Event]) -> dict[str, Event]:
    """The output ``count_processor`` gives each event id on an uninterrupted run."""
    running: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    expected = {}
    for e in events:
        count, total = running[e["user_id"]]
        running[e["user_id"]] = count, total = count + 1, total + e["ts"]
        expected[e["event_id"]] = {"event_id": e["event_id"], "user_id": e["user_id"], "count": count, "ts_sum": total}
    return expected


def expected_state(events: Iterable[Event]) -> dict[bytes, tuple[int, int]]:
    """The store an uninterrupted run ends with: user key -> (count, sum of ts)."""
    state: dict[bytes, tuple[int, int]] = {}
    for e in events:
        count, total = state.get(e["user_id"].encode(), (0, 0))
        state[e["user_id"].encode()] = (count + 1, total + e["ts"])
    return state


@dataclass(frozen=True)
class OutputCheck:
    """Outputs read back against the events: ids without output, outputs unlike an uninterrupted
    run's (a duplicate that disagrees lands here), and how many extra copies were seen."""

    outputs: int
    duplicates: int
    missing: list[str]
    wrong: list[Event]


def check_outputs(values: Iterable[Event], events: Iterable[Event]) -> OutputCheck:
    expected = expected_outputs(events)
    seen: Counter[str] = Counter()
    wrong = []
    for value in values:
        seen[value["event_id"]] += 1
        if value != expected.get(value["event_id"]):
            wrong.append(value)
    missing = sorted(set(expected) - set(seen), key=lambda i: int(i[1:]) if i[1:].isdigit() else 0)
    return OutputCheck(outputs=sum(seen.values()), duplicates=sum(n - 1 for n in seen.values()), missing=missing,
                       wrong=wrong)


def count_transport(config: TransportConfig, output_topic: str, *, check_keys: bool = True,
                    metrics: TransportMetrics | None = None, before_checkpoint: Callable[[], object] | None = None,
                    state_padding: int = 0) -> Transport[UserEvent]:
    """A transport running ``count_processor`` on decoded user events, keys checked against user_id."""
    return Transport(config, decode=decode_events, process=count_processor(output_topic, state_padding),
                     id_of=(lambda event: event.user_id) if check_keys else None, id_name="user_id",
                     metrics=metrics, before_checkpoint=before_checkpoint)


class TopicsUnderTest(Protocol):
    """What :func:`run_count_to_end` needs of a test's Kafka helper."""

    def topic(self, name: str) -> str: ...
    def end_offsets(self, topic: str) -> Mapping[int, int]: ...
    def committed(self, group: str) -> Mapping[int, int]: ...


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 0.2 s; an AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)


def run_count_to_end(kafka: TopicsUnderTest, config: TransportConfig, timeout_s: float = 40.0,
                     **options: Any) -> tuple[Transport[UserEvent], dict[bytes, tuple[int, int]]]:
    """Run a count transport on ``in`` until its committed offsets reach the input's end, then stop it
    cleanly. Returns it and its store content (decoded) as it was just before the stop."""
    async def main() -> tuple[Transport[UserEvent], dict[bytes, tuple[int, int]]]:
        transport = count_transport(config, kafka.topic("out"), **options)
        await transport.start()
        task = asyncio.create_task(transport.run())
        ends = await asyncio.to_thread(kafka.end_offsets, kafka.topic("in"))

        async def at_end() -> bool:
            if task.done():
                task.result()
            committed = await asyncio.to_thread(kafka.committed, config.group)
            return all(committed.get(p, -1) >= end for p, end in ends.items())

        await wait_until(at_end, timeout_s, "committed offsets at the end of the input")
        state = {key: decode_count_state(value) for key, value in transport.items()}
        transport.stop()
        await task
        return transport, state
    return asyncio.run(main())


async def _serve(args: argparse.Namespace) -> None:
    config = TransportConfig(
        name=args.name, app_id=args.app_id, input_topic=args.input, dead_letter_topic=args.dead_letters,
        state_dir=Path(args.state_dir), client_options={"bootstrap_servers": args.bootstrap},
        guarantee=args.guarantee, commit_interval_s=args.commit_interval_s,
        snapshot_interval_s=args.snapshot_interval_s, advertised_url=args.url, session_timeout_ms=6000,
        heartbeat_interval_ms=1000, rebalance_timeout_ms=3000, transaction_timeout_ms=10_000)
    transport = count_transport(config, args.output)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, transport.stop)
    loop.add_signal_handler(signal.SIGINT, transport.stop)
    await transport.start()
    status = Path(args.state_dir) / "started.json"
    status.write_text(json.dumps({"group": config.group}))
    await transport.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the transport's count pipeline as a worker (for tests).")
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--input", required=True, help="input topic (user events keyed by user_id)")
    parser.add_argument("--output", required=True, help="output topic (one CountOutput per event)")
    parser.add_argument("--dead-letters", required=True, help="dead-letter topic")
    parser.add_argument("--app-id", required=True, help="app id: names the changelog topics and the group")
    parser.add_argument("--name", default="count", help="pipeline name (default: count)")
    parser.add_argument("--state-dir", required=True, help="folder for local snapshots")
    parser.add_argument("--guarantee", choices=GUARANTEES, default="at_least_once")
    parser.add_argument("--commit-interval-s", type=float, default=0.5)
    parser.add_argument("--snapshot-interval-s", type=float, default=60.0)
    parser.add_argument("--url", default="", help="URL broadcast to the group for query routing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
