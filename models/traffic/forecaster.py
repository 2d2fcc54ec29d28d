"""TrafficForecaster: the graph-GRU stepped once per event-time window for every sensor of a network.

It gathers each window's readings (imputing missing sensors from the previous forecast, else the
last value, and flagging them), advances the hidden state, and serializes it as versioned bytes.
"""

from __future__ import annotations

import copy
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.exceptions import CheckpointError, ModelError
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND, STEP_MS, TrafficConfig, TrafficGRU, time_features

__all__ = ["TrafficForecaster", "StepResult", "load_traffic_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class StepResult:
    """What one :meth:`TrafficForecaster.advance` produced, in original units.

    ``forecasts``: [sensors, horizons]; ``values``: [sensors] the speeds fed to the model
    (observed or imputed); ``imputed``: [sensors] bool; ``expected``: [sensors] the one-step
    forecast made for this window at the previous window (NaN where none existed);
    ``stale_windows``: [sensors] windows since the sensor last reported (0 = reported now).
    """

    window_end_ms: int
    horizons: tuple[int, ...]
    forecasts: np.ndarray
    values: np.ndarray
    imputed: np.ndarray
    expected: np.ndarray
    stale_windows: np.ndarray
    filled_windows: int = 0  # windows without any report stepped through before this one
    state_reset: bool = False  # the gap was too long: the hidden state restarted from zeros
    unknown_sensors: tuple[str, ...] = ()


class TrafficForecaster:
    """Streaming wrapper around one network and one model (or persistence when model is None).

    Holds the hidden state [sensors, hidden], the last observed and last fed values [sensors]
    and the last forecasts [sensors, horizons]; :meth:`advance` takes one window's per-sensor
    mean speeds and returns forecasts in original units. Missing sensors are imputed with the
    previous one-step forecast (for at most ``max_forecast_fill`` windows in a row, so a silent
    sensor cannot drift on its own forecasts), else their last observed value, else the mean of
    this window's reports (else of all last values), and flagged: the model sees a 0 in its
    observed channel.
    Timestamps are window ends in epoch ms; ``timezone`` (an IANA name) converts them to the local
    time the time features expect, None meaning they already are local wall-clock times.
    """

    def __init__(self, network: SensorNetwork, model: TrafficGRU | None, *, version: str,
                 horizons: Sequence[int] | None = None, step_ms: int = STEP_MS,
                 max_gap_windows: int = 12, max_forecast_fill: int = 12,
                 timezone: str | None = None) -> None:
        if model is not None and model.config.n_sensors != network.n_sensors:
            raise ModelError(f"model has {model.config.n_sensors} sensors, network "
                             f"{network.name!r} has {network.n_sensors}")
        self.network = network
        self.model = model.eval() if model is not None else None
        self.version = version
        self.horizons = model.config.horizons if model is not None else tuple(horizons or (3, 6, 12))
        self.step_ms = step_ms
        self.max_gap_windows = max_gap_windows
        self.max_forecast_fill = max_forecast_fill
        self._zone = ZoneInfo(timezone) if timezone else None
        self._fallback = model.config.speed_scale / 2 if model is not None else 0.0
        self.reset()

    @classmethod
    def persistence(cls, network: SensorNetwork, *, horizons: Sequence[int] = (3, 6, 12),
                    **options: Any) -> TrafficForecaster:
        """Forecast every horizon as the current (possibly imputed) value; version "persistence"."""
        return cls(network, None, version="persistence", horizons=horizons, **options)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, network: SensorNetwork, *,
                        fallback_to_persistence: bool = False, sparse: bool | None = None,
                        **options: Any) -> TrafficForecaster:
        """Load a trained model for ``network`` (same sensor ids, same order).

        With ``fallback_to_persistence`` a missing file gives a persistence forecaster (logged);
        a corrupt or mismatched file is always a CheckpointError.
        """
        if fallback_to_persistence and not Path(path).is_file():
            logger.warning("no traffic checkpoint at %s; serving persistence forecasts", path)
            return cls.persistence(network, **options)
        model, metadata = load_traffic_model(path, network, sparse=sparse)
        return cls(network, model, version=str(metadata["version"]), **options)

    @property
    def hidden_dim(self) -> int:
        """Hidden units per sensor (0 for persistence)."""
        return self.model.config.hidden_dim if self.model is not None else 0

    @property
    def last_window_end_ms(self) -> int | None:
        """End of the last window advanced over, None before the first."""
        return self._last_ms

    def reset(self) -> None:
        """Forget everything: zero hidden state, no last values, no forecasts."""
        n, nh = self.network.n_sensors, len(self.horizons)
        self._h = np.zeros((n, self.hidden_dim), dtype=np.float32)
        self._last_values = np.full(n, np.nan, dtype=np.float32)
        self._last_input = np.full(n, np.nan, dtype=np.float32)
        self._last_forecast = np.full((n, nh), np.nan, dtype=np.float32)
        self._stale = np.zeros(n, dtype=np.uint32)
        self._last_ms: int | None = None

    def advance(self, window_end_ms: int, observed: Mapping[str, float]) -> StepResult:
        """Step over the window ending at ``window_end_ms`` with ``observed`` {sensor id: speed}.

        Windows must arrive in order (ModelError otherwise; check ``last_window_end_ms``).
        Windows skipped entirely are stepped through with every sensor imputed, up to
        ``max_gap_windows``; after a longer gap the hidden state restarts from zeros.
        Unknown sensor ids and non-finite values are ignored and reported, not raised.
        """
        window_end_ms = int(window_end_ms)
        if self._last_ms is not None and window_end_ms <= self._last_ms:
            raise ModelError(f"window ending {window_end_ms} is not after the last one "
                             f"({self._last_ms}) of network {self.network.name!r}")
        filled, reset = self._bridge_gap(window_end_ms)
        values, reported, unknown = self._gather(observed)
        result = self._advance_one(window_end_ms, values, reported)
        return replace(result, filled_windows=filled, state_reset=reset, unknown_sensors=unknown)

    def _bridge_gap(self, window_end_ms: int) -> tuple[int, bool]:
        """Step through windows nobody reported; reset the state if there are too many."""
        if self._last_ms is None:
            return 0, False
        missing = (window_end_ms - self._last_ms) // self.step_ms - 1
        if missing <= 0:
            return 0, False
        if missing > self.max_gap_windows:
            self._h = np.zeros_like(self._h)
            self._last_forecast = np.full_like(self._last_forecast, np.nan)
            return 0, True
        nothing = np.full(self.network.n_sensors, np.nan, dtype=np.float32)
        for _ in range(missing):
            self._advance_one(self._last_ms + self.step_ms, nothing, np.isfinite(nothing))
        return missing, False

    def _gather(self, observed: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Values [sensors] (NaN where missing), reported mask [sensors], unknown ids."""
        values = np.full(self.network.n_sensors, np.nan, dtype=np.float32)
        unknown = []
        for sensor_id, value in observed.items():
            index = self.network.get_index(str(sensor_id))
            if index is None:
                unknown.append(str(sensor_id))
                continue
            try:
                values[index] = float(value)
            except (TypeError, ValueError):
                continue
        return values, np.isfinite(values), tuple(unknown)

    def _advance_one(self, window_end_ms: int, values: np.ndarray,
                     reported: np.ndarray) -> StepResult:
        """Impute, run one model step, update the state."""
        expected = self._one_step_forecast()
        filled = self._impute(values, reported, expected)
        forecasts = self._predict(window_end_ms, filled, reported)
        self._last_values = np.where(reported, values, self._last_values).astype(np.float32)
        self._last_input, self._last_forecast = filled, forecasts
        self._stale = np.where(reported, 0, self._stale + 1).astype(np.uint32)
        self._last_ms = window_end_ms
        return StepResult(window_end_ms=window_end_ms, horizons=self.horizons,
                          forecasts=forecasts, values=filled, imputed=~reported,
                          expected=expected, stale_windows=self._stale.copy())

    def _one_step_forecast(self) -> np.ndarray:
        """Forecast for the coming window; interpolated from the first horizon if 1 is absent."""
        first = min(self.horizons)
        column = self._last_forecast[:, self.horizons.index(first)]
        if first == 1:
            return column.copy()
        return self._last_input + (column - self._last_input) / first

    def _impute(self, values: np.ndarray, reported: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """Fill missing values: one-step forecast, else last observed value, else a mean."""
        recent = self._stale < self.max_forecast_fill
        fill = np.where(np.isfinite(expected) & recent, expected, self._last_values)
        fill = np.where(np.isfinite(fill), fill, self._network_mean(values, reported))
        return np.where(reported, values, fill).astype(np.float32)

    def _network_mean(self, values: np.ndarray, reported: np.ndarray) -> float:
        """Mean of this window's reports, else of all last values, else a fallback."""
        if reported.any():
            return float(values[reported].mean())
        known = np.isfinite(self._last_values)
        return float(self._last_values[known].mean()) if known.any() else self._fallback

    def _predict(self, window_end_ms: int, filled: np.ndarray, reported: np.ndarray) -> np.ndarray:
        """One model step on the filled values; [sensors, horizons] float32, never negative."""
        if self.model is None:
            return np.repeat(filled[:, None], len(self.horizons), axis=1)
        device = self.model.support.device
        features = None
        if self.model.config.use_time_features:
            features = torch.from_numpy(self._time_features(window_end_ms))[None].to(device)
        with torch.inference_mode():
            prediction, h = self.model.step(
                torch.from_numpy(filled)[None].to(device), features,
                torch.from_numpy(self._h)[None].to(device),
                observed_t=torch.from_numpy(reported.astype(np.float32))[None].to(device))
        self._h = h[0].cpu().numpy()
        return np.maximum(prediction[0].cpu().numpy(), 0.0).astype(np.float32)

    def _time_features(self, window_end_ms: int) -> np.ndarray:
        """[4] features of the window's start in local time (rows of the data are window starts)."""
        start_ms = window_end_ms - self.step_ms
        if self._zone is not None:
            moment = datetime.fromtimestamp(start_ms / 1000, tz=self._zone)
            start_ms += int(moment.utcoffset().total_seconds() * 1000)
        return time_features(start_ms)

    def state_bytes(self) -> bytes:
        """Compact versioned encoding of the running state (float32 arrays behind a header)."""
        version = self.version.encode()
        header = _STATE_HEADER.pack(_STATE_MAGIC, _STATE_FORMAT, len(version),
                                    self.network.n_sensors, self.hidden_dim, len(self.horizons),
                                    -1 if self._last_ms is None else self._last_ms)
        horizons = np.asarray(self.horizons, dtype="<u2").tobytes()
        arrays = (self._h, self._last_values, self._last_input, self._last_forecast)
        body = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
        return header + version + horizons + body + self._stale.astype("<u4").tobytes()

    def from_state_bytes(self, data: bytes) -> TrafficForecaster:
        """A forecaster sharing this one's model and network, with the state in ``data``.

        State written by another model version keeps the last values but restarts the hidden
        state and forecasts (logged). Bytes that are not such a state, or that were written for
        a network of another size, are a ModelError.
        """
        clone = copy.copy(self)
        clone.reset()
        clone._load_state(bytes(data))
        return clone

    def _load_state(self, data: bytes) -> None:
        """Parse :meth:`state_bytes` output into this (freshly reset) forecaster."""
        fields = _unpack_state_header(data)
        magic, fmt, version_len, n, hidden, nh, last_ms = fields
        if n != self.network.n_sensors:
            raise ModelError(f"state holds {n} sensors, network {self.network.name!r} has "
                             f"{self.network.n_sensors}")
        offset = _STATE_HEADER.size
        version = data[offset:offset + version_len].decode(errors="replace")
        offset += version_len
        sizes = [nh * 2, n * hidden * 4, n * 4, n * 4, n * nh * 4, n * 4]
        if len(data) != offset + sum(sizes):
            raise ModelError(f"state bytes have length {len(data)}, expected {offset + sum(sizes)}")
        parts, start = [], offset
        for size in sizes:
            parts.append(data[start:start + size])
            start += size
        horizons = tuple(int(v) for v in np.frombuffer(parts[0], dtype="<u2"))
        self._last_values = np.frombuffer(parts[2], dtype="<f4").copy()
        self._last_input = np.frombuffer(parts[3], dtype="<f4").copy()
        self._stale = np.frombuffer(parts[5], dtype="<u4").copy()
        self._last_ms = None if last_ms < 0 else last_ms
        if version != self.version or hidden != self.hidden_dim or horizons != self.horizons:
            logger.warning("network %s: state from model %s, serving %s; hidden state restarts",
                           self.network.name, version, self.version)
            return
        self._h = np.frombuffer(parts[1], dtype="<f4").reshape(n, hidden).copy()
        self._last_forecast = np.frombuffer(parts[4], dtype="<f4").reshape(n, nh).copy()


def load_traffic_model(path: str | os.PathLike, network: SensorNetwork, *,
                       sparse: bool | None = None) -> tuple[TrafficGRU, dict[str, Any]]:
    """Model (in eval mode) and metadata of a traffic checkpoint trained on ``network``'s sensors."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND)
    metadata = payload["metadata"]
    trained_ids = tuple(metadata.get("sensor_ids", ()))
    if trained_ids != network.sensor_ids:
        raise CheckpointError(f"checkpoint {path} was trained on {len(trained_ids)} sensors of "
                              f"network {metadata.get('network')!r}; network {network.name!r} "
                              f"({network.n_sensors} sensors) has other ids or another order")
    if metadata.get("network_fingerprint") not in (None, network.fingerprint):
        logger.warning("checkpoint %s was trained on another adjacency of network %s",
                       path, network.name)
    try:
        model = TrafficGRU(TrafficConfig.from_dict(dict(metadata["config"])), network.adjacency,
                           sparse=sparse)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ModelError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit a TrafficGRU: {exc}") from exc
    return model.eval(), metadata


_STATE_MAGIC = b"TGFS"
_STATE_FORMAT = 1
# magic, format, version length, sensors, hidden, horizons, last window end ms (-1: none)
_STATE_HEADER = struct.Struct("<4sBHIIHq")


def _unpack_state_header(data: bytes) -> tuple[Any, ...]:
    """Header fields of a state encoding; ModelError if it is not one this code reads."""
    if len(data) < _STATE_HEADER.size:
        raise ModelError(f"state bytes too short ({len(data)} bytes)")
    fields = _STATE_HEADER.unpack_from(data)
    if fields[0] != _STATE_MAGIC:
        raise ModelError("bytes are not a traffic forecaster state")
    if fields[1] != _STATE_FORMAT:
        raise ModelError(f"traffic state format {fields[1]}, this version reads {_STATE_FORMAT}")
    return fields
