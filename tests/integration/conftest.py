"""Workers as subprocesses (Faust keeps global state per process) and Kafka I/O helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_app.broker import BrokerInfo, free_port
from stream_app.cli.io import to_records
from stream_app.kafka_io import client_options, consume, produce
from stream_app.settings import Settings

# Group joins are slow with production timeouts; these keep a test worker's start and stop short.
FAST_GROUP_ENV = {"STREAM_APP_SESSION_TIMEOUT_S": "6", "STREAM_APP_HEARTBEAT_S": "1",
                  "STREAM_APP_REBALANCE_TIMEOUT_S": "3", "STREAM_APP_LOG_LEVEL": "warn",
                  "STREAM_APP_PARTITIONS": "2"}


@dataclass
class Worker:
    """One ``stream-app worker`` subprocess with its own data dir, web port and log file."""

    env: dict[str, str]
    log_path: Path
    web_port: int
    flags: list[str] = field(default_factory=list)  # ``stream-app worker`` options
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([sys.executable, "-m", "stream_app", "worker", *self.flags],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.wait_for_web()
        return self

    def wait_for_web(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.web_url}/metrics", timeout=1).read()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"worker web server did not come up:\n{self.log_tail()}")

    def metrics_text(self) -> str:
        return urllib.request.urlopen(f"{self.web_url}/metrics", timeout=5).read().decode()

    def get_json(self, path: str, unavailable_for_s: float = 15.0) -> object:
        """GET a query route. A 503 (Faust cannot route the key yet: a changelog topic created after
        the group's first assignment is assigned at the next rebalance) is retried for a while."""
        deadline = time.monotonic() + unavailable_for_s
        while True:
            try:
                return json.loads(urllib.request.urlopen(f"{self.web_url}{path}", timeout=10).read())
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown work (no final commit, no state flush)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Deployment:
    """The settings one test shares between its workers, producers and consumers."""

    kafka: BrokerInfo
    root: Path
    prefix: str
    extra_env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**FAST_GROUP_ENV, **self.extra_env}, broker=self.kafka.url, topic_prefix=self.prefix)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}app"

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def worker(self, name: str = "w", flags: list[str] | None = None, **env: str) -> Worker:
        """Start a worker (same app id as the others in this test: they share state and group), with
        ``stream-app worker`` options ``flags``."""
        state, port = self.root / f"state-{name}-{len(self.workers)}", free_port()
        worker_env = {**os.environ, **FAST_GROUP_ENV, **self.extra_env, **env,
                      "STREAM_APP_BROKER": self.kafka.url, "STREAM_APP_TOPIC_PREFIX": self.prefix,
                      "STREAM_APP_ID": self.app_id, "STREAM_APP_STATE_DIR": str(state),
                      "STREAM_APP_WEB_PORT": str(port)}
        return self.start_worker(Worker(env=worker_env, web_port=port, flags=list(flags or []),
                                        log_path=self.root / f"worker-{name}-{len(self.workers)}.log"))

    def worker_with_flags(self, flags: list[str], web_port: int, **env: str) -> Worker:
        """Start a worker configured by its command-line ``flags``: its environment holds no
        STREAM_APP_* variable but the group timeouts, this test's topic prefix and app id, and ``env``."""
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}
        worker_env.update({**FAST_GROUP_ENV, **env, "STREAM_APP_TOPIC_PREFIX": self.prefix,
                           "STREAM_APP_ID": self.app_id})
        return self.start_worker(Worker(env=worker_env, web_port=web_port, flags=flags,
                                        log_path=self.root / f"worker-flags-{len(self.workers)}.log"))

    def start_worker(self, worker: Worker) -> Worker:
        self.workers.append(worker)
        return worker.start()

    def produce(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
        """Send (topic-name-without-prefix, key, value) records and flush."""
        prefixed = [(self.topic(t), k, v) for t, k, v in records]
        return asyncio.run(produce(self.settings, prefixed))

    def produce_in_background(self, events: list[dict], rate: float) -> threading.Thread:
        """Send ``events`` (user events or traffic readings, keyed as the CLI keys them) at ``rate``
        per second from a thread, started; join it to wait for the last."""
        records = [(self.topic(t), k, v) for t, k, v in to_records(events)]
        thread = threading.Thread(target=lambda: asyncio.run(produce(self.settings, records, rate=rate)))
        thread.start()
        return thread

    def read_to_end(self, topic: str, isolation: str = "read_uncommitted") -> list[ConsumerRecord]:
        """Every record of ``topic`` up to its current end (the last stable offset for ``read_committed``)."""
        return asyncio.run(_read_to_end(self.settings, self.topic(topic), isolation))

    def collect(self, topic: str, count: int, timeout_s: float = 90.0, settle_s: float = 3.0,
                distinct: Callable[[ConsumerRecord], Hashable] | None = None) -> list:
        """Read ``topic`` from the beginning until ``count`` records arrived (``count`` distinct
        ``distinct(record)`` values, where replays repeat records), then ``settle_s`` more seconds to
        catch duplicates; returns every record seen."""
        return asyncio.run(_collect(self.settings, self.topic(topic), count, timeout_s, settle_s, distinct))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


async def _read_to_end(settings: Settings, topic: str, isolation: str) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(enable_auto_commit=False, isolation_level=isolation, **client_options(settings))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 30
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end {ends} within 30 s")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def _collect(settings: Settings, topic: str, count: int, timeout_s: float, settle_s: float,
                   distinct: Callable[[ConsumerRecord], Hashable] | None = None) -> list:
    records: list = []
    seen: set[Hashable] = set()
    deadline = time.monotonic() + timeout_s
    settle_until = None

    async def reader() -> None:
        nonlocal settle_until
        async for record in consume(settings, [topic], idle_timeout_s=None):
            records.append(record)
            if distinct is not None:
                seen.add(distinct(record))
            if (len(seen) if distinct is not None else len(records)) >= count and settle_until is None:
                settle_until = time.monotonic() + settle_s

    task = asyncio.create_task(reader())
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
    return records


@pytest.fixture
def deployment(kafka: BrokerInfo, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A fresh topic namespace on the session broker; workers are stopped (logs shown on failure)."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    deployment = Deployment(kafka=kafka, root=tmp_path, prefix=prefix, extra_env={})
    yield deployment
    deployment.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for worker in deployment.workers:
            print(f"--- {worker.log_path.name} ---\n{worker.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
