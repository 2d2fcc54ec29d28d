"""Behavior pipeline benchmark: sustained throughput by mode, and end-to-end latency at half load.

One embedded Apache Kafka broker serves every scenario; each scenario has its own topic prefix,
app id (consumer group) and worker subprocess.

Throughput: N generated user events are pre-loaded into ``<prefix>user-events`` (``--partitions``
partitions), then one worker starts and the benchmark polls its ``/metrics`` counter
``stream_app_events_processed_total{pipeline="behavior"}`` every ``--poll-s`` until it reaches N.
Sustained events/s is the counter's growth over the polls that saw the worker busy, from the
first poll above zero to the last poll below N, so the worker's start and group join are excluded
(``sustained_rate``).
Modes ``passthrough``, ``full`` and ``unbatched`` run interleaved (one of each per repeat), on
the same events, with the same worker settings except ``STREAM_APP_BEHAVIOR_MODE``.

Latency: a fresh full-pipeline worker is warmed up, then events are produced at half the full
pipeline's median rate for ``--latency-seconds``; the predictions give ``processed_at -
ingested_at`` (the input's Kafka timestamp to the prediction's emit) and, for reference, the
prediction record's own Kafka timestamp minus ``ingested_at``.

    python benchmarks/bench_pipeline.py                 # full run (~10 min on 2 cores, Markov model)
    python benchmarks/bench_pipeline.py --quick         # smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from simulation.users import BehaviorConfig, generate_user_events
from stream_app.broker import EmbeddedBroker, free_port
from stream_app.cli.io import to_records
from stream_app.kafka_io import Record, client_options, consume, produce
from stream_app.settings import Settings
from stream_app.topics import TOPIC_NAMES

__all__ = ["main"]

log = logging.getLogger("bench_pipeline")

ROOT = Path(__file__).resolve().parents[1]
MODES = ("passthrough", "full", "unbatched")
PROCESSED = "stream_app_events_processed_total"
# Short group timeouts (as in the integration tests): a worker joins and leaves in seconds.
WORKER_ENV = {"STREAM_APP_SESSION_TIMEOUT_S": "6", "STREAM_APP_HEARTBEAT_S": "1",
              "STREAM_APP_REBALANCE_TIMEOUT_S": "3", "STREAM_APP_LOG_LEVEL": "warn"}
TARGETS = {"full/passthrough": 0.6, "full/unbatched": 3.0}


# --------------------------------------------------------------------------- worker subprocess

class RunFailed(RuntimeError):
    """A worker died, crashed an agent or stopped making progress; ``log`` is its log tail."""

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.log = log


@dataclass
class Worker:
    """One ``python -m stream_app worker`` subprocess in its own session (so it can be killed whole)."""

    env: dict[str, str]
    log_path: Path
    profile_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAM_APP_WEB_PORT']}/metrics"

    def start(self, timeout_s: float = 90.0) -> None:
        with self.log_path.open("ab") as out:
            profile = ["-m", "cProfile", "-o", str(self.profile_path)] if self.profile_path else []
            self.process = subprocess.Popen([sys.executable, *profile, "-m", "stream_app", "worker"], env=self.env,
                                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.3)
        raise RunFailed(f"worker web server did not come up in {timeout_s:.0f}s", self.log_tail())

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RunFailed(f"worker exited with code {self.process.returncode}", self.log_tail())

    def crashed_agent(self) -> str | None:
        """The first 'Crashed reason=...' line Faust logged (an agent that died while the process lives)."""
        if not self.log_path.exists():
            return None
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "Crashed reason=" in line:
                return line.strip()
        return None

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        return parse_metrics(text)

    def stop(self, timeout_s: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as the worker writes them)."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line) if line and not line.startswith("#") else None
        if match:
            try:
                samples[match.group(1)] = float(match.group(2))
            except ValueError:
                continue
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for key, value in samples.items()
               if key.split("{", 1)[0] == name and all(w in key for w in wanted))


def serves_expected_model(samples: dict[str, float], args: argparse.Namespace) -> bool:
    """False while a worker given --checkpoint still serves the Markov fallback: the checkpoint is
    loaded by a timer, a couple of seconds after the worker starts."""
    return not args.checkpoint or not model_version(samples).startswith("markov")


def model_version(samples: dict[str, float]) -> str:
    for key in samples:
        if key.startswith("stream_app_model_info{") and 'pipeline="behavior"' in key:
            found = re.search(r'version="([^"]*)"', key)
            if found:
                return found.group(1)
    return "unknown"


# --------------------------------------------------------------------------- the bench

@dataclass
class Run:
    """One throughput measurement."""

    mode: str
    repeat: int
    events: int
    events_per_s: float
    seconds: float
    startup_s: float
    outputs: float
    mean_batch: float
    model_s: float
    model_calls: float
    model_version: str


@dataclass
class Bench:
    """Broker, work folder, and the workers this process started (stopped on any exit)."""

    args: argparse.Namespace
    broker: EmbeddedBroker = field(default_factory=lambda: EmbeddedBroker(kind="kafka"))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-pipeline-")))
    url: str = ""
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> None:
        self.url = self.broker.start().url

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.broker.stop()
        if not self.args.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def settings(self, prefix: str) -> Settings:
        return Settings.from_env({}, broker=self.url, topic_prefix=prefix)

    def worker_env(self, prefix: str, mode: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}  # reproducible
        env = {**inherited, **WORKER_ENV,
               "STREAM_APP_BROKER": self.url, "STREAM_APP_TOPIC_PREFIX": prefix,
               "STREAM_APP_ID": f"{prefix}app", "STREAM_APP_STATE_DIR": str(self.workdir / f"{prefix}state"),
               "STREAM_APP_WEB_PORT": str(free_port()), "STREAM_APP_PARTITIONS": str(self.args.partitions),
               "STREAM_APP_BATCH_MAX": str(self.args.batch_max),
               "STREAM_APP_BATCH_WITHIN_S": str(self.args.batch_within_s),
               "STREAM_APP_PRODUCER_LINGER_MS": str(self.args.linger_ms),
               "STREAM_APP_BEHAVIOR_MODE": mode}
        if self.args.checkpoint:
            env["STREAM_APP_CHECKPOINT"] = str(Path(self.args.checkpoint).resolve())
        return env

    def start_worker(self, prefix: str, mode: str, stages: str | None = None) -> Worker:
        """A worker of app ``<prefix>app``; ``stages`` (``--stages``) gives it its own state folder and log."""
        profile = self.args.profile / f"{prefix}{mode}.pstats" if self.args.profile else None
        env, name = self.worker_env(prefix, mode), "worker"
        if stages is not None:
            name = f"worker-{stages.replace(',', '-')}"
            env.update(STREAM_APP_STAGES=stages, STREAM_APP_STATE_DIR=str(self.workdir / f"{prefix}{name}-state"))
        worker = Worker(env=env, log_path=self.workdir / f"{prefix}{name}.log", profile_path=profile)
        self.workers.append(worker)
        worker.start()
        return worker

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        self.workers.remove(worker)

    def create_topics(self, prefix: str) -> Settings:
        """Create every topic of the app under ``prefix``, as a deployment's topic job does (the
        broker creates none on its own; Faust declares only what it consumes and its changelogs)."""
        settings = self.settings(prefix)
        asyncio.run(create_topics(settings, [settings.topic(name) for name in TOPIC_NAMES], self.args.partitions))
        return settings

    def load(self, prefix: str, records: list[Record]) -> None:
        """Create the app's topics under ``prefix`` and fill ``<prefix>user-events``."""
        settings = self.create_topics(prefix)
        asyncio.run(produce(settings, [(f"{prefix}{t}", k, v) for t, k, v in records]))

    def drop_topics(self, prefix: str) -> None:
        asyncio.run(delete_prefixed(self.settings(prefix), prefix))


async def create_topics(settings: Settings, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names])
        for _ in range(100):  # until every partition has a leader, so the first produce finds it
            described = await admin.describe_topics(names)
            if all(d["error_code"] == 0 and len(d["partitions"]) == partitions
                   and all(p["leader"] >= 0 for p in d["partitions"]) for d in described):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_prefixed(settings: Settings, prefix: str) -> None:
    """Delete a finished scenario's topics (input, outputs, changelogs) to keep the broker small."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:  # cleanup only: a failure here must not end the benchmark
        log.warning("could not delete topics of %s: %s", prefix, exc)
    finally:
        await admin.close()


def events_records(n_events: int, n_users: int, seed: int) -> list[Record]:
    """Generated user events as (topic-without-prefix, key, value), in event-time order."""
    start_ms = int(time.time() * 1000) - 86_400_000
    events = generate_user_events(BehaviorConfig(n_users=n_users, n_events=n_events, seed=seed,
                                                 start_ms=start_ms)).events
    return list(to_records(events))


def measure_throughput(bench: Bench, mode: str, repeat: int, records: list[Record]) -> Run:
    prefix = f"b{uuid.uuid4().hex[:6]}-{mode}{repeat}-"
    n = len(records)
    bench.load(prefix, records)
    launched = time.monotonic()
    worker = bench.start_worker(prefix, mode)
    try:
        points, samples = watch_progress(worker, n, bench.args)
    finally:
        bench.stop_worker(worker)
        bench.drop_topics(prefix)
    rate, seconds = sustained_rate(points, n)
    calls = metric(samples, "stream_app_inference_latency_seconds_count", pipeline="behavior")
    batches = metric(samples, "stream_app_batch_size_count", pipeline="behavior")
    return Run(mode=mode, repeat=repeat, events=n, events_per_s=rate, seconds=seconds,
               startup_s=points[0][0] - launched,
               outputs=metric(samples, "stream_app_outputs_total", topic=f"{prefix}next-action-predictions"),
               mean_batch=metric(samples, "stream_app_batch_size_sum", pipeline="behavior") / batches if batches else 0,
               model_s=metric(samples, "stream_app_inference_latency_seconds_sum", pipeline="behavior"),
               model_calls=calls, model_version=model_version(samples))


def sustained_rate(points: list[tuple[float, float]], n: int) -> tuple[float, float]:
    """(events/s, seconds) from (time, count) polls that saw progress, the last one at ``n``.

    The window runs from the first poll above zero to the last poll *before* completion, whose
    count is exact at its time (the poll at ``n`` only bounds the finish from above); with fewer
    than two such polls it runs to the poll at ``n``."""
    (t0, c0), ongoing = points[0], [p for p in points if p[1] < n]
    t1, c1 = ongoing[-1] if len(ongoing) >= 2 else points[-1]
    seconds = t1 - t0
    return ((c1 - c0) / seconds if seconds > 0 else float("nan")), seconds


def watch_progress(worker: Worker, n: int, args: argparse.Namespace
                   ) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """Poll /metrics until the processed counter reaches ``n``: the (time, count) of every poll from
    the first that saw progress, and the last poll's samples. RunFailed on a crash or a stall."""
    points: list[tuple[float, float]] = []
    started = last_change = time.monotonic()
    last_count, polls = -1.0, 0
    while True:
        worker.check_alive()
        samples = worker.metrics()
        now, count = time.monotonic(), metric(samples, PROCESSED, pipeline="behavior")
        if count > 0 and serves_expected_model(samples, args):
            points.append((now, count))
        if count >= n:
            if len(points) < 2:
                raise RunFailed(f"all {n} events were processed before two polls saw the worker busy"
                                + (" with the checkpoint loaded" if args.checkpoint else "")
                                + ": use more --events or a shorter --poll-s", worker.log_tail())
            return points, samples
        if count != last_count:
            last_change, last_count = now, count
        polls += 1
        crash = worker.crashed_agent() if polls % 4 == 0 else None
        stalled = now - last_change > (args.stall_s if points else args.startup_timeout_s)
        if crash or stalled or now - started > args.timeout_s:
            why = crash or f"no progress for {now - last_change:.0f} s" if crash or stalled else "too slow"
            raise RunFailed(f"{count:.0f}/{n} events processed after {now - started:.0f} s: {why}", worker.log_tail())
        time.sleep(args.poll_s)


def measure_latency(bench: Bench, rate: float) -> dict[str, Any]:
    """Warm a full worker up, produce at ``rate`` for --latency-seconds, read the predictions back."""
    args = bench.args
    warmup = min(1000, max(100, int(rate)))
    timed = max(1, int(rate * args.latency_seconds))
    records = events_records(warmup + timed, args.users, args.seed + 1)
    prefix = f"b{uuid.uuid4().hex[:6]}-latency-"
    settings = bench.create_topics(prefix)
    # --split-stages: the cell and traffic stages run in a second worker, as a deployment on two cores would
    worker = bench.start_worker(prefix, "full", "behavior" if args.split_stages else None)
    companion = bench.start_worker(prefix, "full", "cells,traffic") if args.split_stages else None
    try:
        prefixed = [(f"{prefix}{t}", k, v) for t, k, v in records]
        asyncio.run(produce(settings, prefixed[:warmup]))
        _wait_processed(worker, warmup, args.startup_timeout_s, args)
        started_ms = time.time() * 1000
        began = time.monotonic()
        asyncio.run(produce(settings, prefixed[warmup:], rate=rate))
        send_s = time.monotonic() - began
        _wait_processed(worker, warmup + timed, args.timeout_s, args)
        samples = worker.metrics()
        predictions = asyncio.run(_read_all(settings, settings.topic("next-action-predictions"), warmup + timed))
    finally:
        bench.stop_worker(worker)
        if companion is not None:
            bench.stop_worker(companion)
        bench.drop_topics(prefix)
    emit, output = [], []
    for record in predictions:
        value = json.loads(record.value)
        if value["ingested_at"] >= started_ms:
            emit.append(value["processed_at"] - value["ingested_at"])
            output.append(record.timestamp - value["ingested_at"])
    batches = metric(samples, "stream_app_batch_size_count", pipeline="behavior")
    return {"target_rate": rate, "achieved_rate": timed / send_s, "seconds": send_s, "sent": timed,
            "events_per_batch": metric(samples, "stream_app_batch_size_sum", pipeline="behavior") / max(1.0, batches),
            "measured": len(emit), "emit_ms": _percentiles(emit), "output_record_ms": _percentiles(output)}


def _wait_processed(worker: Worker, count: int, timeout_s: float, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + timeout_s
    while (done := metric(samples := worker.metrics(), PROCESSED, pipeline="behavior")) < count or \
            not serves_expected_model(samples, args):
        worker.check_alive()
        crash = worker.crashed_agent()
        if crash or time.monotonic() > deadline:
            raise RunFailed(f"{done:.0f}/{count} events processed: {crash or f'not done after {timeout_s:.0f} s'}",
                            worker.log_tail())
        time.sleep(0.2)


async def _read_all(settings: Settings, topic: str, count: int) -> list:
    records = []
    async for record in consume(settings, [topic], idle_timeout_s=10.0):
        records.append(record)
        if len(records) >= count:
            break
    return records


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": float(ordered[-1]),
            "mean": statistics.fmean(ordered)}


# --------------------------------------------------------------------------- report

def summarize(runs: list[Run]) -> dict[str, Any]:
    medians = {m: statistics.median(r.events_per_s for r in runs if r.mode == m)
               for m in MODES if any(r.mode == m for r in runs)}
    ratios, paired = {}, {}
    if "full" in medians:
        for other in ("passthrough", "unbatched"):
            if other in medians:
                ratios[f"full/{other}"] = medians["full"] / medians[other]
                # The modes run interleaved: repeat i of each ran close in time (same machine load).
                by_repeat = {(r.mode, r.repeat): r.events_per_s for r in runs}
                paired[f"full/{other}"] = [by_repeat[("full", i)] / by_repeat[(other, i)] for m, i in by_repeat
                                           if m == "full" and (other, i) in by_repeat]
    return {"median_events_per_s": medians, "ratios": ratios, "paired_ratios": paired}


def _indent(text: str, lines: int = 15) -> str:
    return "\n".join("      | " + line for line in text.splitlines()[-lines:])


def markdown(args: argparse.Namespace, runs: list[Run], summary: dict[str, Any],
             latency: dict[str, Any] | None, failures: list[dict[str, Any]]) -> str:
    lines = ["| mode | median events/s | runs (events/s) | events per batch | model s / run | model calls / run |",
             "|---|---:|---|---:|---:|---:|"]
    for mode, median in summary["median_events_per_s"].items():
        mine = [r for r in runs if r.mode == mode]
        each = ", ".join(f"{r.events_per_s:,.0f}" for r in mine)
        take = statistics.fmean(r.mean_batch for r in mine)
        lines.append(f"| {mode} | {median:,.0f} | {each} | {f'{take:.0f}' if take else '–'} | "
                     f"{statistics.fmean(r.model_s for r in mine):.2f} | "
                     f"{statistics.fmean(r.model_calls for r in mine):,.0f} |")
    lines += ["", "| ratio | of the medians | run by run (median) | target | |", "|---|---:|---|---:|---|"]
    for name, value in summary["ratios"].items():
        target, paired = TARGETS[name], summary["paired_ratios"].get(name, [])
        each = f"{', '.join(f'{p:.2f}' for p in paired)} ({statistics.median(paired):.2f})" if paired else "–"
        lines.append(f"| {name} | {value:.2f} | {each} | >= {target:g} | {'met' if value >= target else 'missed'} |")
    if latency:
        emit, out = latency["emit_ms"], latency["output_record_ms"]
        lines += ["", "| latency at half the full rate | p50 ms | p90 ms | p99 ms | max ms |",
                  "|---|---:|---:|---:|---:|",
                  f"| processed_at - ingested_at | {emit.get('p50', 0):.0f} | {emit.get('p90', 0):.0f} | "
                  f"{emit.get('p99', 0):.0f} | {emit.get('max', 0):.0f} |",
                  f"| prediction record timestamp - ingested_at | {out.get('p50', 0):.0f} | {out.get('p90', 0):.0f} | "
                  f"{out.get('p99', 0):.0f} | {out.get('max', 0):.0f} |",
                  "", f"Latency load: {latency['achieved_rate']:,.0f} events/s (target {latency['target_rate']:,.0f}) "
                  f"for {latency['seconds']:.1f} s, {latency['measured']:,}/{latency['sent']:,} predictions measured, "
                  f"{latency['events_per_batch']:.0f} events per batch"
                  + ("; behavior in one worker, cells and traffic in a second." if args.split_stages else ".")]
    model = runs[0].model_version if runs else "unknown"
    full = [r.model_version for r in runs if r.mode == "full"]
    lines += ["", f"{args.events:,} events, {args.users:,} users, {args.partitions} partitions, one worker; "
              f"STREAM_APP_BATCH_MAX={args.batch_max}, STREAM_APP_BATCH_WITHIN_S={args.batch_within_s}, "
              f"STREAM_APP_PRODUCER_LINGER_MS={args.linger_ms}; "
              f"model {full[0] if full else model}; {args.repeats} repeat(s)."]
    lines += [f"FAILED: {f['mode']} run {f['repeat']} (attempt {f['attempt']}): {f['error']}" for f in failures]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Behavior pipeline benchmark on an embedded Apache Kafka broker: sustained events/s of the "
                    "passthrough, full (batched) and unbatched modes, and end-to-end latency at half load.")
    parser.add_argument("--events", type=int, default=20_000,
                        help="events pre-loaded per throughput run (default 20000)")
    parser.add_argument("--users", type=int, default=5_000, help="simulated users (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode; medians are reported (default 3)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default all three)")
    parser.add_argument("--partitions", type=int, default=2, help="input topic partitions (default 2)")
    parser.add_argument("--batch-max", type=int, default=Settings.batch_max,
                        help=f"STREAM_APP_BATCH_MAX for every worker (default {Settings.batch_max})")
    parser.add_argument("--batch-within-s", type=float, default=Settings.batch_within_s,
                        help=f"STREAM_APP_BATCH_WITHIN_S for every worker (default {Settings.batch_within_s})")
    parser.add_argument("--linger-ms", type=int, default=Settings.producer_linger_ms,
                        help=f"STREAM_APP_PRODUCER_LINGER_MS for every worker (default {Settings.producer_linger_ms})")
    parser.add_argument("--split-stages", action="store_true",
                        help="latency run: the behavior stage in one worker and the cell and traffic stages in a "
                             "second one (--stages), as two processes of one app")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="next-action checkpoint (STREAM_APP_CHECKPOINT); default: the online Markov model")
    parser.add_argument("--latency-seconds", type=float, default=20.0,
                        help="seconds of load at half the full rate (0 = skip; default 20)")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="events/s of the latency load (default: half the full pipeline's median)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="give up on a run (or the latency drain) after this long (default 600)")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0,
                        help="give up when a worker has processed nothing after this long (default 120)")
    parser.add_argument("--stall-s", type=float, default=30.0,
                        help="give up when a worker's counter stops moving for this long (default 30)")
    parser.add_argument("--poll-s", type=float, default=0.5,
                        help="/metrics polling interval (default 0.5; a scrape costs the worker ~15 ms of CPU)")
    parser.add_argument("--retries", type=int, default=1,
                        help="retries of a throughput run whose worker crashed or stalled (default 1)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run every worker under cProfile, one .pstats file per worker in this folder "
                             "(diagnostics only: the profiler slows the workers down)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs folder (path printed)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3000 events, 1000 users, 1 repeat, 5 s of latency load, 0.25 s polls "
                             "(explicit flags win)")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        for name, value in {"events": 3_000, "users": 1_000, "repeats": 1, "latency_seconds": 5.0,
                            "poll_s": 0.25}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}: choose from {', '.join(MODES)}")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file")
    return args


def _attempts(bench: Bench, mode: str, repeat: int, records: list[Record],
              failures: list[dict[str, Any]]) -> Run | None:
    """One throughput run, tried up to 1 + --retries times (each failure is kept for the report)."""
    for attempt in range(1 + bench.args.retries):
        try:
            result = measure_throughput(bench, mode, repeat, records)
        except RunFailed as exc:
            failures.append({"mode": mode, "repeat": repeat, "attempt": attempt + 1, "error": str(exc)})
            print(f"  {mode:<11} run {repeat}: FAILED {exc}\n{_indent(exc.log)}", flush=True)
            continue
        print(f"  {mode:<11} run {repeat}: {result.events_per_s:>9,.0f} events/s "
              f"({result.seconds:.1f} s, start {result.startup_s:.1f} s)", flush=True)
        return result
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    try:
        print(f"starting Apache Kafka (work folder {bench.workdir}) ...", flush=True)
        bench.start()
        records = events_records(args.events, args.users, args.seed)
        runs: list[Run] = []
        failures: list[dict[str, Any]] = []
        for repeat in range(1, args.repeats + 1):
            for mode in args.modes:  # interleaved: machine noise spreads over every mode alike
                result = _attempts(bench, mode, repeat, records, failures)
                if result is not None:
                    runs.append(result)
        summary = summarize(runs)
        latency = None
        full_rate = summary["median_events_per_s"].get("full")
        rate = args.latency_rate or (full_rate / 2 if full_rate else None)
        for attempt in range(1 + args.retries if args.latency_seconds > 0 and rate else 0):
            try:
                latency = measure_latency(bench, rate)
                break
            except RunFailed as exc:
                failures.append({"mode": "latency", "repeat": 1, "attempt": attempt + 1, "error": str(exc)})
                print(f"  latency: FAILED {exc}\n{_indent(exc.log)}", flush=True)
        report = markdown(args, runs, summary, latency, failures)
        print("\n" + report)
        return {"command": " ".join(["python", "benchmarks/bench_pipeline.py", *sys.argv[1:]]),
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "runs": [asdict(r) for r in runs], "failures": failures, **summary, "latency": latency,
                "markdown": report}
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        bench.close()
        signal.signal(signal.SIGINT, previous)
        if args.keep_logs:
            print(f"worker logs kept in {bench.workdir}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retried produce errors on fresh topics
    # SIGINT (also when started in the background, where it is ignored by default) and SIGTERM
    # unwind, so the finally clauses stop every worker and the broker.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("interrupted: workers and broker stopped", file=sys.stderr)
        return 130
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
