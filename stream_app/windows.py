"""Event-time windows driven by a watermark: tumbling per key, hopping for cell activity.

Pure and clock-free: the watermark is the largest event time seen minus the grace period, so
tests drive time with events alone. Records older than an already-closed window are late: they
are counted by the caller and never merged silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["window_starts", "Watermark", "SpeedWindow", "TumblingWindows"]


def window_starts(ts_ms: int, size_ms: int, step_ms: int | None = None) -> list[int]:
    """Starts of every window of ``size_ms`` (advancing by ``step_ms``) that contains ``ts_ms``."""
    step_ms = step_ms or size_ms
    last = ts_ms - ts_ms % step_ms
    return [start for start in range(last - size_ms + step_ms, last + 1, step_ms) if start <= ts_ms < start + size_ms]


@dataclass
class Watermark:
    """Largest event time seen minus ``grace_ms``; windows ending at or before it are closed."""

    grace_ms: int
    max_ts_ms: int | None = None

    def observe(self, ts_ms: int) -> None:
        self.max_ts_ms = ts_ms if self.max_ts_ms is None else max(self.max_ts_ms, ts_ms)

    @property
    def value(self) -> int | None:
        return None if self.max_ts_ms is None else self.max_ts_ms - self.grace_ms


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
class TumblingWindows:
    """Open tumbling windows of many keys; ``close(watermark)`` yields the ones that are done."""

    size_ms: int
    open: dict[str, dict[int, SpeedWindow]] = field(default_factory=dict)
    closed_until: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, ts_ms: int, speed: float, flow: float | None) -> bool:
        """Add a reading; False (and nothing changes) when its window already closed."""
        start = ts_ms - ts_ms % self.size_ms
        if start + self.size_ms <= self.closed_until.get(key, -1):
            return False
        self.open.setdefault(key, {}).setdefault(start, SpeedWindow()).add(speed, flow)
        return True

    def close(self, watermark: int | None) -> Iterator[tuple[str, int, SpeedWindow]]:
        """(key, window start, aggregate) of every window ending at or before ``watermark``, in time order."""
        if watermark is None:
            return
        done = sorted((start, key) for key, windows in self.open.items() for start in windows
                      if start + self.size_ms <= watermark)
        for start, key in done:
            yield key, start, self.open[key].pop(start)
            self.closed_until[key] = max(self.closed_until.get(key, -1), start + self.size_ms)
            if not self.open[key]:
                del self.open[key]
