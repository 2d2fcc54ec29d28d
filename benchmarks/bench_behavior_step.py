"""The behavior stage in-process (no Kafka): CPU µs per event of the pipeline's batch step, of
``predict_many`` alone on the same batches, and of the difference (the work outside the model).

Generated user events (with a few account takeovers, so behavior alerts fire) are encoded as the
producer does, spread over ``--partitions`` partitions by key, and cut into batches of
``--batch-max`` records in time order, each batch holding its records per partition in offset
order, as a transport fetch does. They are decoded once up front with the behavior transport's
batch decoder (its CPU µs/event is reported too, apart). Then, per repeat:

- ``step``: a fresh ``BehaviorPipeline`` built as the worker builds it (the checkpoint behind a
  ``HotModel``, surprisal on when behavior alerts are on, the transport's routed per-partition users
  store) runs every batch through ``BehaviorTransport.process`` (``process`` + ``emitted``), and
  ``flush`` every ``--flush-every`` batches (the transport flushes once per commit interval);
- ``in-step model``: the CPU time of the ``predict_many`` calls made inside that step;
- ``model alone``: a fresh predictor loaded the same way runs ``predict_many`` on the same
  batches grouped by user, states kept in a dict (as ``bench_readers.py``'s ``model`` reader);
- ``overhead`` = step - in-step model.

All are CPU time (``time.process_time``), medians over ``--repeats``, with ``torch`` on one thread and
the garbage collector tuned as the worker tunes it (``stream_app.worker.tune_garbage_collector``: what
exists before the timed loop, the workload included, is frozen; young collections every 10,000).

``--dump PATH`` writes every output record (predictions, cell events, alerts, in order), the
final users store and the metric counters of one pass with a frozen clock to PATH, so two source
trees can be compared byte for byte (``--compare A B``). ``--profile N`` prints the cProfile of
one pass (top N functions by own time).

    .venv/bin/stream-app train next-action --data generated --out /tmp/na.pt --threads 1
    .venv/bin/python benchmarks/bench_behavior_step.py --checkpoint /tmp/na.pt
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pickle
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from models.next_action.serving import ActionEvent, GRUPredictor, MarkovPredictor, NextActionPredictor
from models.next_action.state import UserState
from simulation.users import BehaviorConfig, Takeover, generate_user_events
from stream_app.agents.behavior import BehaviorTransport, _decode_user_events
from stream_app.metrics import Metrics
from stream_app.models_holder import HotModel
from stream_app.pipelines.base import Received, partition_of
from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.settings import Settings
from stream_app.transport import Batch
from stream_app.transport.store import PartitionStore, RoutedStore
from stream_app.worker import tune_garbage_collector

__all__ = ["main"]

TOPIC = "user-events"
FROZEN_S = 1_900_000_000.0  # the clock of --dump passes: processed_at and late stamps repeat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="next-action checkpoint (default: the online Markov "
                        "model, which has no surprisal: no alerts)")
    parser.add_argument("--events", type=int, default=30_000, help="generated user events (default 30000)")
    parser.add_argument("--users", type=int, default=3000, help="simulated users (default 3000)")
    parser.add_argument("--takeovers", type=int, default=30, help="account takeovers at 85%% of the time range, so "
                        "alerts fire (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, metavar="FRACTION",
                        help="re-deliver this fraction of events a few records later and delay as many by "
                             "thousands of records (duplicates, re-deliveries, late events; default 0)")
    parser.add_argument("--alert-threshold", type=float, default=None,
                        help="behavior alert threshold (default: the settings' default)")
    parser.add_argument("--partitions", type=int, default=2, help="input partitions (default 2)")
    parser.add_argument("--batch-max", type=int, default=512, help="records per batch (default 512)")
    parser.add_argument("--flush-every", type=int, default=20, help="batches per state flush (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; medians reported (default 5)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the top N functions (own time) of a cProfile of one pass, and exit")
    parser.add_argument("--dump", type=Path, default=None, help="write one frozen-clock pass's outputs here, exit")
    parser.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("A", "B"),
                        help="compare two --dump files and exit (status 1 when they differ)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- workload

def workload(args: argparse.Namespace) -> list[list[ConsumerRecord]]:
    """Batches of encoded records: ``--batch-max`` records in time order, per partition in offset order."""
    config = BehaviorConfig(n_users=args.users, n_events=args.events, seed=args.seed)
    events = generate_user_events(config).events
    if args.takeovers:
        at = events[0]["ts"] + int(0.85 * (events[-1]["ts"] - events[0]["ts"]))
        step = max(1, args.users // args.takeovers)
        takeovers = tuple(Takeover(user=u, start_ms=at, seed=7) for u in range(0, args.users, step)[:args.takeovers])
        events = generate_user_events(BehaviorConfig(n_users=args.users, n_events=args.events, seed=args.seed,
                                                     takeovers=takeovers)).events
    if args.noise:
        events = _noisy(events, args.noise, args.seed)
    offsets = [0] * args.partitions
    records = []
    for event in events:
        key, value = event["user_id"].encode(), json.dumps(event).encode()
        partition = partition_of(key, args.partitions)
        timestamp = int(event["ts"]) + 40  # the producer's clock, a little after the event
        records.append(ConsumerRecord(TOPIC, partition, offsets[partition], timestamp, 0, key, value, None,
                                      len(key), len(value), ()))
        offsets[partition] += 1
    return [records[a:a + args.batch_max] for a in range(0, len(records), args.batch_max)]


def _noisy(events: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """``events`` with a ``fraction`` re-delivered 1-20 records later and as many moved 500-5000 later."""
    rng = random.Random(seed)
    placed: list[tuple[float, int, dict[str, Any]]] = []
    for i, event in enumerate(events):
        roll = rng.random()
        if roll < fraction:
            placed += [(i, len(placed), event), (i + rng.randint(1, 20) + 0.5, len(placed) + 1, event)]
        elif roll < 2 * fraction:
            placed.append((i + rng.randint(500, 5000) + 0.5, len(placed), event))
        else:
            placed.append((i, len(placed), event))
    return [event for _, _, event in sorted(placed, key=lambda p: (p[0], p[1]))]


def decode(batches: list[list[ConsumerRecord]]) -> tuple[list[dict[int, list[Received[Any]]]], float]:
    """Each batch decoded per partition as the transport does; the CPU seconds it took."""
    decoded = []
    started = time.process_time()
    for batch in batches:
        by_partition: dict[int, list[ConsumerRecord]] = {}
        for record in batch:
            by_partition.setdefault(record.partition, []).append(record)
        decoded.append({p: [r for r in _decode_user_events(rs) if isinstance(r, Received)]
                        for p, rs in sorted(by_partition.items())})
    return decoded, time.process_time() - started


# --------------------------------------------------------------------------- the stage

def settings_for(args: argparse.Namespace) -> Settings:
    return Settings.from_env({}, checkpoint=args.checkpoint, batch_max=args.batch_max, partitions=args.partitions,
                             behavior_alert_threshold=args.alert_threshold)


def load_predictor(settings: Settings) -> NextActionPredictor:
    if settings.checkpoint is None:
        return MarkovPredictor(window_size=settings.window_events, window_span_s=settings.window_span_s)
    return GRUPredictor.from_checkpoint(settings.checkpoint, surprisal=settings.behavior_alerts)


class _TimedPredictor:
    """A predictor whose ``predict_many`` calls add up their CPU time (everything else passes through)."""

    def __init__(self, inner: NextActionPredictor) -> None:
        self._inner, self.cpu_s, self.calls = inner, 0.0, 0

    def predict_many(self, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return self._inner.predict_many(*args, **kwargs)
        finally:
            self.cpu_s += time.process_time() - started
            self.calls += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def build(settings: Settings, predictor: Any, clock: Callable[[], float] = time.time
          ) -> tuple[BehaviorTransport, BehaviorPipeline, Metrics]:
    """The pipeline as ``stream_app.app.create_app`` builds it, behind the transport's ``process``."""
    metrics = Metrics(CollectorRegistry())
    fallback = MarkovPredictor(window_size=settings.window_events, window_span_s=settings.window_span_s)
    model: HotModel[NextActionPredictor] = HotModel("behavior", None, load=lambda _: predictor, fallback=fallback,
                                                    metrics=metrics)
    model.current, model.on_fallback = predictor, False
    # The users store as the transport gives it (one PartitionStore per partition behind a RoutedStore).
    store = RoutedStore("users", {p: PartitionStore("users", p) for p in range(settings.partitions)},
                        settings.partitions)
    pipeline = BehaviorPipeline(settings, store, model, metrics, clock=clock)
    hot_path = BehaviorTransport(settings, metrics, pipeline, "http://localhost:6066")
    hot_path.cell_partitions = settings.partitions
    return hot_path, pipeline, metrics


def run_step(hot_path: BehaviorTransport, pipeline: BehaviorPipeline, batches: list[dict[int, list[Received[Any]]]],
             flush_every: int, sink: Callable[[Any], None] | None = None) -> None:
    for i, records in enumerate(batches, 1):
        outputs = hot_path.process(Batch(records, None))  # type: ignore[arg-type]  # the behavior stage reads no State
        if sink is not None:
            sink(outputs)
        if i % flush_every == 0:
            pipeline.flush()
    pipeline.flush()


def step_pass(args: argparse.Namespace, settings: Settings, batches: list[dict[int, list[Received[Any]]]]
              ) -> tuple[float, float]:
    """(CPU s of the whole step, CPU s inside predict_many) of one pass with a fresh pipeline."""
    timed = _TimedPredictor(load_predictor(settings))
    hot_path, pipeline, _ = build(settings, timed)
    tune_garbage_collector()
    started = time.process_time()
    run_step(hot_path, pipeline, batches, args.flush_every)
    return time.process_time() - started, timed.cpu_s


def model_pass(settings: Settings, batches: list[dict[int, list[Received[Any]]]]) -> float:
    """CPU s of predict_many alone on the same batches, grouped by user (states kept)."""
    predictor = load_predictor(settings)
    field = settings.action_field
    states: dict[str, UserState] = {}
    grouped = []
    for records in batches:
        by_user: dict[str, list[ActionEvent]] = {}
        for received in (r for rs in records.values() for r in rs):
            e = received.value
            by_user.setdefault(e.user_id, []).append(ActionEvent(token=getattr(e, field, None) or e.action,
                                                                 ts_ms=e.ts, lat=e.lat, lon=e.lon))
        grouped.append(by_user)
    tune_garbage_collector()
    started = time.process_time()
    for by_user in grouped:
        users = list(by_user)
        predictor.predict_many([states.setdefault(u, UserState()) for u in users], [by_user[u] for u in users],
                               settings.top_k)
    return time.process_time() - started


# --------------------------------------------------------------------------- dump and compare

def dump(args: argparse.Namespace, settings: Settings, batches: list[dict[int, list[Received[Any]]]]) -> None:
    """One pass with a frozen clock: every output record, the final store and the counters."""
    hot_path, pipeline, metrics = build(settings, load_predictor(settings), clock=lambda: FROZEN_S)
    topics: dict[str, list[Any]] = {}

    def sink(outputs: Any) -> None:
        for topic, records in outputs.items():
            topics.setdefault(topic, []).extend(records)

    run_step(hot_path, pipeline, batches, args.flush_every, sink)
    counters = {f"{m.name}{sorted(s.labels.items())}{s.name}": s.value for m in metrics.registry.collect()
                for s in m.samples if not s.name.endswith("_created")}
    store = dict(sorted(pipeline.store.items()))
    args.dump.write_bytes(pickle.dumps({"outputs": topics, "store": store, "counters": counters}))
    print(f"{args.dump}: " + ", ".join(f"{t}: {len(r)}" for t, r in topics.items()) +
          f", {len(store)} users stored, sha256 {hashlib.sha256(args.dump.read_bytes()).hexdigest()[:16]}")


def compare(a: Path, b: Path) -> int:
    left, right = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())
    differ = 0
    for part in ("outputs", "store", "counters"):
        x, y = left[part], right[part]
        if part == "counters":  # latency histograms time the wall clock: counts only
            x = {k: v for k, v in x.items() if "latency" not in k and "seconds" not in k or k.endswith("_count")}
            y = {k: v for k, v in y.items() if "latency" not in k and "seconds" not in k or k.endswith("_count")}
        if part == "outputs":
            for topic in sorted(set(x) | set(y)):
                same = x.get(topic) == y.get(topic)
                differ += not same
                print(f"{topic}: {len(x.get(topic, []))} vs {len(y.get(topic, []))} records, "
                      f"{'identical' if same else 'DIFFERENT'}")
        else:
            same = x == y
            differ += not same
            print(f"{part}: {len(x)} vs {len(y)} entries, {'identical' if same else 'DIFFERENT'}")
            if not same:
                for key in sorted(set(x) | set(y), key=str):
                    if x.get(key) != y.get(key):
                        print(f"  first difference at {key!r}: {str(x.get(key))[:200]} vs {str(y.get(key))[:200]}")
                        break
    return 1 if differ else 0


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    torch.set_num_threads(1)
    settings = settings_for(args)
    batches, decode_s = decode(workload(args))
    n = sum(len(rs) for records in batches for rs in records.values())
    if args.dump:
        dump(args, settings, batches)
        return 0
    if args.profile:
        timed = _TimedPredictor(load_predictor(settings))
        hot_path, pipeline, _ = build(settings, timed)
        tune_garbage_collector()
        profiler = cProfile.Profile()
        profiler.runcall(run_step, hot_path, pipeline, batches, args.flush_every)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        return 0
    steps, inside, alone = [], [], []
    for _ in range(args.repeats):  # interleaved: the step and the model alone share each repeat's conditions
        step_s, model_s = step_pass(args, settings, batches)
        steps.append(step_s)
        inside.append(model_s)
        alone.append(model_pass(settings, batches))
    us = 1e6 / n
    overheads = [s - m for s, m in zip(steps, inside, strict=True)]
    figures = {"events": n, "batches": len(batches), "repeats": args.repeats,
               "step_us": statistics.median(steps) * us, "in_step_model_us": statistics.median(inside) * us,
               "overhead_us": statistics.median(overheads) * us, "model_alone_us": statistics.median(alone) * us,
               "decode_us": decode_s * us, "checkpoint": args.checkpoint,
               "step_over_model_alone": statistics.median(steps) / statistics.median(alone)}
    print(f"{n} events in {len(batches)} batches of <= {args.batch_max}, {args.partitions} partitions, "
          f"{args.repeats} repeats (CPU µs/event, medians; model {args.checkpoint or 'online Markov'})")
    print(f"  (a) step (process + emitted + flush): {figures['step_us']:7.1f}")
    print(f"  (b) predict_many inside the step:     {figures['in_step_model_us']:7.1f}")
    print(f"      predict_many alone, same batches: {figures['model_alone_us']:7.1f}")
    print(f"  (c) overhead = (a) - (b):             {figures['overhead_us']:7.1f}")
    print(f"      decode (before the step, once):   {figures['decode_us']:7.1f}")
    print(f"  step / model alone: {figures['step_over_model_alone']:.2f}x "
          f"(per repeat: {', '.join(f'{s * us:.1f}' for s in steps)} step; "
          f"{', '.join(f'{o * us:.1f}' for o in overheads)} overhead)")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
