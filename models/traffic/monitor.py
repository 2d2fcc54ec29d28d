"""Incident monitoring of a network, calibrated at training time and served from the checkpoint.

Training (:func:`calibrate_incidents`) fits the residual scale on the training rows (each value
against the profile without its own day and week) and the threshold on the validation rows (the
profile fitted on the training rows), to the alert budget; the result is stored in the checkpoint
(``metadata["incidents"]``). Serving (:class:`IncidentMonitor`) reads it back and scores every
:class:`~models.traffic.forecaster.StepResult`: observed values (imputed ones are not
observations) against the profile's value for the window, gated on its history.
Direction: speeds alert on drops, occupancies on rises, counts and flows both ways.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.exceptions import CheckpointError, ModelError
from models.traffic.calendar import local_wall_ms
from models.traffic.data import Split, TrafficSeries
from models.traffic.forecaster import StepResult
from models.traffic.graph import SensorNetwork
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
from models.traffic.inputs import profile_track
from models.traffic.profile import SeasonalProfile

__all__ = ["IncidentCalibration", "IncidentMonitor", "calibrate_incidents", "incident_direction", "seasonal_scores"]

logger = logging.getLogger(__name__)

_DIRECTIONS = {"speed": "below", "occupancy": "above", "count": "both", "flow": "both"}


def incident_direction(kind: str) -> str:
    """Which departures are incidents for readings of ``kind``."""
    return _DIRECTIONS.get(kind, "both")


@dataclass(frozen=True, eq=False)
class IncidentCalibration:
    """What training decided: the detector's settings, the residual scale, the validation count."""

    config: IncidentConfig
    scale: ResidualScale
    validation_incidents: int

    def to_metadata(self) -> dict[str, Any]:
        """Plain values and a tensor (what ``weights_only`` checkpoint loading accepts)."""
        return {**dataclasses.asdict(self.config), "slot_ms": self.scale.slot_ms,
                "scale": torch.from_numpy(np.ascontiguousarray(self.scale.table)),
                "validation_incidents": self.validation_incidents}

    @classmethod
    def from_metadata(cls, data: dict[str, Any], n_sensors: int) -> IncidentCalibration:
        """Inverse of :meth:`to_metadata`; CheckpointError when it does not fit."""
        try:
            fields = {f.name for f in dataclasses.fields(IncidentConfig)}
            config = IncidentConfig(**{k: v for k, v in data.items() if k in fields})
            table = data["scale"].numpy() if isinstance(data["scale"], torch.Tensor) else np.asarray(data["scale"])
            scale = ResidualScale(int(data["slot_ms"]), table.astype(np.float64))
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise CheckpointError(f"the checkpoint's incident calibration is unusable: {exc}") from exc
        if table.ndim != 2 or table.shape[1] != n_sensors:
            raise CheckpointError(f"the incident scale is for {table.shape} sensors, the network has {n_sensors}")
        return cls(config, scale, int(data.get("validation_incidents", 0)))


def seasonal_scores(series: TrafficSeries, part: slice, profile: SeasonalProfile, scale: ResidualScale,
                    config: IncidentConfig) -> tuple[np.ndarray, np.ndarray]:
    """z [windows, sensors] of ``part``'s rows against ``profile`` (history-gated), and their window ends."""
    rows = series.rows(part)
    local = rows.local_ms()
    observed = np.where(rows.mask, rows.speeds, np.nan)
    z = z_scores(observed, profile_track(rows, profile, 0), scale.at(local), profile.history(local, series.step_ms),
                 config.min_history, config.counts)
    return z, rows.row_ms() + series.step_ms


def calibrate_incidents(series: TrafficSeries, split: Split, profile: SeasonalProfile, *,
                        budget_per_sensor_week: float = 1.0) -> IncidentCalibration:
    """Scale from the training rows, threshold from the validation rows (module doc)."""
    if split.val is None:
        raise ModelError("calibrating incidents needs a validation part")
    counts = series.kind == "count"
    config = IncidentConfig(direction=incident_direction(series.kind), counts=counts,
                            budget_per_sensor_week=budget_per_sensor_week)
    train = series.rows(split.train)
    expected = profile.leave_one_out(train.speeds, train.mask, train.local_ms())
    scale = ResidualScale.fit(residuals(train.speeds, expected, counts), train.mask, train.local_ms(),
                              profile.slot_ms, minimum=1.0 if counts else 0.0)
    z, ends = seasonal_scores(series, split.val, profile, scale, config)
    threshold, raised = calibrate_threshold(z, ends, neighbour_lists(series.network.adjacency), config)
    return IncidentCalibration(dataclasses.replace(config, threshold=threshold), scale, raised)


class IncidentMonitor:
    """The incident detector of one network, fed one forecaster step at a time.

    ``timezone`` and ``step_ms`` must be the forecaster's (its profile slots are in local time).
    """

    def __init__(self, network: SensorNetwork, calibration: IncidentCalibration, *, timezone: str | None,
                 step_ms: int) -> None:
        self.calibration = calibration
        self.timezone, self.step_ms = timezone, step_ms
        self.detector = IncidentDetector(network.sensor_ids, network.adjacency, calibration.config, name=network.name)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], network: SensorNetwork) -> IncidentMonitor | None:
        """The monitor a checkpoint calibrated (None for a checkpoint without one)."""
        if not metadata.get("incidents"):
            return None
        calibration = IncidentCalibration.from_metadata(metadata["incidents"], network.n_sensors)
        return cls(network, calibration, timezone=metadata.get("timezone"),
                   step_ms=int(metadata.get("interval_ms") or 300_000))

    def update(self, result: StepResult) -> list[IncidentEvent]:
        """The incidents raised or resolved by this window (nothing without the profile's value)."""
        if result.seasonal is None:
            return []
        observed = np.where(result.imputed, np.nan, result.values)
        local = local_wall_ms(result.window_end_ms - self.step_ms, self.timezone)
        return self.detector.update(result.window_end_ms, observed, result.seasonal,
                                    self.calibration.scale.at(local), result.seasonal_history)

    def state_bytes(self) -> bytes:
        return self.detector.state_bytes()

    def load_state_bytes(self, data: bytes) -> None:
        self.detector.load_state_bytes(data)
