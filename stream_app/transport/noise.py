"""Broker connection errors logged once per outage, with a count, instead of once per attempt.

During a broker outage aiokafka logs every failed connect, metadata refresh, fetch, heartbeat and
produce retry (about 50 lines a second from one worker). ``OutageLogFilter`` lets the first such
record of an outage through, with a note, swallows the rest, and when no connection error has been
seen for ``quiet_s`` logs one line: how many it swallowed and how long the outage lasted. It is a
``logging.Filter`` installed on aiokafka's loggers (filters do not propagate, so each is named).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["OutageLogFilter", "install_outage_filter", "AIOKAFKA_LOGGERS", "CONNECTION_ERROR_MESSAGES",
           "REQUEST_ERROR_MESSAGES"]

log = logging.getLogger(__name__)

AIOKAFKA_LOGGERS = (
    "aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.cluster", "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator", "aiokafka.producer.producer",
    "aiokafka.producer.sender", "aiokafka.producer.transaction_manager", "aiokafka.admin.client",
)

#: Beginnings of aiokafka's log templates (``record.msg``, before formatting) that always mean
#: "cannot reach a broker".
CONNECTION_ERROR_MESSAGES = (
    'Unable connect to "%s:%s"', "Unable connect to node with id", "Unable to update metadata from",
    "Heartbeat session expired", "Marking the coordinator dead",
)
#: Templates that report any failed request: counted only when their error is a connection failure
#: (a coordinator still loading at a group's first join is not an outage).
REQUEST_ERROR_MESSAGES = (
    "Failed fetch messages from", "Failed fetch offsets from", "Heartbeat send request failed",
    "Group Coordinator Request failed", "FindCoordinator Request failed", "Cannot send %r to %s",
    "Could not send %r", "Got error produce response", "OffsetCommit failed before join", "Error sending %s to node",
)
_CONNECTION_ERRORS = ("KafkaConnectionError", "NodeNotReadyError", "RequestTimedOutError", "KafkaTimeoutError",
                      "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
                      "OSError")


class OutageLogFilter(logging.Filter):
    """Passes the first connection error of an outage, counts the others, reports when it ends."""

    def __init__(self, quiet_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self.outages = 0
        self.suppressed = 0  # in the current outage
        self._started: float | None = None
        self._last_error = 0.0

    @property
    def in_outage(self) -> bool:
        return self._started is not None

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._is_connection_error(record):
            return True
        with self._lock:
            now = self._clock()
            self._close_if_quiet(now)
            self._last_error = now
            if self._started is None:
                self._started, self.suppressed = now, 0
                self.outages += 1
                record.msg = (f"{record.msg} (further broker connection errors are counted, not logged, until "
                              f"none is seen for {self.quiet_s:g} s)")
                return True
            self.suppressed += 1
            return False

    def tick(self) -> None:
        """Report the end of an outage once ``quiet_s`` passed without a connection error (call often)."""
        if self._started is not None:
            with self._lock:
                self._close_if_quiet(self._clock())

    def _close_if_quiet(self, now: float) -> None:
        if self._started is not None and now - self._last_error >= self.quiet_s:
            if self.suppressed:
                log.warning("broker connection errors stopped: %d more were not logged (%.1f s from the first "
                            "to the last)", self.suppressed, self._last_error - self._started)
            self._started = None

    @staticmethod
    def _is_connection_error(record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if record.levelno < logging.WARNING:
            return False
        if message.startswith(CONNECTION_ERROR_MESSAGES):
            return True
        return message.startswith(REQUEST_ERROR_MESSAGES) and any(map(_is_connection_failure, record.args or ()))


def _is_connection_failure(arg: object) -> bool:
    kind = arg if isinstance(arg, type) else type(arg)
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in getattr(kind, "__mro__", ()))


_installed: OutageLogFilter | None = None


def install_outage_filter(quiet_s: float = 10.0) -> OutageLogFilter:
    """Install one process-wide filter on aiokafka's loggers (idempotent) and return it."""
    global _installed
    if _installed is None:
        _installed = OutageLogFilter(quiet_s=quiet_s)
        for name in AIOKAFKA_LOGGERS:
            logging.getLogger(name).addFilter(_installed)
    return _installed
