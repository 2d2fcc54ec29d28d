"""Time, place and sampling helpers shared by the simulations."""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime

import numpy as np

__all__ = ["SimulationConfigError", "DEFAULT_START_MS", "MINUTE_MS", "HOUR_MS", "DAY_MS", "WEEK_SLOTS",
           "week_slot", "local_hours", "utc_offset_ms", "to_latlon", "draw"]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_SLOTS = 168
_KM_PER_DEG_LAT = 111.32

#: Monday 2024-03-04, local midnight in the default city (UTC-5).
DEFAULT_START_MS = int(datetime(2024, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)


class SimulationConfigError(ValueError):
    """A simulation was configured with values it cannot run with."""


def week_slot(ts_ms: np.ndarray | int, offset_ms: int) -> np.ndarray | int:
    """Local hour of the week (Monday 00h = 0 .. Sunday 23h = 167)."""
    local = ts_ms + offset_ms
    dow = (local // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    return dow * 24 + (local % DAY_MS) // HOUR_MS


def local_hours(ts_ms: np.ndarray, offset_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional local hour of day and a weekend flag, for each timestamp."""
    local = ts_ms + offset_ms
    weekend = (local // DAY_MS + 3) % 7 >= 5
    return (local % DAY_MS) / HOUR_MS, weekend


def utc_offset_ms(utc_offset_hours: float) -> int:
    return int(round(utc_offset_hours * HOUR_MS))


def to_latlon(center: tuple[float, float], east_km: float, north_km: float) -> tuple[float, float]:
    lat = center[0] + north_km / _KM_PER_DEG_LAT
    lon = center[1] + east_km / (_KM_PER_DEG_LAT * math.cos(math.radians(center[0])))
    return round(lat, 6), round(lon, 6)


def draw(cumulative: list[float], u: float) -> int:
    return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)
