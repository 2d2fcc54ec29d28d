"""Readers of one pre-loaded topic, side by side: raw aiokafka, Quix Streams, the model alone and the worker.

One embedded Apache Kafka broker; one ``<prefix>user-events`` topic (``--partitions``) pre-loaded once
with ``--fast-events`` generated user events; then, per repeat and interleaved (every reader once per
repeat, in the same order), each reader reads it from the beginning with its own consumer group: the
fast readers (``raw``, ``quix-passthrough``, ``transport-passthrough``: ``FAST``) its first
``--fast-events``, the others its first ``--events`` (they are 20-100x slower):

- ``raw``: aiokafka ``getmany`` (no group) + ``schemas.decode_user_event`` per record;
- ``quix-passthrough`` / ``quix-stateful``: a Quix Streams app that decodes each value with the same
  decoder, and (stateful) counts events per key in its state store (RocksDB + changelog);
- ``model``: ``predict_many`` alone, on the same events cut into ``--batch-max`` batches grouped by
  user as the worker does (the records are read first; only the model calls are timed);
- ``transport-passthrough`` / ``transport-full`` / ``faust-passthrough`` / ``faust-full``: ``stream-app
  worker`` with ``STREAM_APP_HOT_PATH`` and ``STREAM_APP_BEHAVIOR_MODE`` set so;
- ``old-full``: the worker of another source tree (``--old-tree``, e.g. a ``git worktree`` of commit
  7e8b271) in full mode, run with this venv and ``PYTHONPATH=<old-tree>``;
- ``worker-full-2proc``: the worker, full, its stages split over two processes of one app id
  (``--stages behavior`` | ``--stages cells,traffic``), timed until BOTH stages are done: behavior's
  processed count reaches ``--events`` and the cells process has consumed every ``cell-events`` record
  the behavior process had written by then; CPU summed over both processes.

Every worker starts its cell stage at the end of ``cell-events`` (its groups' offsets are committed
there before it starts): the topic is shared, and the cell events the workers before it wrote
(``--events`` or more each) would otherwise be a growing backlog that its cell stage works through
while it is timed.

Every reader runs in its own process. Events/s: for the in-process readers, from the first record
to the last; for workers, from the batch that the first /metrics poll with progress saw to the last
batch (``stream_app_events_processed_total`` and ``stream_app_last_processed_timestamp_seconds``, which
the worker sets together per batch: batch-exact, not poll-exact; a worker without that gauge, the
old one, is timed by the polls). Start and group join are excluded, as in bench_pipeline.py. CPU
µs/event: user+system CPU of that process between the first and the last poll that saw it busy,
divided by the events in between (the broker's CPU is not counted).

    python benchmarks/bench_readers.py --checkpoint next-action.pt --old-tree /tmp/old-7e8b271
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pipeline as bp  # noqa: E402  (the sibling: broker, worker subprocess, metrics helpers)

from stream_app.broker import EmbeddedBroker  # noqa: E402
from stream_app.kafka_io import partition_counts, produce  # noqa: E402
from stream_app.settings import Settings  # noqa: E402
from stream_app.topics import TOPIC_NAMES  # noqa: E402

__all__ = ["main"]

IN_PROCESS = ("raw", "quix-passthrough", "quix-stateful", "model")
FAST = ("raw", "quix-passthrough", "transport-passthrough")  # read --fast-events: a drain of seconds, not 1
LAST_BATCH = "stream_app_last_processed_timestamp_seconds"
WORKERS = {"transport-passthrough": ("transport", "passthrough"), "transport-full": ("transport", "full"),
           "faust-passthrough": ("faust", "passthrough"), "faust-full": ("faust", "full"), "old-full": (None, "full")}
# Readers that run the worker's stages in two processes (STREAM_APP_STAGES): the first's, the second's.
SPLIT = {"worker-full-2proc": ("behavior", "cells,traffic")}
READERS = IN_PROCESS + tuple(WORKERS) + tuple(SPLIT)
CELL_EVENTS = "cell-events"
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- children (one reader each)

def _cpu_s() -> float:
    usage = os.times()
    return usage.user + usage.system


async def _raw_batches(url: str, topic: str, n: int, max_records: int | None = None,
                       decode: bool = True) -> tuple[list[list[Any]], float, float]:
    """Drain ``topic`` with getmany (no group): (batches of decoded events, seconds, CPU seconds)
    from the first fetched record to the n-th."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas import decode_user_event

    consumer = AIOKafkaConsumer(bootstrap_servers=url.replace("kafka://", ""), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        counts = await partition_counts(Settings.from_env({}, broker=url), [topic])
        partitions = [TopicPartition(topic, p) for p in range(counts[topic])]
        consumer.assign(partitions)
        batches, seen, t0, c0 = [], 0, 0.0, 0.0
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            if fetched and not seen:
                t0, c0 = time.monotonic(), _cpu_s()
            for records in fetched.values():
                events = [decode_user_event(r.value) if decode else r.value for r in records]
                seen += len(events)
                batches.append(events)
        return batches, time.monotonic() - t0, _cpu_s() - c0
    finally:
        await consumer.stop()


def child_raw(args: argparse.Namespace) -> dict[str, float]:
    _, seconds, cpu = asyncio.run(_raw_batches(args.broker, args.topic, args.events))
    return {"events": args.events, "seconds": seconds, "cpu_s": cpu}


def child_model(args: argparse.Namespace) -> dict[str, float]:
    """predict_many on batches of --batch-max events, grouped by user as the worker does; states kept."""
    import torch

    from models.next_action.serving import ActionEvent, GRUPredictor, MarkovPredictor
    from models.next_action.state import UserState

    torch.set_num_threads(1)
    batches, _, _ = asyncio.run(_raw_batches(args.broker, args.topic, args.events, max_records=args.batch_max))
    predictor = GRUPredictor.from_checkpoint(args.checkpoint) if args.checkpoint else MarkovPredictor()
    states: dict[str, UserState] = {}
    events = 0
    t0, c0 = time.monotonic(), _cpu_s()
    for batch in batches:
        by_user: dict[str, list[ActionEvent]] = {}
        for event in batch:
            if hasattr(event, "user_id"):  # a Rejection otherwise (none in generated events)
                by_user.setdefault(event.user_id, []).append(
                    ActionEvent(token=event.action, ts_ms=event.ts, lat=event.lat, lon=event.lon))
        users = list(by_user)
        predictor.predict_many([states.setdefault(u, UserState()) for u in users], [by_user[u] for u in users], 5)
        events += len(batch)
    return {"events": events, "seconds": time.monotonic() - t0, "cpu_s": _cpu_s() - c0,
            "version": getattr(predictor, "version", "?")}


def child_quix(args: argparse.Namespace, stateful: bool) -> dict[str, float]:
    from quixstreams import Application

    from schemas import decode_user_event

    app = Application(broker_address=args.broker.replace("kafka://", ""), consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", state_dir=tempfile.mkdtemp(prefix="quix-state-"),
                      loglevel="WARNING")
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    progress = {"n": 0, "t0": 0.0, "c0": 0.0, "t1": 0.0, "c1": 0.0}

    def count() -> None:
        if progress["n"] == 0:
            progress["t0"], progress["c0"] = time.monotonic(), _cpu_s()
        progress["n"] += 1
        if progress["n"] >= args.events:
            progress["t1"], progress["c1"] = time.monotonic(), _cpu_s()
            app.stop()

    if stateful:
        def update(value: bytes, state: Any) -> None:
            decode_user_event(value)
            state.set("n", state.get("n", 0) + 1)
            count()
        sdf = sdf.update(update, stateful=True)
    else:
        def passthrough(value: bytes) -> None:
            decode_user_event(value)
            count()
        sdf = sdf.update(passthrough)
    app.run()
    return {"events": progress["n"], "seconds": progress["t1"] - progress["t0"],
            "cpu_s": progress["c1"] - progress["c0"]}


# --------------------------------------------------------------------------- parent

def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def events_for(args: argparse.Namespace, reader: str) -> int:
    return args.fast_events if reader in FAST else args.events


def run_child(args: argparse.Namespace, url: str, topic: str, reader: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", reader, "--broker", url, "--topic", topic,
               "--events", str(events_for(args, reader)), "--batch-max", str(args.batch_max)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s, cwd=bp.ROOT)
    if done.returncode != 0:
        raise bp.RunFailed(f"{reader} exited with {done.returncode}", done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _skip_earlier_cell_events(settings: Settings, app_id: str) -> None:
    """Commit the end of ``cell-events`` for the groups that read it in app ``app_id`` (the cell
    transport's, Faust's): its cell stage starts at the records its own behavior stage writes."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from stream_app.kafka_io import client_options

    topic = settings.topic(CELL_EVENTS)
    tps = [TopicPartition(topic, p) for p in range((await partition_counts(settings, [topic]))[topic])]
    for group in (f"{app_id}-cells", app_id):
        consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **client_options(settings))
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
        finally:
            await consumer.stop()


def _spawn(bench: bp.Bench, env: dict[str, str], cwd: Path, stages: str | None = None) -> bp.Worker:
    """Start ``stream-app worker`` (``--stages stages``) with ``env`` in ``cwd``, its cell stage
    starting at the end of ``cell-events``."""
    asyncio.run(_skip_earlier_cell_events(bench.settings(env["STREAM_APP_TOPIC_PREFIX"]), env["STREAM_APP_ID"]))
    flags = ["--stages", stages] if stages else []
    log_path = bench.workdir / f"{env['STREAM_APP_ID']}{'-' + stages if stages else ''}.log"
    worker = bp.Worker(env=env, log_path=log_path)
    bench.workers.append(worker)
    worker.log_path.touch()
    with worker.log_path.open("ab") as out:  # bp.Worker.start runs in bp.ROOT; the old tree needs its own cwd
        worker.process = subprocess.Popen([sys.executable, "-m", "stream_app", "worker", *flags], env=env, cwd=cwd,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return worker


def run_worker(args: argparse.Namespace, bench: bp.Bench, prefix: str, reader: str) -> dict[str, Any]:
    hot_path, mode = WORKERS[reader]
    env = bench.worker_env(prefix, mode)
    env["STREAM_APP_ID"] = f"{prefix}{reader}-{uuid.uuid4().hex[:6]}"  # a fresh group on the shared topic
    env["STREAM_APP_STATE_DIR"] = str(bench.workdir / env["STREAM_APP_ID"])
    cwd = bp.ROOT
    if hot_path is None:
        env["PYTHONPATH"] = args.old_tree
        cwd = Path(args.old_tree)
        if args.old_checkpoint:  # the old code reads checkpoints of its own time only
            env["STREAM_APP_CHECKPOINT"] = args.old_checkpoint
    else:
        env["STREAM_APP_HOT_PATH"] = hot_path
    worker = _spawn(bench, env, cwd)
    n = events_for(args, reader)
    try:
        points = _watch(worker, args, n)
    finally:
        bench.stop_worker(worker)
    samples = points_samples.pop(worker.log_path)
    first, last = points[0], points[-1]
    busy = [p for p in points if p.count < n]
    cpu_end = busy[-1] if len(busy) >= 2 else last
    if last.count <= first.count:
        raise bp.RunFailed(f"{reader} processed all events before two polls saw it busy: use more events")
    if first.batch_at and last.batch_at > first.batch_at:  # the worker's own clock, batch-exact
        seconds, clock = last.batch_at - first.batch_at, "batch"
    else:  # a worker without the gauge (the old tree): the polls' clock, over the busy polls
        last, clock = cpu_end, "poll"
        seconds = last.at - first.at
    events = last.count - first.count
    # CPU is read at the polls only: per event over the busy polls, scaled to the events timed.
    cpu_per_event = (cpu_end.cpu - first.cpu) / max(1.0, cpu_end.count - first.count)
    return {"events": events, "seconds": seconds, "clock": clock, "cpu_s": cpu_per_event * events,
            "version": bp.model_version(samples), "mean_batch": _mean_batch(samples)}


def run_split(args: argparse.Namespace, bench: bp.Bench, prefix: str, reader: str) -> dict[str, Any]:
    """Two workers of one app id on the shared topic, the stages split between them (``SPLIT``); timed
    from behavior's first batch seen busy until the cells process has consumed the cell-events records
    that the behavior process had written when it reached ``n`` (poll-exact: within --poll-s)."""
    app_id = f"{prefix}{reader}-{uuid.uuid4().hex[:6]}"
    n = events_for(args, reader)
    workers = []
    try:
        for stages in SPLIT[reader]:
            env = bench.worker_env(prefix, "full")  # each its own web port and state folder, one app id
            env.update(STREAM_APP_ID=app_id, STREAM_APP_HOT_PATH="transport",
                       STREAM_APP_STATE_DIR=str(bench.workdir / f"{app_id}-{stages}"))
            workers.append(_spawn(bench, env, bp.ROOT, stages))
        points = _watch_split(workers[0], workers[1], args, n, f"{prefix}{CELL_EVENTS}")
    finally:
        for worker in workers:
            bench.stop_worker(worker)
    samples = points_samples.pop(workers[0].log_path)
    first, done = points[0], points[-1]
    target = next(p for p in points[1:] if p.count >= n)  # behavior done: its cell-events, the cells' target
    busy = [p for p in points if p.count < target.count]
    behavior_end = busy[-1] if len(busy) >= 2 else target
    if target.count <= first.count or not first.batch_at:
        raise bp.RunFailed(f"{reader} processed all events before two polls saw it busy: use more events")
    events = target.count - first.count
    seconds = done.wall - first.batch_at  # the behavior worker's batch clock and the poll, both Unix time
    # CPU per event of each process over its busy polls, summed, scaled to the events timed.
    behavior_cpu = (behavior_end.cpu[0] - first.cpu[0]) / max(1.0, behavior_end.count - first.count)
    cells_cpu = (done.cpu[1] - first.cpu[1]) / events
    return {"events": events, "seconds": seconds, "clock": "batch+poll", "cpu_s": (behavior_cpu + cells_cpu) * events,
            "cpu_us_per_event_by_process": {"behavior": 1e6 * behavior_cpu, "cells+traffic": 1e6 * cells_cpu},
            "behavior_events_per_s": events / (target.batch_at - first.batch_at),
            "cell_records": {"target": target.produced, "consumed": done.consumed},
            "version": bp.model_version(samples), "mean_batch": _mean_batch(samples)}


class SplitPoint(NamedTuple):
    """One poll of both workers of a split reader: when (monotonic and Unix), behavior's events processed
    and the wall time of its batch that brought them there, the cell-events records the behavior
    worker wrote and the cells worker consumed, and each process's CPU s."""

    at: float
    wall: float
    count: float
    batch_at: float
    produced: float
    consumed: float
    cpu: tuple[float, float]


def _watch_split(behavior: bp.Worker, cells: bp.Worker, args: argparse.Namespace, n: int,
                 cell_topic: str) -> list[SplitPoint]:
    """Every poll from the first that saw behavior progress to the one that saw the cells worker
    past the cell-events records written by the time behavior had processed ``n`` events."""
    points: list[SplitPoint] = []
    started = last_change = time.monotonic()
    last: tuple[float, float] = (-1.0, -1.0)
    target: float | None = None
    while True:
        for worker in (behavior, cells):
            worker.check_alive()
        try:
            samples, cell_samples = behavior.metrics(), cells.metrics()
        except OSError:
            if time.monotonic() - started > args.startup_timeout_s:
                raise bp.RunFailed("a worker's web server did not come up",
                                   behavior.log_tail() + cells.log_tail()) from None
            time.sleep(0.3)
            continue
        now, wall = time.monotonic(), time.time()
        count = bp.metric(samples, bp.PROCESSED, pipeline="behavior")
        consumed = bp.metric(cell_samples, "stream_app_events_consumed_total", topic=cell_topic)
        if count > 0 and bp.serves_expected_model(samples, args):
            points.append(SplitPoint(now, wall, count, bp.metric(samples, LAST_BATCH, pipeline="behavior"),
                                     bp.metric(samples, "stream_app_outputs_total", topic=cell_topic), consumed,
                                     (_proc_cpu_s(behavior.process.pid), _proc_cpu_s(cells.process.pid))))
            if target is None and count >= n and len(points) >= 2:
                target = points[-1].produced
            if target is not None and consumed >= target:
                points_samples[behavior.log_path] = samples
                return points
        if (count, consumed) != last:
            last_change, last = now, (count, consumed)
        if now - last_change > (args.stall_s if points else args.startup_timeout_s) or now - started > args.timeout_s:
            raise bp.RunFailed(f"behavior {count:.0f}/{n}, cells {consumed:.0f}/{target} records after "
                               f"{now - started:.0f} s", behavior.log_tail() + cells.log_tail())
        time.sleep(args.poll_s)


points_samples: dict[Path, dict[str, float]] = {}


class Point(NamedTuple):
    """One /metrics poll of a worker: when (monotonic), events processed, its CPU s, and the wall
    time of the batch that brought the counter there (0.0 when the worker has no such gauge)."""

    at: float
    count: float
    cpu: float
    batch_at: float


def _mean_batch(samples: dict[str, float]) -> float:
    count = bp.metric(samples, "stream_app_batch_size_count", pipeline="behavior")
    return bp.metric(samples, "stream_app_batch_size_sum", pipeline="behavior") / count if count else 0.0


def _watch(worker: bp.Worker, args: argparse.Namespace, n: int) -> list[Point]:
    """Every poll from the first that saw progress to the one that saw ``n`` events processed."""
    points: list[Point] = []
    started = last_change = time.monotonic()
    last = -1.0
    while True:
        worker.check_alive()
        try:
            samples = worker.metrics()
        except OSError:
            if time.monotonic() - started > args.startup_timeout_s:
                raise bp.RunFailed("worker web server did not come up", worker.log_tail()) from None
            time.sleep(0.3)
            continue
        now, count = time.monotonic(), bp.metric(samples, bp.PROCESSED, pipeline="behavior")
        cpu = _proc_cpu_s(worker.process.pid)
        if count > 0 and bp.serves_expected_model(samples, args):
            points.append(Point(now, count, cpu, bp.metric(samples, LAST_BATCH, pipeline="behavior")))
        if count >= n and len(points) >= 2:
            points_samples[worker.log_path] = samples
            return points
        if count != last:
            last_change, last = now, count
        if now - last_change > (args.stall_s if points else args.startup_timeout_s) or now - started > args.timeout_s:
            raise bp.RunFailed(f"{count:.0f}/{n} after {now - started:.0f} s", worker.log_tail())
        time.sleep(args.poll_s)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    bench_args = bp.parse_args(["--partitions", str(args.partitions), "--batch-max", str(args.batch_max),
                                "--users", str(args.users), "--latency-seconds", str(args.latency_seconds),
                                "--poll-s", str(args.poll_s)]
                               + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
    bench = bp.Bench(bench_args, broker=EmbeddedBroker(kind="kafka"))
    bench.start()
    runs: list[dict[str, Any]] = []
    latency = None
    try:
        prefix = f"r{uuid.uuid4().hex[:6]}-"
        records = bp.events_records(max(args.events, args.fast_events), args.users, args.seed)
        settings = bench.settings(prefix)
        asyncio.run(bp.create_topics(settings, [settings.topic(name) for name in TOPIC_NAMES], args.partitions))
        asyncio.run(produce(settings, [(f"{prefix}{t}", k, v) for t, k, v in records]))
        topic = settings.topic("user-events")
        print(f"pre-loaded {len(records)} events into {topic} ({args.partitions} partitions)", flush=True)
        for repeat in range(args.repeats):
            for reader in args.readers:
                started = time.time()
                try:
                    result = (run_child(args, bench.url, topic, reader) if reader in IN_PROCESS
                              else run_split(args, bench, prefix, reader) if reader in SPLIT
                              else run_worker(args, bench, prefix, reader))
                except bp.RunFailed as exc:
                    print(f"  {reader} repeat {repeat}: FAILED {exc}\n{exc.log[-1500:]}", flush=True)
                    runs.append({"reader": reader, "repeat": repeat, "failed": str(exc), "at": started})
                    continue
                result.update(reader=reader, repeat=repeat, at=started,
                              events_per_s=result["events"] / result["seconds"],
                              cpu_us_per_event=1e6 * result["cpu_s"] / result["events"])
                runs.append(result)
                print(f"  {reader:22s} repeat {repeat}: {result['events_per_s']:>9,.0f} events/s "
                      f"{result['cpu_us_per_event']:>7.1f} CPU µs/event  {result['events']:>9,.0f} events timed "
                      f"({result.get('clock', 'in-process')} clock) {result.get('version', '')}", flush=True)
        summary = summarize(runs)
        capacity = summary["median_events_per_s"].get("transport-full")
        if args.latency_seconds > 0 and capacity:
            latency = bp.measure_latency(bench, capacity / 2)
    finally:
        bench.close()
    return {"events": args.events, "fast_events": args.fast_events, "runs": runs, "summary": summarize(runs),
            "latency": latency, "load_average": os.getloadavg()}


RATIOS = {"transport-passthrough / quix-passthrough": ("transport-passthrough", "quix-passthrough", 1.0, 1.0),
          "transport-full / (0.5 x model)": ("transport-full", "model", 0.5, 1.0),
          "transport-full / (3 x old-full)": ("transport-full", "old-full", 3.0, 1.0),
          "faust-full / (3 x old-full)": ("faust-full", "old-full", 3.0, 1.0),
          "worker-full-2proc / transport-full": ("worker-full-2proc", "transport-full", 1.0, 1.0)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    readers = list(dict.fromkeys(r["reader"] for r in ok))
    medians = {r: statistics.median(x["events_per_s"] for x in ok if x["reader"] == r) for r in readers}
    cpu = {r: statistics.median(x["cpu_us_per_event"] for x in ok if x["reader"] == r) for r in readers}
    raw = medians.get("raw")
    by = {(r["reader"], r["repeat"]): r["events_per_s"] for r in ok}
    ratios = {}
    for name, (a, b, factor, target) in RATIOS.items():
        if a in medians and b in medians:
            pairs = [by[(a, i)] / (factor * by[(b, i)]) for (reader, i) in by if reader == a and (b, i) in by]
            ratios[name] = {"of_medians": medians[a] / (factor * medians[b]), "per_repeat": pairs, "target": target}
    spread = {r: (min(x["events_per_s"] for x in ok if x["reader"] == r) / medians[r],
                  max(x["events_per_s"] for x in ok if x["reader"] == r) / medians[r]) for r in readers}
    return {"median_events_per_s": medians, "median_cpu_us_per_event": cpu, "ratios": ratios, "spread": spread,
            "to_raw": {r: medians[r] / raw for r in readers} if raw else {}}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| reader | median events/s | runs (events/s) | ratio to raw | CPU µs/event | min/max of median |",
             "|---|---:|---|---:|---:|---|"]
    for reader, median in s["median_events_per_s"].items():
        runs = ", ".join(f"{r['events_per_s']:,.0f}" for r in result["runs"]
                         if r["reader"] == reader and "failed" not in r)
        low, high = s["spread"][reader]
        lines.append(f"| {reader} | {median:,.0f} | {runs} | {s['to_raw'].get(reader, float('nan')):.3f} | "
                     f"{s['median_cpu_us_per_event'][reader]:.1f} | {low:.2f}–{high:.2f} |")
    lines += ["", "| ratio | of the medians | per repeat (interleaved) | target |", "|---|---:|---|---:|"]
    for name, r in s["ratios"].items():
        lines.append(f"| {name} | {r['of_medians']:.2f} | {', '.join(f'{x:.2f}' for x in r['per_repeat'])} | "
                     f"≥ {r['target']} |")
    latency = result.get("latency")
    if latency:
        lines += ["", f"Latency at {latency['target_rate']:,.0f} events/s (achieved {latency['achieved_rate']:,.0f}), "
                      f"{latency['measured']} predictions: emit p50 {latency['emit_ms'].get('p50')} ms, "
                      f"p99 {latency['emit_ms'].get('p99')} ms, max {latency['emit_ms'].get('max')} ms; "
                      f"output record p99 {latency['output_record_ms'].get('p99')} ms; "
                      f"{latency['events_per_batch']:.0f} events per batch"]
    failed = [r for r in result["runs"] if "failed" in r]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{r['reader']} #{r['repeat']}: {r['failed']}" for r in failed)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Readers: " + ", ".join(READERS))
    parser.add_argument("--events", type=int, default=50_000,
                        help="events each slow reader (model, quix-stateful, the full and faust workers) reads "
                             "(default 50000)")
    parser.add_argument("--fast-events", type=int, default=500_000,
                        help=f"events pre-loaded, and read by the fast readers ({', '.join(FAST)}; default 500000)")
    parser.add_argument("--users", type=int, default=5000, help="simulated users (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--partitions", type=int, default=2, help="input topic partitions (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported (default 3)")
    parser.add_argument("--readers", default=",".join(READERS),
                        help="comma-separated readers, run in this order in every repeat (default all)")
    parser.add_argument("--batch-max", type=int, default=512, help="worker batch size and model batches (default 512)")
    parser.add_argument("--checkpoint", default=None, help="next-action checkpoint for the model and the workers "
                        "(default: the online Markov model)")
    parser.add_argument("--old-tree", default="/tmp/old-7e8b271",
                        help="source tree of the old worker (old-full): `git worktree add /tmp/old-7e8b271 7e8b271`")
    parser.add_argument("--old-checkpoint", default=None,
                        help="checkpoint for old-full, trained by the old tree (newer checkpoints do not load there)")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help="seconds of load at half the transport-full median, after the repeats (0 = skip)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="worker /metrics polling interval (default 0.5)")
    parser.add_argument("--stall-s", type=float, default=60.0, help="a worker without progress this long fails")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0, help="a worker idle this long at start fails")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="give up on one reader after this long")
    parser.add_argument("--json-out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=IN_PROCESS, help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    unknown = set(args.readers) - set(READERS)
    if unknown:
        parser.error(f"unknown readers {sorted(unknown)}; choose from {', '.join(READERS)}")
    if "old-full" in args.readers and not Path(args.old_tree, "stream_app").is_dir():
        parser.error(f"--old-tree {args.old_tree} has no stream_app/: run `git worktree add {args.old_tree} 7e8b271`")
    for name in ("checkpoint", "old_checkpoint"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child = {"raw": child_raw, "model": child_model, "quix-passthrough": lambda a: child_quix(a, False),
                 "quix-stateful": lambda a: child_quix(a, True)}[args.child]
        print(json.dumps(child(args)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup: workers and broker stop
    result = measure(args)
    print(markdown(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
