"""Commands stop their children and remove their temporary folders however they end.

Each command runs as a subprocess with its own TMPDIR (so its temporary folders are told apart from
those of other test sessions on the machine) and its own cache folder; its children are found by
walking /proc from its pid while it runs, and each is recognised later by pid and start time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stream_app.broker import CACHE_ROOT, KAFKA_VERSION, free_port, resolve_kafka_jars
from stream_app.kafka_io import consume, produce
from stream_app.settings import Settings

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc to find the children")]

STREAM_APP = [sys.executable, "-m", "stream_app"]
START_TIMEOUT_S = 240.0  # a demo's broker and worker, on a loaded two-core machine
STOP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Proc:
    """A process as seen in /proc; ``start`` (clock ticks after boot) tells it apart from a later reuse of its pid."""

    pid: int
    ppid: int
    start: int
    cmdline: str

    def running(self) -> bool:
        """Still there and not a zombie (nobody may reap an orphan here: pid 1 is not always an init)."""
        now = _read(self.pid)
        return now is not None and now.start == self.start and _state(self.pid) not in ("Z", "X", None)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _read(pid: int) -> Proc | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    return Proc(pid=pid, ppid=int(fields[1]), start=int(fields[19]), cmdline=cmdline.strip())


def _descendants(pid: int) -> list[Proc]:
    procs = [p for entry in Path("/proc").iterdir() if entry.name.isdigit() and (p := _read(int(entry.name)))]
    found, frontier = [], {pid}
    while frontier:
        children = [p for p in procs if p.ppid in frontier and p.running()]
        found += children
        frontier = {p.pid for p in children}
    return found


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what} within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.2)


@dataclass
class Command:
    """One ``stream-app`` command run as a subprocess with its own TMPDIR and cache folder."""

    args: list[str]
    env: dict[str, str]
    root: Path
    process: subprocess.Popen[bytes] | None = None
    seen: dict[int, Proc] = field(default_factory=dict)  # every child ever found, killed at teardown

    @property
    def tmpdir(self) -> Path:
        return Path(self.env["TMPDIR"])

    @property
    def stdout_path(self) -> Path:
        return self.root / f"{self.args[0]}.out"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.args[0]}.log"

    def start(self) -> Command:
        with self.stdout_path.open("wb") as out, self.log_path.open("ab") as log:
            self.process = subprocess.Popen(STREAM_APP + self.args, env=self.env, stdout=out, stderr=log,
                                            start_new_session=True)
        return self

    def first_line(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first line the command printed on stdout (the broker's URL)."""
        _wait_for(lambda: self.stdout_path.read_text().endswith("\n") or not self.alive(), timeout_s,
                  f"`stream-app {' '.join(self.args)}` printed no line", self.log_path)
        assert self.alive(), f"the command exited early:\n{self.log_path.read_text()[-4000:]}"
        self.children()
        return self.stdout_path.read_text().splitlines()[0]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[Proc]:
        assert self.process is not None
        found = _descendants(self.process.pid)
        self.seen.update({p.pid: p for p in found})
        return found

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the command did not exit within {timeout_s:.0f} s\n{self.log_path.read_text()[-4000:]}")


def _kill(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.running():
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def kafka_jars() -> Path:
    return resolve_kafka_jars(KAFKA_VERSION, CACHE_ROOT)


@pytest.fixture
def command_env(tmp_path: Path, kafka_jars: Path) -> dict[str, str]:
    """The caller's environment without STREAM_APP_* settings, with a TMPDIR and a cache of this test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}
    (tmp_path / "tmp").mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / kafka_jars.name).symlink_to(kafka_jars)  # the jars are resolved once, for every test
    env.update(TMPDIR=str(tmp_path / "tmp"), STREAM_APP_CACHE=str(cache), STREAM_APP_LOG_LEVEL="warn")
    return env


@pytest.fixture
def run_command(command_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Command]]:
    """Start ``stream-app ARGS...``; whatever it or its children leave running is killed at teardown."""
    started: list[Command] = []

    def start(*args: str) -> Command:
        command = Command(list(args), command_env, tmp_path).start()
        started.append(command)
        return command

    yield start
    for command in started:
        if command.alive():
            command.children()
            assert command.process is not None
            os.killpg(command.process.pid, signal.SIGKILL)
            command.process.wait()
        _kill(list(command.seen.values()))


def _worker_answers(worker: Proc) -> bool:
    environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
    port = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"STREAM_APP_WEB_PORT="))
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return False
    return True


def _find(procs: list[Proc], marker: str) -> Proc | None:
    return next((p for p in procs if marker in p.cmdline), None)


def _assert_all_gone(command: Command, children: list[Proc]) -> None:
    """Every child process stopped and the command's TMPDIR is empty, waiting as long as it takes to get there."""
    _wait_for(lambda: not any(p.running() for p in children), STOP_TIMEOUT_S,
              "child processes still running: " + ", ".join(f"{p.pid} {p.cmdline[:80]}" for p in children
                                                            if p.running()), command.log_path)
    _wait_for(lambda: not any(command.tmpdir.iterdir()), STOP_TIMEOUT_S,
              f"temporary folders left behind: {sorted(p.name for p in command.tmpdir.iterdir())}", command.log_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_to_demo_stops_its_worker_and_broker_and_removes_folders(run_command, signum):
    demo = run_command("demo", "--no-train", "--duration", "3600", "--users", "20", "--sensors", "4", "--rate", "20")
    running: dict[int, Proc] = {}

    def worker_runs() -> bool:
        assert demo.alive(), f"the demo exited early:\n{demo.log_path.read_text()[-4000:]}"
        children = demo.children()
        worker = _find(children, "stream_app worker")
        if worker is None or not _worker_answers(worker):
            return False
        running.update({p.pid: p for p in children})
        return True

    _wait_for(worker_runs, START_TIMEOUT_S, "the demo's worker did not serve /metrics", demo.log_path)
    children = list(running.values())
    assert _find(children, "kafka.Kafka") is not None, "the demo runs its broker as a child"
    folders = sorted(p.name.rsplit("-", 1)[0] for p in demo.tmpdir.iterdir())
    assert folders == ["stream-app-demo-state", "stream-app-kafka"], "the demo made its temporary folders"

    demo.signal(signum)

    assert demo.wait() == 0, "the demo handled the signal and stopped on its own"
    _assert_all_gone(demo, children)


def test_sigkill_to_broker_command_leaves_no_process_or_folder(run_command):
    broker = run_command("broker", "--kind", "kafka")
    assert broker.first_line().startswith("kafka://127.0.0.1:")
    children = broker.children()
    assert _find(children, "kafka.Kafka") is not None and any(broker.tmpdir.iterdir())

    broker.signal(signal.SIGKILL)

    assert broker.wait() == -signal.SIGKILL
    _assert_all_gone(broker, children)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_broker_command_stops_cleanly_on_signal(run_command, signum):
    broker = run_command("broker", "--kind", "kafka")
    broker.first_line()
    children = broker.children()
    assert _find(children, "kafka.Kafka") is not None

    broker.signal(signum)

    assert broker.wait() == 0
    _assert_all_gone(broker, children)


async def _produce_and_read(url: str, records: list[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]]:
    settings = Settings(broker=url, partitions=1)
    if records:
        await produce(settings, [("kept-records", key, value) for key, value in records])
    got = []
    async for record in consume(settings, ["kept-records"], idle_timeout_s=10):
        got.append((record.key, record.value))
    return got


def test_broker_command_with_port_and_data_dir_keeps_records_across_restart(run_command, tmp_path):
    port, data_dir = free_port(), tmp_path / "kafka-data"
    flags = ("broker", "--kind", "kafka", "--port", str(port), "--data-dir", str(data_dir))
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]

    first = run_command(*flags)
    assert first.first_line() == f"kafka://127.0.0.1:{port}"
    assert asyncio.run(_produce_and_read(f"kafka://127.0.0.1:{port}", records)) == records
    cluster = (data_dir / "data" / "meta.properties").read_text()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    second = run_command(*flags)
    assert second.first_line() == f"kafka://127.0.0.1:{port}"
    assert asyncio.run(_produce_and_read(f"kafka://127.0.0.1:{port}", None)) == records
    assert (data_dir / "data" / "meta.properties").read_text() == cluster, "formatted once: same cluster id"
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert not any(second.tmpdir.iterdir()), "a broker with a data dir makes no temporary folder"
