"""Per-network incident alerts and online forecast error, around ``models.traffic.monitor.IncidentMonitor``.

An alert is an incident: one ``anomaly-alerts`` record (kind ``incident``, status ``raised``) when a
sensor departs from its seasonal profile, one (status ``resolved``) when every sensor grouped into it
(neighbours departing meanwhile) is back. The threshold is the one training calibrated to the alert
budget and stored in the checkpoint; a network served without such a checkpoint raises no alerts, and
no sensor is scored before its profile has ``min_history`` periods behind it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import TypeGuard, get_args

import numpy as np

from models.exceptions import ModelError
from models.traffic.forecaster import StepResult
from models.traffic.incidents import IncidentEvent
from models.traffic.monitor import IncidentMonitor
from schemas import AnomalyAlert
from schemas.outputs import IncidentStatus, Severity

__all__ = ["NetworkAlerts", "incident_alert"]

log = logging.getLogger(__name__)

_SEVERITIES: tuple[str, ...] = get_args(Severity)
_STATUSES: tuple[str, ...] = get_args(IncidentStatus)


def incident_alert(network: str, event: IncidentEvent) -> AnomalyAlert:
    """The ``anomaly-alerts`` record of an incident raised or resolved (a missing value is sent as 0)."""
    severity, status = event.severity, event.status
    if not _is_severity(severity) or not _is_status(status):
        raise ModelError(f"incident {event.incident_id}: severity {severity!r} or status {status!r} is not one "
                         f"of {_SEVERITIES} and {_STATUSES}")
    return AnomalyAlert(alert_id=f"{event.incident_id}:{event.status}", kind="incident", key=event.sensor_id,
                        network=network, ts=event.window_end_ms, observed=_finite(event.observed),
                        expected=_finite(event.expected),
                        score=event.score, severity=severity, incident_id=event.incident_id,
                        status=status, sensors=list(event.sensors),
                        detail=f"{len(event.sensors)} sensor(s), since {event.started_ms}")


def _is_severity(value: str) -> TypeGuard[Severity]:
    return value in _SEVERITIES


def _is_status(value: str) -> TypeGuard[IncidentStatus]:
    return value in _STATUSES


def _finite(value: float) -> float:
    return value if np.isfinite(value) else 0.0  # JSON has no NaN


class NetworkAlerts:
    """Incident alerts and forecast errors of one network, fed one ``StepResult`` per window."""

    def __init__(self, name: str, step_ms: int, monitor: IncidentMonitor | None = None) -> None:
        self.name, self.step_ms, self.monitor = name, step_ms, monitor
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

    def alerts(self, result: StepResult) -> list[AnomalyAlert]:
        """The incidents this window raised or resolved (none without a calibrated monitor)."""
        if self.monitor is None:
            return []
        return [incident_alert(self.name, event) for event in self.monitor.update(result)]

    def replaced_by(self, monitor: IncidentMonitor | None) -> NetworkAlerts:
        """These alerts under a reloaded checkpoint's monitor: open incidents carry over when it fits."""
        fresh = NetworkAlerts(self.name, self.step_ms, monitor)
        fresh._past = self._past
        fresh.load(self.to_bytes())
        return fresh

    def to_bytes(self) -> bytes:
        return self.monitor.state_bytes() if self.monitor is not None else b""

    def load(self, data: bytes) -> None:
        """Restore :meth:`to_bytes`; a state that does not fit this monitor is dropped (logged)."""
        if not data or self.monitor is None:
            return
        try:
            self.monitor.load_state_bytes(data)
        except ModelError as exc:
            log.warning("network %s: incident state not restored (%s); open incidents start over", self.name, exc)
