"""Per-sensor anomaly detection on window aggregates: forecast residuals and time-of-day drops.

Two detectors run side by side on every window, each sensor on its own:

- ``forecast_residual``: the residual ``observed - expected`` (``expected`` being the forecast
  made for this window one step earlier) is divided by a running scale, the square root of an
  EWMA of squared residuals (a plain mean during warm-up; once warm, residuals are clipped at
  ``max(threshold, 3)`` z, with the Gaussian correction for the clipping, so one incident does
  not inflate it). ``|z| > threshold`` for ``consecutive`` windows in a row raises an alert,
  critical above ``critical_threshold``.
- ``profile_drop``: an EWMA profile per time-of-day slot; an observed value below
  ``(1 - drop_fraction)`` of its slot's profile for ``consecutive`` windows raises an alert,
  critical below ``(1 - critical_drop_fraction)``; the score is the fractional drop. Values are
  folded in no lower than the drop threshold, so an incident dents the profile a little and a
  lasting change still moves it over a few days.

Values are plain numpy arrays [sensors] with NaN for "not observed" (pass imputed values as NaN)
or "no forecast". Alerts are plain records; the state is compact versioned bytes.

These per-window alerts fire once per window and sensor for as long as a departure lasts. The
incident detector (:mod:`models.traffic.incidents`, re-exported here) replaces them: a scale that
follows the profile, a threshold calibrated to an alert budget, one event when an incident is
raised and one when it is resolved, neighbours grouped.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from models.exceptions import ModelError
from models.traffic.incidents import (
    IncidentConfig,
    IncidentDetector,
    IncidentEvent,
    ResidualScale,
    calibrate_threshold,
    neighbour_lists,
    residuals,
    z_scores,
)

__all__ = ["AnomalyConfig", "AnomalyAlert", "AnomalyDetector", "FORECAST_RESIDUAL",
           "PROFILE_DROP", "IncidentConfig", "IncidentDetector", "IncidentEvent", "ResidualScale",
           "calibrate_threshold", "neighbour_lists", "residuals", "z_scores"]

logger = logging.getLogger(__name__)

FORECAST_RESIDUAL = "forecast_residual"
PROFILE_DROP = "profile_drop"
_DAY_MS = 86_400_000


@dataclass(frozen=True, kw_only=True)
class AnomalyConfig:
    """Thresholds, run lengths, warm-up and smoothing of both detectors."""

    threshold: float = 3.0  # |z| a residual must exceed to count
    critical_threshold: float = 6.0
    consecutive: int = 2  # windows in a row before an alert (both detectors)
    scale_alpha: float = 0.02  # EWMA weight of the squared residual
    min_scale: float = 1.0  # floor of the residual scale, in the values' units
    warmup_windows: int = 12  # residuals seen per sensor before it may alert
    profile_slot_minutes: int = 15
    profile_alpha: float = 0.3  # EWMA weight of a new value in its slot's profile
    profile_min_samples: int = 2  # values seen in a slot before it may alert
    drop_fraction: float = 0.4
    critical_drop_fraction: float = 0.6
    utc_offset_minutes: int = 0  # local time of the profile slots

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.threshold <= self.critical_threshold:
            problems.append("need 0 < threshold <= critical_threshold")
        if self.consecutive < 1 or self.warmup_windows < 0 or self.profile_min_samples < 1:
            problems.append("need consecutive >= 1, warmup_windows >= 0, profile_min_samples >= 1")
        if not (0 < self.scale_alpha <= 1 and 0 < self.profile_alpha <= 1):
            problems.append("need alphas in (0, 1]")
        if not 0 < self.drop_fraction <= self.critical_drop_fraction < 1:
            problems.append("need 0 < drop_fraction <= critical_drop_fraction < 1")
        if self.profile_slot_minutes < 1 or 1440 % self.profile_slot_minutes:
            problems.append("profile_slot_minutes must divide a day")
        if problems:
            raise ModelError("invalid AnomalyConfig: " + "; ".join(problems))

    @classmethod
    def for_false_positive_rate(cls, rate: float, *, consecutive: int = 2,
                                **options: Any) -> AnomalyConfig:
        """Residual threshold at which Gaussian residuals alert on about ``rate`` of windows.

        Each window must exceed with probability ``rate ** (1 / consecutive)``; the quantile is
        Student-t's (Cornish-Fisher) with the EWMA's effective sample size ``2 / alpha - 1`` as
        degrees of freedom, since the scale is estimated.
        """
        if not 0 < rate < 1:
            raise ModelError(f"false-positive rate must be in (0, 1), got {rate}")
        alpha = float(options.get("scale_alpha", cls.scale_alpha))  # the class attribute holds the default
        z = NormalDist().inv_cdf(1 - rate ** (1 / consecutive) / 2)
        dof = 2 / alpha - 1
        threshold = z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
        options.setdefault("critical_threshold", max(2 * threshold, 6.0))
        return cls(threshold=threshold, consecutive=consecutive, **options)

    @property
    def slots_per_day(self) -> int:
        """Number of time-of-day profile slots."""
        return 1440 // self.profile_slot_minutes


@dataclass(frozen=True)
class AnomalyAlert:
    """One alert: ``score`` is z for forecast_residual, the fractional drop for profile_drop."""

    kind: str
    sensor_index: int
    sensor_id: str
    observed: float
    expected: float
    score: float
    severity: str  # "warning" or "critical"
    window_end_ms: int
    consecutive: int  # windows in a row so far


class AnomalyDetector:
    """Both detectors over a fixed list of sensors; see the module docstring."""

    def __init__(self, sensor_ids: Sequence[str], config: AnomalyConfig = AnomalyConfig()) -> None:
        self.sensor_ids = tuple(str(s) for s in sensor_ids)
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget all history (scales, runs, profiles)."""
        n, slots = len(self.sensor_ids), self.config.slots_per_day
        self._variance = np.full(n, np.nan, dtype=np.float32)
        self._scored = np.zeros(n, dtype=np.uint32)
        self._residual_run = np.zeros(n, dtype=np.uint32)
        self._profile = np.full((slots, n), np.nan, dtype=np.float32)
        self._profile_count = np.zeros((slots, n), dtype=np.uint32)
        self._drop_run = np.zeros(n, dtype=np.uint32)

    def update(self, window_end_ms: int, observed: np.ndarray,
               expected: np.ndarray) -> list[AnomalyAlert]:
        """Score one window; ``observed`` and ``expected`` are [sensors], NaN where absent."""
        observed = self._as_values(observed, "observed")
        expected = self._as_values(expected, "expected")
        alerts = self._residual_alerts(window_end_ms, observed, expected)
        alerts += self._profile_alerts(window_end_ms, observed)
        return alerts

    def _residual_alerts(self, window_end_ms: int, observed: np.ndarray,
                         expected: np.ndarray) -> list[AnomalyAlert]:
        """Score residuals against the running scale, then update the scale."""
        cfg = self.config
        valid = np.isfinite(observed) & np.isfinite(expected)
        residual = np.where(valid, observed - expected, 0.0)
        scale = np.maximum(np.sqrt(np.nan_to_num(self._variance, nan=0.0)), cfg.min_scale)
        z = residual / scale
        warm = valid & (self._scored >= cfg.warmup_windows) & np.isfinite(self._variance)
        exceeded = warm & (np.abs(z) > cfg.threshold)
        self._residual_run = np.where(exceeded, self._residual_run + 1,
                                      np.where(valid, 0, self._residual_run)).astype(np.uint32)
        self._update_scale(valid, self._squared_residual(residual, z, scale, warm))
        firing = exceeded & (self._residual_run >= cfg.consecutive)
        severity = np.where(np.abs(z) > cfg.critical_threshold, "critical", "warning")
        return self._alerts(FORECAST_RESIDUAL, firing, window_end_ms, observed, expected, z,
                            severity, self._residual_run)

    def _squared_residual(self, residual: np.ndarray, z: np.ndarray, scale: np.ndarray,
                          warm: np.ndarray) -> npt.NDArray[np.float64]:
        """Squared residuals for the scale; once warm, winsorized and corrected for it."""
        clip = max(self.config.threshold, _CLIP_Z)
        clipped = np.minimum(z * z, clip * clip) * scale * scale / _clipped_second_moment(clip)
        squared: npt.NDArray[np.float64] = np.where(warm, clipped, residual * residual)
        return squared

    def _update_scale(self, valid: np.ndarray, squared: np.ndarray) -> None:
        """EWMA of squared residuals, a plain running mean while fewer than 1/alpha were seen."""
        weight = np.maximum(self.config.scale_alpha, 1.0 / (self._scored + 1.0))
        previous = np.nan_to_num(self._variance, nan=0.0)
        updated = previous + weight * (squared - previous)
        self._variance = np.where(valid, updated, self._variance).astype(np.float32)
        self._scored = (self._scored + valid).astype(np.uint32)

    def _profile_alerts(self, window_end_ms: int, observed: np.ndarray) -> list[AnomalyAlert]:
        """Compare with the slot's profile, then fold the value into it."""
        cfg = self.config
        slot = self._slot(window_end_ms)
        profile, count = self._profile[slot], self._profile_count[slot]
        seen = np.isfinite(observed)
        ready = seen & (count >= cfg.profile_min_samples) & (profile > 0)
        drop = np.where(ready, 1.0 - observed / np.where(ready, profile, 1.0), 0.0)
        exceeded = ready & (drop >= cfg.drop_fraction)
        self._drop_run = np.where(exceeded, self._drop_run + 1,
                                  np.where(seen, 0, self._drop_run)).astype(np.uint32)
        firing = exceeded & (self._drop_run >= cfg.consecutive)
        severity = np.where(drop >= cfg.critical_drop_fraction, "critical", "warning")
        alerts = self._alerts(PROFILE_DROP, firing, window_end_ms, observed, profile.copy(), drop,
                              severity, self._drop_run)
        self._update_profile(slot, observed, seen)
        return alerts

    def _update_profile(self, slot: int, observed: np.ndarray, seen: np.ndarray) -> None:
        """EWMA per slot, values clipped at the drop threshold; the first value starts a slot."""
        profile = self._profile[slot]
        known = np.isfinite(profile)
        floor = np.where(known, (1 - self.config.drop_fraction) * profile, -np.inf)
        clipped = np.maximum(observed, floor)
        blended = np.where(known, profile + self.config.profile_alpha * (clipped - profile), observed)
        self._profile[slot] = np.where(seen, blended, profile)
        self._profile_count[slot] += seen.astype(np.uint32)

    def _slot(self, window_end_ms: int) -> int:
        """Profile slot of the window (by its last millisecond, in local time)."""
        local = int(window_end_ms) - 1 + self.config.utc_offset_minutes * 60_000
        return int((local % _DAY_MS) // (self.config.profile_slot_minutes * 60_000))

    def _alerts(self, kind: str, firing: np.ndarray, window_end_ms: int, observed: np.ndarray,
                expected: np.ndarray, score: np.ndarray, severity: np.ndarray,
                run: np.ndarray) -> list[AnomalyAlert]:
        """Alert records of the sensors in ``firing``."""
        return [AnomalyAlert(kind=kind, sensor_index=int(i), sensor_id=self.sensor_ids[i],
                             observed=float(observed[i]), expected=float(expected[i]),
                             score=float(score[i]), severity=str(severity[i]),
                             window_end_ms=int(window_end_ms), consecutive=int(run[i]))
                for i in np.flatnonzero(firing)]

    def _as_values(self, values: np.ndarray, name: str) -> np.ndarray:
        """float64 [sensors] or a ModelError naming the argument."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self.sensor_ids),):
            raise ModelError(f"{name} must be [{len(self.sensor_ids)}] (one per sensor), "
                             f"got shape {values.shape}")
        return values

    def state_bytes(self) -> bytes:
        """Compact versioned encoding of all per-sensor state."""
        n, slots = len(self.sensor_ids), self.config.slots_per_day
        header = _HEADER.pack(_MAGIC, _FORMAT, n, slots)
        return header + b"".join(np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes()
                                 for name, dtype in _FIELDS)

    def load_state_bytes(self, data: bytes) -> None:
        """Replace the state with ``data`` from :meth:`state_bytes`; ModelError if it does not fit."""
        n, slots = len(self.sensor_ids), self.config.slots_per_day
        if len(data) < _HEADER.size:
            raise ModelError(f"anomaly state too short ({len(data)} bytes)")
        magic, fmt, state_n, state_slots = _HEADER.unpack_from(data)
        if magic != _MAGIC or fmt != _FORMAT:
            raise ModelError(f"bytes are not an anomaly state of format {_FORMAT}")
        if (state_n, state_slots) != (n, slots):
            raise ModelError(f"anomaly state is for {state_n} sensors x {state_slots} slots, "
                             f"this detector has {n} x {slots}")
        shapes = [getattr(self, name).shape for name, _ in _FIELDS]
        expected = _HEADER.size + sum(int(np.prod(s)) * 4 for s in shapes)
        if len(data) != expected:
            raise ModelError(f"anomaly state has {len(data)} bytes, expected {expected}")
        offset = _HEADER.size
        for (name, dtype), shape in zip(_FIELDS, shapes, strict=True):
            count = int(np.prod(shape))
            array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            setattr(self, name, array.reshape(shape).astype(np.dtype(dtype).newbyteorder("=")))
            offset += count * 4


def _clipped_second_moment(clip: float) -> float:
    """E[min(Z^2, clip^2)] for a standard normal Z: corrects the winsorized variance."""
    normal = NormalDist()
    tail = 1 - normal.cdf(clip)
    return 1 - 2 * tail - 2 * clip * normal.pdf(clip) + 2 * clip * clip * tail


_CLIP_Z = 3.0  # once warm, squared residuals enter the scale clipped at max(threshold, this) z
_MAGIC = b"ANOM"
_FORMAT = 1
_HEADER = struct.Struct("<4sBIH")  # magic, format, sensors, slots
_FIELDS = (("_variance", "<f4"), ("_scored", "<u4"), ("_residual_run", "<u4"),
           ("_profile", "<f4"), ("_profile_count", "<u4"), ("_drop_run", "<u4"))
