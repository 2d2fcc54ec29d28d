"""Behavior alerts through a real worker: the false-alert rate a deployment would see, and
(``--takeovers N``) how soon taken-over accounts are flagged.

Generated users are loaded into ``user-events`` of an embedded Apache Kafka broker, one
``stream-app worker`` serving a trained next-action checkpoint (or, without ``--checkpoint``, the
per-user Markov fallback) processes them all, and the script reads the ``behavior`` alerts it
wrote to ``anomaly-alerts``. With ``--takeovers N``, N accounts spread over the population are
taken over (``simulation.users.Takeover``) at 85 % of the run's time span; an alert on one of
their intruder's events is a detection (reported as the intruder's event number), every other
alert is a false one. The false-alert rate is per user (victims' own behavior included) per
simulated day (the span of the events' times).

    stream-app train next-action --data generated --threads 1 --out na.pt      # 300 users, seed 0
    python benchmarks/bench_behavior_alerts.py --checkpoint na.pt --users 1000 --events 170000 --seed 1
    python benchmarks/bench_behavior_alerts.py --users 1000 --events 170000 --seed 1 --takeovers 20   # fallback
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench_pipeline import Worker, create_topics, metric

from schemas import AnomalyAlert, decode
from simulation.users import BehaviorConfig, BehaviorWorkload, Takeover, generate_user_events
from stream_app.broker import EmbeddedBroker, free_port
from stream_app.cli.io import to_records
from stream_app.kafka_io import consume, produce
from stream_app.settings import Settings
from stream_app.topics import TOPIC_NAMES

__all__ = ["main"]

WORKER_ENV = {"STREAM_APP_SESSION_TIMEOUT_S": "6", "STREAM_APP_HEARTBEAT_S": "1",
              "STREAM_APP_REBALANCE_TIMEOUT_S": "3", "STREAM_APP_LOG_LEVEL": "warn"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="next-action checkpoint the worker serves "
                        "(default: none, the per-user Markov fallback)")
    parser.add_argument("--users", type=int, default=1000, help="generated users [1000]")
    parser.add_argument("--events", type=int, default=170_000, help="events in all [170000: about 4 days]")
    parser.add_argument("--seed", type=int, default=1, help="generator seed; train on another one [1]")
    parser.add_argument("--takeovers", type=int, default=0, help="accounts taken over at 85 %% of the time [0]")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of user-events [2]")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up after this long [1800]")
    parser.add_argument("--json", type=Path, help="also write the result here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = _workload(args)
    events = workload.events
    days = (events[-1]["ts"] - events[0]["ts"]) / 86_400_000
    workdir, broker = Path(tempfile.mkdtemp(prefix="bench-alerts-")), EmbeddedBroker(kind="kafka")
    prefix = f"a{uuid.uuid4().hex[:6]}-"
    worker = None
    try:
        settings = Settings.from_env({}, broker=broker.start().url, topic_prefix=prefix)
        asyncio.run(create_topics(settings, [settings.topic(name) for name in TOPIC_NAMES], args.partitions))
        asyncio.run(produce(settings, list(to_records(events, prefix))))
        worker = Worker(env=_worker_env(args, settings, prefix, workdir), log_path=workdir / "worker.log")
        started = time.monotonic()
        worker.start()
        samples = _wait_until_processed(worker, len(events), args.timeout_s)
        seconds = time.monotonic() - started
        alerts = asyncio.run(_behavior_alerts(settings, settings.topic("anomaly-alerts")))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    detected, false_alerts = _judge(workload, alerts)
    victims = Counter(events[i]["user_id"] for i in workload.intruder.nonzero()[0])  # the intruder's events
    return {"checkpoint": str(args.checkpoint) if args.checkpoint else None, "users": args.users,
            "events": len(events), "days": round(days, 2), "seed": args.seed, "worker_s": round(seconds, 1),
            "alerts": len(alerts),
            "alerts_counted": metric(samples, "stream_app_anomaly_alerts_total", kind="behavior"),
            "false_alerts": len(false_alerts), "users_falsely_alerted": len(set(false_alerts)),
            "false_alerts_per_user_day": len(false_alerts) / (args.users * days),
            "takeovers_with_events": len(victims), "takeover_events": dict(victims),
            "takeovers_flagged_at_event": detected}


def _workload(args: argparse.Namespace) -> BehaviorWorkload:
    config = BehaviorConfig(n_users=args.users, n_events=args.events, seed=args.seed)
    if not args.takeovers:
        return generate_user_events(config)
    events = generate_user_events(config).events
    at = events[0]["ts"] + int(0.85 * (events[-1]["ts"] - events[0]["ts"]))
    step = max(1, args.users // args.takeovers)
    takeovers = tuple(Takeover(user=u, start_ms=at, seed=7) for u in range(0, args.users, step)[:args.takeovers])
    return generate_user_events(BehaviorConfig(n_users=args.users, n_events=args.events, seed=args.seed,
                                               takeovers=takeovers))


def _judge(workload: BehaviorWorkload, alerts: list[tuple[str, str]]) -> tuple[dict[str, int], list[str]]:
    """({victim: the intruder's event number of its first alert}, the users of every other alert)."""
    intruder_events: dict[str, list[str]] = {}
    for event, intruder in zip(workload.events, workload.intruder, strict=True):
        if intruder:
            intruder_events.setdefault(event["user_id"], []).append(event["event_id"])
    detected: dict[str, int] = {}
    false_alerts = []
    for user, event_id in alerts:
        order = intruder_events.get(user, [])
        if event_id in order:
            detected.setdefault(user, order.index(event_id) + 1)
        else:
            false_alerts.append(user)
    return detected, false_alerts


def _worker_env(args: argparse.Namespace, settings: Settings, prefix: str, workdir: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}  # reproducible
    env = {**inherited, **WORKER_ENV, "STREAM_APP_BROKER": settings.broker or "", "STREAM_APP_TOPIC_PREFIX": prefix,
           "STREAM_APP_ID": f"{prefix}app", "STREAM_APP_STATE_DIR": str(workdir / "state"),
           "STREAM_APP_WEB_PORT": str(free_port()), "STREAM_APP_PARTITIONS": str(args.partitions)}
    if args.checkpoint:
        env["STREAM_APP_CHECKPOINT"] = str(args.checkpoint.resolve())
    return env


def _wait_until_processed(worker: Worker, n: int, timeout_s: float) -> dict[str, float]:
    """The worker's metrics once it has processed ``n`` behavior events."""
    deadline = time.monotonic() + timeout_s
    while True:
        worker.check_alive()
        try:
            samples = worker.metrics()
        except OSError:  # a busy worker answers /metrics late: ask again
            samples = {}
        if metric(samples, "stream_app_events_processed_total", pipeline="behavior") >= n:
            time.sleep(2.0)  # the last batch's alerts are sent with its predictions
            return samples
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker processed too little within {timeout_s:.0f} s:\n{worker.log_tail()}")
        time.sleep(1.0)


async def _behavior_alerts(settings: Settings, topic: str) -> list[tuple[str, str]]:
    """(user, id of the event that raised it) of every behavior alert on ``topic``."""
    alerts = []
    async for record in consume(settings, [topic], idle_timeout_s=5.0):
        alert = decode(record.value, AnomalyAlert)
        if isinstance(alert, AnomalyAlert) and alert.kind == "behavior":
            alerts.append((alert.key, alert.alert_id.removeprefix(f"behavior:{alert.key}:")))
    return alerts


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    print(f"{result['false_alerts']} false behavior alerts on {result['users']} users over {result['days']} days: "
          f"{100 * result['false_alerts_per_user_day']:.3f} % of users per day")
    if args.takeovers:
        flagged = sorted(result["takeovers_flagged_at_event"].values())
        print(f"{len(flagged)} of {result['takeovers_with_events']} taken-over accounts flagged, at the intruder's "
              f"event {flagged}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
