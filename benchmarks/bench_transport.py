"""Transport micro-benchmark: how much of a raw aiokafka drain the batch transport keeps.

One embedded Apache Kafka broker; one topic (``--partitions``) pre-loaded with ``--events``
generated user events (``simulation.users``, encoded as ``stream-app generate`` writes them).
Each repeat drains it, interleaved, with:

- ``raw``: an aiokafka consumer (no group) ``getmany`` loop + ``schemas.decode_user_event`` per record;
- ``transport-passthrough``: the transport (group, key check, checkpoints) with a callback that
  does nothing;
- ``transport-count``: the transport with ``transport.testing.count_processor``: per-user state
  in a changelogged store, one output record per event.

A reader's span runs from its first fetched records in hand to its last record decoded (raw) or
to the end of the checkpoint that commits the last record (transport: outputs acknowledged,
changelog flushed, offsets committed). Events/s = events / span; CPU µs/event = this process's
CPU time over the span / events (the broker runs in its own process). Ratios are to ``raw`` in the
same repeat; the table shows medians over ``--repeats``.

``--restore-users N`` also measures restoring a store of N keys: from the whole changelog
(a worker with no local state) and from a local snapshot plus its (empty) changelog tail.

    python benchmarks/bench_transport.py                    # ~2-4 min on 2 shared cores
    python benchmarks/bench_transport.py --events 20000 --repeats 1 --restore-users 0   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from schemas import decode_user_event
from simulation.users import BehaviorConfig, generate_user_events
from stream_app.broker import EmbeddedBroker
from stream_app.cli.io import to_records
from stream_app.transport import Transport, TransportConfig
from stream_app.transport.batch import Batch, per_record
from stream_app.transport.testing import count_processor, count_transport, keyed, passthrough_processor

__all__ = ["main"]

log = logging.getLogger("bench_transport")
READERS = ("raw", "transport-passthrough", "transport-count")


@dataclass
class Result:
    reader: str
    repeat: int
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.events * 1e6


class Span:
    """Wall and process-CPU time from ``begin()`` (first call wins) to ``end()``."""

    def __init__(self) -> None:
        self.wall0 = self.cpu0 = self.wall1 = self.cpu1 = None

    def begin(self) -> None:
        if self.wall0 is None:
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def end(self) -> None:
        self.wall1, self.cpu1 = time.perf_counter(), time.process_time()


# --------------------------------------------------------------------------- setup

async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def preload(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def load_workload(bootstrap: str, topic: str, args: argparse.Namespace) -> None:
    log.info("generating %d user events", args.events)
    workload = generate_user_events(BehaviorConfig(n_users=args.users, n_events=args.events, seed=args.seed))
    log.info("pre-loading %s", topic)
    await preload(bootstrap, topic, [(key, value) for _, key, value in to_records(workload.events)])


# --------------------------------------------------------------------------- readers

async def drain_raw(bootstrap: str, topic: str, partitions: int, events: int) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    await consumer.seek_to_beginning()
    span, seen = Span(), 0
    try:
        while seen < events:
            fetched = await consumer.getmany(timeout_ms=500, max_records=2048)
            if fetched:
                span.begin()
            for records in fetched.values():
                for record in records:
                    decode_user_event(record.value)
                seen += sum(len(r) for r in fetched.values())
        span.end()
    finally:
        await consumer.stop()
    return span.wall1 - span.wall0, span.cpu1 - span.cpu0


async def drain_transport(config: TransportConfig, make: Callable[[Callable], Transport], events: int
                          ) -> tuple[float, float]:
    """Run a transport until it processed ``events``, then checkpoint; the span ends with that checkpoint."""
    span, seen, done = Span(), [0], asyncio.Event()
    decode = per_record(decode_user_event)

    def timed_decode(records):
        span.begin()
        return decode(records)

    def counting(process):
        def wrapped(batch: Batch):
            out = process(batch)
            seen[0] += sum(len(records) for records in batch.records.values())
            if seen[0] >= events:
                done.set()
            return out
        return wrapped

    transport = make(counting)
    transport._decode = timed_decode  # the span starts with the first records in hand
    await transport.start()
    task = asyncio.create_task(transport.run())
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
        raise RuntimeError("transport stopped before draining the topic")
    if not await transport.checkpoint():
        raise RuntimeError("the final checkpoint failed")
    span.end()
    transport.stop()
    await task
    return span.wall1 - span.wall0, span.cpu1 - span.cpu0


def _transport_config(bootstrap: str, topic: str, app_id: str, state_dir: Path) -> TransportConfig:
    return TransportConfig(name="bench", app_id=app_id, input_topic=topic, dead_letter_topic=f"{topic}-dead-letters",
                           state_dir=state_dir, client_options={"bootstrap_servers": bootstrap},
                           commit_interval_s=1.0, max_records=2048, session_timeout_ms=6000,
                           heartbeat_interval_ms=1000, rebalance_timeout_ms=3000)


def make_passthrough(config: TransportConfig) -> Callable[[Callable], Transport]:
    return lambda counting: Transport(config, decode=per_record(decode_user_event),
                                      process=counting(passthrough_processor), id_of=lambda e: e.user_id,
                                      id_name="user_id")


def make_count(config: TransportConfig, output: str, state_padding: int = 0) -> Callable[[Callable], Transport]:
    return lambda counting: Transport(config, decode=per_record(decode_user_event),
                                      process=counting(count_processor(output, state_padding)),
                                      id_of=lambda e: e.user_id, id_name="user_id")


# --------------------------------------------------------------------------- restore

async def measure_restore(bootstrap: str, users: int, value_bytes: int, partitions: int, work: Path) -> dict:
    """A store of ``users`` keys of ``value_bytes`` each: restore time from the whole changelog, then
    from a snapshot (the whole restore: snapshot files read, offsets looked up, changelog tail read)."""
    prefix = f"restore-{uuid.uuid4().hex[:6]}-"
    topic, output = f"{prefix}in", f"{prefix}out"
    await create_topics(bootstrap, [topic, output, f"{topic}-dead-letters"], partitions)
    start_ms = int(time.time() * 1000) - 3_600_000
    events = [{"event_id": f"e{i}", "user_id": f"u{i}", "ts": start_ms + i, "action": "view"} for i in range(users)]
    await preload(bootstrap, topic, keyed(events))
    config = _transport_config(bootstrap, topic, f"{prefix}app", work / "a")
    padding = max(0, value_bytes - 16)
    await drain_transport(config, make_count(config, output, padding), users)  # the changelog; snapshots at stop
    results = {}
    for label, state_dir in (("whole changelog", work / "b"), ("snapshot + tail", work / "a")):
        transport = count_transport(_transport_config(bootstrap, topic, f"{prefix}app", state_dir), output,
                                    state_padding=padding)
        await transport.start()
        task = asyncio.create_task(transport.run())
        while not all(transport.is_local(p) for p in range(partitions)):
            await asyncio.sleep(0.05)
        restored = transport.last_restore
        results[label] = {"seconds": round(restored.seconds, 3), "changelog_records": restored.total_read,
                          "snapshot_entries": sum(restored.snapshot_entries.values()),
                          "keys": sum(1 for _ in transport.items())}
        transport.stop()
        await task
    return results


# --------------------------------------------------------------------------- main

async def run(args: argparse.Namespace, bootstrap: str, work: Path) -> tuple[list[Result], dict]:
    topic = f"bench-{uuid.uuid4().hex[:6]}-user-events"
    output = f"{topic}-out"
    await create_topics(bootstrap, [topic, output, f"{topic}-dead-letters"], args.partitions)
    if args.repeats:
        await load_workload(bootstrap, topic, args)
    gc.collect()  # the generated workload is gone: its objects would slow every reader's garbage collections
    results = []
    for repeat in range(1, args.repeats + 1):
        for reader in READERS:
            if reader == "raw":
                wall, cpu = await drain_raw(bootstrap, topic, args.partitions, args.events)
            else:
                config = _transport_config(bootstrap, topic, f"bench-{uuid.uuid4().hex[:6]}", work / reader)
                make = make_passthrough(config) if reader == "transport-passthrough" else make_count(config, output)
                wall, cpu = await drain_transport(config, make, args.events)
            result = Result(reader, repeat, args.events, wall, cpu)
            results.append(result)
            log.info("repeat %d %-22s %9.0f events/s %6.1f CPU us/event", repeat, reader, result.rate, result.cpu_us)
    restore = (await measure_restore(bootstrap, args.restore_users, args.restore_value_bytes, args.partitions, work)
               if args.restore_users else {})
    return results, restore


def summarize(results: list[Result]) -> list[dict]:
    raw = {r.repeat: r.rate for r in results if r.reader == "raw"}
    rows = []
    for reader in READERS:
        mine = [r for r in results if r.reader == reader]
        if not mine:
            continue
        rows.append({"reader": reader, "events_per_s": round(statistics.median(r.rate for r in mine)),
                     "ratio_to_raw": round(statistics.median(r.rate / raw[r.repeat] for r in mine), 3),
                     "cpu_us_per_event": round(statistics.median(r.cpu_us for r in mine), 1),
                     "runs": [round(r.rate) for r in mine]})
    return rows


def print_table(rows: list[dict], restore: dict, args: argparse.Namespace) -> None:
    if rows:
        print(f"\n{args.events} events, {args.partitions} partitions, medians of {args.repeats} interleaved "
              f"repeats ({platform.python_version()}, {platform.machine()})\n")
        print("| reader | events/s | ratio to raw | CPU µs/event | runs (events/s) |")
        print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['reader']} | {row['events_per_s']:,} | {row['ratio_to_raw']:.2f} | "
              f"{row['cpu_us_per_event']:.1f} | {', '.join(f'{r:,}' for r in row['runs'])} |")
    if restore:
        print(f"\nrestore of {args.restore_users:,} keys of {args.restore_value_bytes:,} bytes "
              f"({args.partitions} partitions)\n")
        print("| from | seconds | changelog records read | snapshot entries | keys restored |")
        print("|---|---:|---:|---:|---:|")
        for label, r in restore.items():
            print(f"| {label} | {r['seconds']:.2f} | {r['changelog_records']:,} | {r['snapshot_entries']:,} | "
                  f"{r['keys']:,} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events pre-loaded (default 100000)")
    parser.add_argument("--users", type=int, default=2_000, help="simulated users (default 2000)")
    parser.add_argument("--partitions", type=int, default=2, help="input partitions (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats; 0 measures restore alone (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--restore-users", type=int, default=100_000,
                        help="keys in the restore measurement; 0 skips it (default 100000)")
    parser.add_argument("--restore-value-bytes", type=int, default=1024,
                        help="bytes per stored value in the restore measurement (default 1024: a user's "
                             "GRU state and window are about that size)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("stream_app").setLevel(logging.WARNING)
    with EmbeddedBroker(kind="kafka") as info, tempfile.TemporaryDirectory(prefix="bench-transport-") as work:
        results, restore = asyncio.run(run(args, info.bootstrap, Path(work)))
    rows = summarize(results)
    print_table(rows, restore, args)
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)}, "summary": rows,
                                             "runs": [asdict(r) for r in results], "restore": restore}, indent=2))


if __name__ == "__main__":
    main()
