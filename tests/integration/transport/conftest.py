"""Helpers for the transport's tests on the real broker: topics, workloads, readers, worker processes.

The transport keeps no per-process globals, so most tests run it in the test process; the crash
tests run ``python -m stream_app.transport.testing`` workers as subprocesses, to SIGKILL them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from stream_app.broker import BrokerInfo
from stream_app.transport import TransportConfig
from stream_app.transport.testing import decode_count_state

FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "rebalance_timeout_ms": 3000}


@dataclass
class Kafka:
    """One test's topics on the session broker, and synchronous helpers around them."""

    broker: BrokerInfo
    prefix: str
    partitions: int = 3
    root: Path = field(default_factory=Path)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def app_id(self) -> str:
        return f"{self.prefix}app"

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def config(self, state_dir: Path, **overrides) -> TransportConfig:
        return TransportConfig(**{
            "name": "count", "app_id": self.app_id, "input_topic": self.topic("in"),
            "dead_letter_topic": self.topic("dead-letters"), "state_dir": state_dir,
            "client_options": {"bootstrap_servers": self.bootstrap}, "commit_interval_s": 0.5, **FAST_GROUP,
            **overrides})

    def create_topics(self) -> None:
        async def create() -> None:
            async with _admin(self.bootstrap) as admin:
                await admin.create_topics([NewTopic(self.topic(name), self.partitions, 1)
                                           for name in ("in", "out", "dead-letters")])
        asyncio.run(create())

    def produce(self, records: Sequence[tuple[bytes | None, bytes]], rate: float = 0.0,
                headers: Sequence | None = None) -> float:
        """Send to the input topic (paced to ``rate`` records/s if given); returns when the last was acked."""
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
            await producer.start()
            started = time.monotonic()
            try:
                for i, (key, value) in enumerate(records):
                    await producer.send(self.topic("in"), key=key, value=value,
                                        headers=list(headers[i]) if headers else None)
                    if rate and (ahead := (i + 1) / rate - (time.monotonic() - started)) > 0:
                        await asyncio.sleep(ahead)
                await producer.flush()
            finally:
                await producer.stop()
        asyncio.run(send())
        return time.monotonic()

    def produce_in_background(self, records: Sequence[tuple[bytes | None, bytes]], rate: float) -> threading.Thread:
        thread = threading.Thread(target=self.produce, args=(records, rate), daemon=True)
        thread.start()
        return thread

    def read(self, name: str, *, isolation_level: str = "read_uncommitted", idle_s: float = 2.0,
             timeout_s: float = 60.0) -> list:
        """Every record of a topic, read until ``idle_s`` pass without a new one."""
        async def read() -> list:
            consumer = AIOKafkaConsumer(self.topic(name), bootstrap_servers=self.bootstrap,
                                        auto_offset_reset="earliest", isolation_level=isolation_level,
                                        enable_auto_commit=False)
            await consumer.start()
            records, idle_since, deadline = [], time.monotonic(), time.monotonic() + timeout_s
            try:
                while time.monotonic() - idle_since < idle_s and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=200)
                    for part in batch.values():
                        records.extend(part)
                    if batch:
                        idle_since = time.monotonic()
            finally:
                await consumer.stop()
            return records
        return asyncio.run(read())

    def outputs(self, **kwargs) -> list[dict]:
        return [json.loads(r.value) for r in self.read("out", **kwargs)]

    def changelog_state(self, store: str = "count", isolation_level: str = "read_uncommitted"
                        ) -> dict[bytes, tuple[int, int]]:
        """The changelog as a restore from scratch sees it when the committed mark is at its end."""
        state: dict[bytes, tuple[int, int]] = {}
        for record in self.read(f"app-{store}-changelog", isolation_level=isolation_level):
            if record.value is None:
                state.pop(record.key, None)
            else:
                state[record.key] = decode_count_state(record.value)
        return state

    def end_offsets(self, full_name: str) -> dict[int, int]:
        async def ends() -> dict[int, int]:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed")
            await consumer.start()
            try:
                tps = [TopicPartition(full_name, p) for p in range(self.partitions)]
                return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
            finally:
                await consumer.stop()
        return asyncio.run(ends())

    def committed(self, group: str) -> dict[int, int]:
        async def committed() -> dict[int, int]:
            async with _admin(self.bootstrap) as admin:
                found = await admin.list_consumer_group_offsets(group)
            return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == self.topic("in")}
        return asyncio.run(committed())

    def wait_committed_to_end(self, group: str, timeout_s: float) -> float:
        """Seconds until the group's committed offsets equal the input's end offsets (fails at the deadline)."""
        started = time.monotonic()
        ends = self.end_offsets(self.topic("in"))
        committed: dict[int, int] = {}
        while time.monotonic() - started < timeout_s:
            committed = self.committed(group)
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"committed offsets {committed} did not reach the end {ends} within {timeout_s} s")


class _admin:
    def __init__(self, bootstrap: str) -> None:
        self.client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> AIOKafkaAdminClient:
        await self.client.start()
        return self.client

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()


@dataclass
class WorkerProcess:
    """``python -m stream_app.transport.testing`` with its own log; SIGKILL or SIGTERM it."""

    kafka: Kafka
    state_dir: Path
    guarantee: str = "at_least_once"
    url: str = ""
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.with_suffix(".log")

    def start(self, timeout_s: float = 30.0) -> WorkerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "started.json").unlink(missing_ok=True)
        k = self.kafka
        cmd = [sys.executable, "-m", "stream_app.transport.testing", "--bootstrap", k.bootstrap,
               "--input", k.topic("in"), "--output", k.topic("out"), "--dead-letters", k.topic("dead-letters"),
               "--app-id", k.app_id, "--state-dir", str(self.state_dir), "--guarantee", self.guarantee,
               "--commit-interval-s", "0.5", "--url", self.url]
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not (self.state_dir / "started.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker never logged {text!r}:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture
def kafka_topics(kafka: BrokerInfo, tmp_path: Path) -> Kafka:
    """A fresh input/output/dead-letter topic set (3 partitions) on the session broker."""
    topics = Kafka(broker=kafka, prefix=f"t{uuid.uuid4().hex[:8]}-", root=tmp_path)
    topics.create_topics()
    return topics


@dataclass
class Workers:
    """Starts worker processes for one test; all are killed at its end."""

    kafka: Kafka
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str, guarantee: str = "at_least_once") -> WorkerProcess:
        """A worker with state folder ``name``: the same name again is a restart in place."""
        worker = WorkerProcess(kafka=self.kafka, state_dir=self.kafka.root / name, guarantee=guarantee)
        self.started.append(worker)
        return worker.start()


@pytest.fixture
def workers(kafka_topics: Kafka, request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Worker processes a test starts; killed at the end, their logs printed if it failed."""
    started = Workers(kafka_topics)
    yield started
    for worker in started.started:
        worker.kill()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for worker in started.started:
            print(f"--- {worker.log_path.name} ---\n{worker.log_tail()}")
