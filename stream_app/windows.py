"""Event-time windows closed by a watermark: tumbling per key, hopping for cell activity.

A :class:`Watermark` tracks each input partition's largest event time; its value is the smallest
of them minus the grace period, so a window closes only once every partition has passed its end.
A partition silent for ``idle_s`` (or not heard from yet, for as long) stops holding it back, and
the watermark never moves backwards. When *every* partition has been silent for ``idle_s`` and
``end_of_input_ms`` is set, the input is taken as ended for now (Flink's source idleness, carried to
the end of a replay): the watermark jumps ``end_of_input_ms`` (a window's length) past the latest
event and then advances with processing time, so the last windows close without a sentinel.
Idleness is measured on an injectable clock (``time.monotonic`` by default), so tests drive both
event time and idle time without sleeping.
:class:`EventTimeWindows` holds the open windows and closes those the watermark passed. Records
older than an already-closed window are late: ``add`` refuses them and the caller counts them;
they are never merged silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["window_starts", "Watermark", "SpeedWindow", "ActivityWindow", "EventTimeWindows"]



class _Aggregate(Protocol):
    def add(self, *values: Any) -> None: ...


A = TypeVar("A", bound=_Aggregate)


def window_starts(ts_ms: int, size_ms: int, step_ms: int | None = None) -> list[int]:
    """Starts of every window of ``size_ms`` (advancing by ``step_ms``) that contains ``ts_ms``."""
    step_ms = step_ms or size_ms
    last = ts_ms - ts_ms % step_ms
    return [start for start in range(last - size_ms + step_ms, last + 1, step_ms) if start <= ts_ms < start + size_ms]


@dataclass
class Watermark:
    """Event-time progress over several partitions, minus ``grace_ms``.

    Each partition is read in order, but partitions advance at their own pace, so the watermark is
    the *smallest* of the partitions' largest event times: a window closes only once every
    partition has passed it. A partition silent for ``idle_s`` (wall clock) stops holding it back.
    The watermark never moves backwards.
    """

    grace_ms: int
    idle_s: float = 5.0
    partitions: int = 1  # partitions expected to report; one not heard from yet holds the watermark
    clock: Callable[[], float] = time.monotonic
    end_of_input_ms: int | None = None  # None: an all-silent input never moves the watermark past its events
    _max_ts: dict[int, int] = field(default_factory=dict)
    _seen_at: dict[int, float] = field(default_factory=dict)
    _value: int | None = None

    def observe(self, ts_ms: int, partition: int = 0) -> None:
        now = self.clock()
        if not self._seen_at:  # the idle clock of the partitions yet to report starts now
            self._seen_at = dict.fromkeys(range(self.partitions), now)
        self._max_ts[partition] = max(ts_ms, self._max_ts.get(partition, ts_ms))
        self._seen_at[partition] = now

    @property
    def max_ts_ms(self) -> int | None:
        return max(self._max_ts.values()) if self._max_ts else None

    @property
    def value(self) -> int | None:
        if not self._max_ts:
            return None
        now = self.clock()
        active = [p for p, seen in self._seen_at.items() if now - seen <= self.idle_s]
        if any(p not in self._max_ts for p in active):
            return self._value  # a partition that has not reported yet may still hold older records
        if active:
            candidate = min(self._max_ts[p] for p in active) - self.grace_ms
        else:  # every partition silent: none holds the watermark back, the furthest one sets it
            candidate = max(self._max_ts.values()) + self._end_of_input_advance(now)
        self._value = candidate if self._value is None else max(self._value, candidate)
        return self._value

    def _end_of_input_advance(self, now: float) -> int:
        """Past the furthest event once all input went quiet: minus the grace, or (``end_of_input_ms``
        set) one window plus the processing time since the silence reached ``idle_s``."""
        if self.end_of_input_ms is None:
            return -self.grace_ms
        silent_for = now - max(self._seen_at.values()) - self.idle_s
        return self.end_of_input_ms + int(silent_for * 1000)


@dataclass
class SpeedWindow:
    """Running aggregate of one sensor's readings in one window."""

    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    flow: float | None = None

    def add(self, speed: float, flow: float | None) -> None:
        self.count += 1
        self.total += speed
        self.low = min(self.low, speed)
        self.high = max(self.high, speed)
        if flow is not None:
            self.flow = (self.flow or 0.0) + flow

    @property
    def mean(self) -> float:
        return self.total / self.count


@dataclass
class ActivityWindow:
    """Events, distinct users and per-action counts of one map cell in one window."""

    events: int = 0
    users: set[str] = field(default_factory=set)
    actions: dict[str, int] = field(default_factory=dict)

    def add(self, user_id: str, action: str) -> None:
        self.events += 1
        self.users.add(user_id)
        self.actions[action] = self.actions.get(action, 0) + 1


@dataclass
class EventTimeWindows(Generic[A]):
    """Open windows of many keys, ``size_ms`` long every ``step_ms`` (tumbling when equal).

    ``add`` puts a record in every open window that contains it; ``close(watermark)`` yields the
    windows that ended at or before the watermark, in time order.
    """

    size_ms: int
    new_window: Callable[[], A]
    step_ms: int | None = None
    open: dict[str, dict[int, A]] = field(default_factory=dict)
    closed_until: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, ts_ms: int, *values: Any) -> bool:
        """Add a record; False (and nothing changes) when every window holding it already closed."""
        closed = self.closed_until.get(key, -1)
        starts = [s for s in window_starts(ts_ms, self.size_ms, self.step_ms) if s + self.size_ms > closed]
        for start in starts:
            window = self.open.setdefault(key, {}).get(start)
            if window is None:
                window = self.open[key][start] = self.new_window()
            window.add(*values)
        return bool(starts)

    def close(self, watermark: int | None) -> Iterator[tuple[str, int, A]]:
        """(key, window start, aggregate) of every window ending at or before ``watermark``."""
        if watermark is None:
            return
        done = sorted((start, key) for key, windows in self.open.items() for start in windows
                      if start + self.size_ms <= watermark)
        for start, key in done:
            yield key, start, self.open[key].pop(start)
            self.closed_until[key] = max(self.closed_until.get(key, -1), start + self.size_ms)
            if not self.open[key]:
                del self.open[key]
