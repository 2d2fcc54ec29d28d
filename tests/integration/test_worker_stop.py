"""A worker stopped while it is still starting exits at once and closes its Kafka clients.

Faust stops the app's services even while they start; the transport's service must then close the
transport instead of waiting for a run task that never began (it waited 35 s, the transport's
shutdown timeout plus 5 s, and left its consumers and producers open).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.broker import free_port
from tests.integration.conftest import FAST_GROUP_ENV, Deployment

pytestmark = pytest.mark.integration

STARTING = "[^--BehaviorTransportService]: Starting"
# Well below the 35 s a stop during the start took before: a stop that only ever happens after that
# wait fails the test, a slow machine does not.
EXIT_WITHIN_S = 25.0


def _start_worker(deployment: Deployment, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **FAST_GROUP_ENV, "STREAM_APP_LOG_LEVEL": "info", "STREAM_APP_HOT_PATH": "transport",
           "STREAM_APP_BROKER": deployment.kafka.url, "STREAM_APP_TOPIC_PREFIX": deployment.prefix,
           "STREAM_APP_ID": deployment.app_id, "STREAM_APP_STATE_DIR": str(deployment.root / "state"),
           "STREAM_APP_WEB_PORT": str(free_port())}
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "stream_app", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_line(process: subprocess.Popen[bytes], log_path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the worker never logged {text!r}:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.01)


def test_sigterm_while_the_transport_starts_stops_the_worker_at_once_with_clients_closed(deployment):
    log_path = deployment.root / "worker.log"
    process = _start_worker(deployment, log_path)
    try:
        _wait_for_line(process, log_path, STARTING, timeout_s=180.0)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {EXIT_WITHIN_S:.0f} s of SIGTERM:\n"
                        f"{log_path.read_text(errors='replace')[-4000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = log_path.read_text(errors="replace")
    assert code == 0, log[-4000:]
    assert "did not stop within" not in log
    assert "Unclosed AIOKafka" not in log, log[-4000:]
