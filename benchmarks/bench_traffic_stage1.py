"""Traffic stage 1 throughput: Los-loop readings/s through per-sensor windows on a real broker.

Baseline in the same run: the behavior worker in passthrough mode (decode and validate only) on
the same number of generated user events, i.e. what the framework itself moves on this machine.

    .venv/bin/python benchmarks/bench_traffic_stage1.py [--readings 40000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

from bench_pipeline import PROCESSED, Bench, events_records, measure_throughput, metric, parse_args

from stream_app.cli.io import to_records
from stream_app.replay import read_los_loop


def _los_loop_records(n: int) -> list:
    readings = []
    for reading in read_los_loop():
        readings.append(reading)
        if len(readings) == n:
            break
    return list(to_records(readings))


def _traffic_rate(bench: Bench, records: list) -> float:
    """Readings/s of stage 1 between the first and the last poll that saw progress."""
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    bench.load(prefix, records)
    worker = bench.start_worker(prefix, "full")
    points = []
    try:
        while not points or points[-1][1] < len(records):
            count = metric(worker.metrics(), PROCESSED, pipeline="traffic")
            if count > 0:
                points.append((time.monotonic(), count))
            worker.check_alive()
            time.sleep(bench.args.poll_s)
    finally:
        bench.stop_worker(worker)
        bench.drop_topics(prefix)
    (t0, c0), (t1, c1) = points[0], points[-1]
    return (c1 - c0) / max(t1 - t0, 1e-9)


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--readings", type=int, default=40_000, help="Los-loop readings per run (default 40000)")
    ours, rest = extra.parse_known_args()
    args = parse_args(rest)
    bench = Bench(args)
    bench.start()
    try:
        traffic = _los_loop_records(ours.readings)
        behavior = events_records(ours.readings, args.users, args.seed)
        stage1, baseline = [], []
        for repeat in range(args.repeats):
            stage1.append(_traffic_rate(bench, traffic))
            baseline.append(measure_throughput(bench, "passthrough", repeat, behavior).events_per_s)
            print(f"run {repeat + 1}: stage 1 {stage1[-1]:,.0f} readings/s, passthrough {baseline[-1]:,.0f} events/s",
                  flush=True)
    finally:
        bench.close()
    s, b = statistics.median(stage1), statistics.median(baseline)
    print(f"\n| | median per s | runs |\n|---|---:|---|\n| traffic stage 1 (readings) | {s:,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in stage1)} |\n| passthrough baseline (events) | {b:,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in baseline)} |\n\nstage 1 / passthrough: {s / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
