"""Traffic stage 1 throughput: Los-loop readings/s through per-sensor windows on a real broker, on the
batch-native transport (``STREAM_APP_HOT_PATH=transport``, the default) against the Faust agent
(``faust``), interleaved, one fresh topic prefix, worker and group per run.

Each run pre-loads the readings (207 sensors, 5-minute steps, event-time order) into a fresh
``traffic-readings`` topic (``--partitions``), starts one worker and polls
``stream_app_events_processed_total{pipeline="traffic"}``; the rate is taken from the first poll
above zero to the last poll below the total (``bench_pipeline.sustained_rate``), so start-up and
group joins are excluded. Stage 2 runs in the same worker (a Faust agent on both paths) and
shares its CPU. ``--with-passthrough`` adds the behavior worker in passthrough mode on as many
generated user events: what the framework itself moves on this machine.

    .venv/bin/python benchmarks/bench_traffic_stage1.py [--readings 200000] [--repeats 3] [--with-passthrough]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

from bench_pipeline import (
    PROCESSED,
    Bench,
    Worker,
    events_records,
    measure_throughput,
    metric,
    parse_args,
    sustained_rate,
)

from stream_app.cli.io import to_records
from stream_app.kafka_io import Record
from stream_app.replay import read_los_loop

HOT_PATHS = ("transport", "faust")


def _los_loop_records(n: int) -> list[Record]:
    readings = []
    for reading in read_los_loop():
        readings.append(reading)
        if len(readings) == n:
            break
    return list(to_records(readings))


def _stage1_rate(bench: Bench, records: list[Record], hot_path: str) -> float:
    """Readings/s of stage 1 on ``hot_path`` while it was busy."""
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    bench.load(prefix, records)
    env = {**bench.worker_env(prefix, "full"), "STREAM_APP_HOT_PATH": hot_path}
    worker = Worker(env=env, log_path=bench.workdir / f"{prefix}worker.log")
    bench.workers.append(worker)
    points: list[tuple[float, float]] = []
    deadline = time.monotonic() + bench.args.timeout_s
    try:
        worker.start()
        while not points or points[-1][1] < len(records):
            count = metric(worker.metrics(), PROCESSED, pipeline="traffic")
            if count > 0:
                points.append((time.monotonic(), count))
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{hot_path}: {count:.0f} of {len(records)} readings after {bench.args.timeout_s} s")
            time.sleep(bench.args.poll_s)
    finally:
        bench.stop_worker(worker)
        bench.drop_topics(prefix)
    return sustained_rate(points, len(records))[0]


def _row(name: str, rates: list[float]) -> str:
    return f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} |"


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--readings", type=int, default=200_000,
                       help="Los-loop readings per run (default 200000: the transport takes seconds, not polls)")
    extra.add_argument("--with-passthrough", action="store_true",
                       help="also run the behavior worker in passthrough mode on as many generated events")
    ours, rest = extra.parse_known_args()
    args = parse_args(rest)
    bench = Bench(args)
    bench.start()
    rates: dict[str, list[float]] = {path: [] for path in HOT_PATHS}
    baseline: list[float] = []
    try:
        traffic = _los_loop_records(ours.readings)
        behavior = events_records(ours.readings, args.users, args.seed) if ours.with_passthrough else []
        for repeat in range(args.repeats):
            for hot_path in HOT_PATHS:
                rates[hot_path].append(_stage1_rate(bench, traffic, hot_path))
            line = ", ".join(f"{path} {rates[path][-1]:,.0f}" for path in HOT_PATHS)
            if behavior:
                baseline.append(measure_throughput(bench, "passthrough", repeat, behavior).events_per_s)
                line += f", passthrough {baseline[-1]:,.0f} events/s"
            print(f"run {repeat + 1}: stage 1 readings/s {line}", flush=True)
    finally:
        bench.close()
    print(f"\n| {len(traffic):,} Los-loop readings, {args.partitions} partitions | median per s | runs |")
    print("|---|---:|---|")
    for path in HOT_PATHS:
        print(_row(f"traffic stage 1 on {path} (readings)", rates[path]))
    if baseline:
        print(_row("behavior passthrough (events)", baseline))
    transport, faust = (statistics.median(rates[path]) for path in HOT_PATHS)
    print(f"\ntransport / faust: {transport / faust:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
