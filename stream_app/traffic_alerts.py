"""Per-network anomaly alerts and online forecast error, around ``models.traffic.anomaly.AnomalyDetector``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from models.traffic.anomaly import AnomalyAlert as DetectedAlert
from models.traffic.anomaly import AnomalyConfig, AnomalyDetector
from models.traffic.forecaster import StepResult
from models.traffic.graph import SensorNetwork
from schemas import AnomalyAlert
from stream_app.settings import Settings

__all__ = ["NetworkAlerts", "anomaly_config"]


def anomaly_config(settings: Settings) -> AnomalyConfig:
    """Detector thresholds from the settings (z threshold, windows in a row)."""
    return AnomalyConfig(threshold=settings.anomaly_z, critical_threshold=max(6.0, 2 * settings.anomaly_z),
                         consecutive=settings.anomaly_consecutive)


class NetworkAlerts:
    """Alerts and forecast errors of one network, fed one ``StepResult`` per window."""

    def __init__(self, name: str, network: SensorNetwork, settings: Settings) -> None:
        self.name = name
        self.sensor_ids = network.sensor_ids
        self.step_ms = settings.sensor_window_s * 1000
        self.detector = AnomalyDetector(network.sensor_ids, anomaly_config(settings))
        self._past: deque[tuple[int, tuple[int, ...], np.ndarray]] = deque(maxlen=64)

    def horizon_errors(self, result: StepResult) -> Iterator[tuple[int, float]]:
        """(horizon minutes, |observed - forecast|) for every observed sensor whose forecast for
        this window was made ``horizon`` earlier; then remembers this step's forecasts."""
        observed = np.where(result.imputed, np.nan, result.values)
        for window_end, horizons, forecasts in self._past:
            for h, steps in enumerate(horizons):
                if window_end + steps * self.step_ms != result.window_end_ms:
                    continue
                errors = np.abs(observed - forecasts[:, h])
                minutes = steps * self.step_ms // 60_000
                yield from ((minutes, float(e)) for e in errors[np.isfinite(errors)])
        self._past.append((result.window_end_ms, tuple(result.horizons), result.forecasts.copy()))

    def score(self, result: StepResult) -> list[DetectedAlert]:
        """The detectors' alerts for one window (imputed values are not observations)."""
        observed = np.where(result.imputed, np.nan, result.values)
        return self.detector.update(result.window_end_ms, observed, result.expected)

    def alerts(self, result: StepResult) -> list[AnomalyAlert]:
        """Score the window: one ``anomaly-alerts`` message per firing sensor."""
        return [AnomalyAlert(alert_id=f"{self.name}:{alert.sensor_id}:{alert.kind}:{alert.window_end_ms}",
                             kind=alert.kind, key=alert.sensor_id, network=self.name, ts=alert.window_end_ms,
                             observed=alert.observed, expected=alert.expected, score=alert.score,
                             severity=alert.severity, detail=f"{alert.consecutive} windows in a row")
                for alert in self.score(result)]

    def to_bytes(self) -> bytes:
        return self.detector.state_bytes()

    def load(self, data: bytes) -> None:
        if data:
            self.detector.load_state_bytes(data)
