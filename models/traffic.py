"""Traffic graph-GRU (T-GCN family) and its streaming wrapper, TrafficForecaster.

Per step each sensor receives its speed (divided by ``speed_scale``) and an optional 0/1
observed flag (0 where the caller imputed the value); optional context shared by all sensors
(time-of-day and day-of-week sin/cos) and a learned per-sensor embedding add to the gates. The
cell mixes neighbours through the renormalized adjacency ``D^-1/2 (A+I) D^-1/2`` (T-GCN's graph
convolution, applied to the input and to the hidden state, each with a self term beside it), and
the head predicts, for every horizon, the change from the current speed, so an untrained model
starts as persistence.

``forward`` runs a sequence for training; ``step`` advances one window for streaming; both share
the same cell, so chaining ``step`` reproduces ``forward``.
"""

from __future__ import annotations

import copy
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import torch
from torch import nn

from models.checkpoint import load_checkpoint
from models.exceptions import CheckpointError, ModelError
from models.graph import SensorNetwork, normalized_adjacency

__all__ = ["TrafficConfig", "TrafficGRU", "TrafficForecaster", "StepResult", "load_traffic_model",
           "time_features", "N_TIME_FEATURES", "STEP_MS", "CHECKPOINT_KIND"]

logger = logging.getLogger(__name__)

N_TIME_FEATURES = 4  # sin/cos of time of day, sin/cos of day of week
STEP_MS = 300_000  # one window: 5 minutes
CHECKPOINT_KIND = "traffic-gru"
_DAY_MS = 86_400_000
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_SPARSE_MIN_SENSORS = 1_000
_SPARSE_MAX_DENSITY = 0.05


def time_features(local_ms: np.ndarray | int) -> np.ndarray:
    """Time-of-day and day-of-week encodings, [..., 4] float32 (sin/cos day, sin/cos week).

    ``local_ms``: [...] wall-clock milliseconds since 1970-01-01 in the network's local time
    (a local timestamp read as if it were UTC).
    """
    ms = np.asarray(local_ms, dtype=np.int64)
    day_fraction = (ms % _DAY_MS) / _DAY_MS
    week_fraction = (((ms // _DAY_MS) + _EPOCH_WEEKDAY) % 7 + day_fraction) / 7
    day_angle, week_angle = 2 * np.pi * day_fraction, 2 * np.pi * week_fraction
    features = np.stack([np.sin(day_angle), np.cos(day_angle),
                         np.sin(week_angle), np.cos(week_angle)], axis=-1)
    return features.astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class TrafficConfig:
    """Shape and inputs of a :class:`TrafficGRU`; plain values only, saved in checkpoints."""

    n_sensors: int
    hidden_dim: int = 64
    horizons: tuple[int, ...] = (3, 6, 12)  # steps ahead; 5-minute steps: 15/30/60 min
    use_time_features: bool = True
    use_day_of_week: bool = True  # with time features: all 4, else time of day only
    use_observed_mask: bool = True
    speed_scale: float = 70.0  # speeds are divided by this before entering the cell
    step_minutes: int = 5
    node_embedding_dim: int = 0  # learned per-sensor vector feeding the gates (0: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        problems = []
        if self.n_sensors < 1:
            problems.append(f"n_sensors={self.n_sensors} (need >= 1)")
        if self.node_embedding_dim < 0:
            problems.append(f"node_embedding_dim={self.node_embedding_dim} (need >= 0)")
        if self.hidden_dim < 1:
            problems.append(f"hidden_dim={self.hidden_dim} (need >= 1)")
        if not self.horizons or min(self.horizons) < 1 or len(set(self.horizons)) != len(self.horizons):
            problems.append(f"horizons={self.horizons} (need distinct steps >= 1)")
        if not self.speed_scale > 0:
            problems.append(f"speed_scale={self.speed_scale} (need > 0)")
        if problems:
            raise ModelError("invalid TrafficConfig: " + ", ".join(problems))

    @property
    def n_time_inputs(self) -> int:
        """Time-feature columns the model reads (the first of :func:`time_features`' 4)."""
        if not self.use_time_features:
            return 0
        return N_TIME_FEATURES if self.use_day_of_week else 2

    @property
    def n_node_inputs(self) -> int:
        """Per-sensor input channels: speed, plus the observed flag when used."""
        return 1 + int(self.use_observed_mask)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoint metadata (horizons as a list)."""
        values = asdict(self)
        values["horizons"] = list(self.horizons)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrafficConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ModelError."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ModelError(f"TrafficConfig has no fields {sorted(unknown)}")
        return cls(**values)


class TrafficGRU(nn.Module):
    """Graph-convolutional GRU over a fixed sensor network with a multi-horizon head.

    ``adjacency``: [sensors, sensors] raw weights (normalized here). ``sparse``: keep the
    normalized adjacency as a sparse COO tensor; None picks sparse for big, sparse graphs.
    The adjacency is a non-persistent buffer: checkpoints hold weights, the network is given.
    """

    def __init__(self, config: TrafficConfig, adjacency: np.ndarray | torch.Tensor, *,
                 sparse: bool | None = None) -> None:
        super().__init__()
        self.config = config
        support = torch.as_tensor(normalized_adjacency(np.asarray(adjacency)))
        if support.shape != (config.n_sensors, config.n_sensors):
            raise ModelError(f"adjacency is {tuple(support.shape)}, config has "
                             f"{config.n_sensors} sensors")
        self.sparse = _choose_sparse(support) if sparse is None else sparse
        self.register_buffer("support", support.to_sparse().coalesce() if self.sparse else support,
                             persistent=False)
        hidden, n_in = config.hidden_dim, config.n_node_inputs
        self.input_gates = nn.Linear(2 * n_in, 3 * hidden)
        self.time_gates = (nn.Linear(config.n_time_inputs, 3 * hidden, bias=False)
                           if config.use_time_features else None)
        self.hidden_gates = nn.Linear(2 * hidden, 3 * hidden)
        self.node_embedding = (nn.Parameter(0.1 * torch.randn(config.n_sensors, config.node_embedding_dim))
                               if config.node_embedding_dim else None)
        self.node_gates = (nn.Linear(config.node_embedding_dim, 3 * hidden, bias=False)
                           if config.node_embedding_dim else None)
        self.head = nn.Linear(hidden, len(config.horizons))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def initial_hidden(self, batch: int) -> torch.Tensor:
        """Zero hidden state [batch, sensors, hidden] on the model's device."""
        return self.support.new_zeros(batch, self.config.n_sensors, self.config.hidden_dim,
                                      layout=torch.strided)

    def forward(self, speeds: torch.Tensor, time_features: torch.Tensor | None = None,
                h: torch.Tensor | None = None, *,
                observed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a sequence.

        ``speeds``: [batch, time, sensors] in original units; ``time_features``:
        [batch, time, 4] (required when the config uses them); ``h``: [batch, sensors, hidden]
        or None for zeros; ``observed``: [batch, time, sensors] 0/1, None meaning all observed.
        Returns predictions [batch, time, sensors, horizons] (original units; step ``t``
        forecasts ``t + horizon``) and the last hidden state [batch, sensors, hidden].
        """
        self._check_speeds(speeds, dims=3)
        outputs = []
        for t in range(speeds.shape[1]):
            prediction, h = self.step(speeds[:, t],
                                      None if time_features is None else time_features[:, t], h,
                                      observed_t=None if observed is None else observed[:, t])
            outputs.append(prediction)
        return torch.stack(outputs, dim=1), h

    def step(self, speeds_t: torch.Tensor, time_features_t: torch.Tensor | None = None,
             h: torch.Tensor | None = None, *,
             observed_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one window.

        ``speeds_t``: [batch, sensors]; ``time_features_t``: [batch, 4]; ``h``:
        [batch, sensors, hidden] or None; ``observed_t``: [batch, sensors] 0/1 or None.
        Returns predictions [batch, sensors, horizons] and the new h [batch, sensors, hidden].
        """
        self._check_speeds(speeds_t, dims=2)
        if h is None:
            h = self.initial_hidden(speeds_t.shape[0])
        gx = self._input_projection(speeds_t, time_features_t, observed_t)
        gh = self.hidden_gates(torch.cat([h, self._graph_conv(h)], dim=-1))
        r = self._reset_gate(gx, gh)
        z = self._update_gate(gx, gh)
        n = self._candidate_state(gx, gh, r)
        h = self._hidden_state(z, n, h)
        return self._predict(speeds_t, h), h

    def _input_projection(self, speeds_t: torch.Tensor, time_features_t: torch.Tensor | None,
                          observed_t: torch.Tensor | None) -> torch.Tensor:
        """Gate pre-activations from the inputs, [batch, sensors, 3 * hidden]."""
        x = (speeds_t / self.config.speed_scale).unsqueeze(-1)
        if self.config.use_observed_mask:
            mask = torch.ones_like(speeds_t) if observed_t is None else observed_t.to(speeds_t.dtype)
            x = torch.cat([x, mask.unsqueeze(-1)], dim=-1)
        gx = self.input_gates(torch.cat([x, self._graph_conv(x)], dim=-1))
        return gx + self._context_projection(time_features_t)

    def _context_projection(self, time_features_t: torch.Tensor | None) -> torch.Tensor | float:
        """Gate terms shared over the batch or the sensors: time of day/week, sensor embedding."""
        context: torch.Tensor | float = 0.0
        if self.time_gates is not None:
            if time_features_t is None:
                raise ModelError("this TrafficGRU uses time features; pass time_features")
            context = self.time_gates(time_features_t[..., :self.config.n_time_inputs]).unsqueeze(1)
        if self.node_gates is not None:
            context = context + self.node_gates(self.node_embedding)
        return context

    def _graph_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Neighbour mixing ``Â x`` of [batch, sensors, features] as one (sparse) matmul."""
        batch, sensors, features = x.shape
        flat = x.transpose(0, 1).reshape(sensors, batch * features)
        mixed = self.support @ flat
        return mixed.reshape(sensors, batch, features).transpose(0, 1)

    def _reset_gate(self, gx: torch.Tensor, gh: torch.Tensor) -> torch.Tensor:
        """r = sigmoid(W_r x + U_r h)."""
        hidden = self.config.hidden_dim
        return torch.sigmoid(gx[..., :hidden] + gh[..., :hidden])

    def _update_gate(self, gx: torch.Tensor, gh: torch.Tensor) -> torch.Tensor:
        """z = sigmoid(W_z x + U_z h)."""
        hidden = self.config.hidden_dim
        return torch.sigmoid(gx[..., hidden:2 * hidden] + gh[..., hidden:2 * hidden])

    def _candidate_state(self, gx: torch.Tensor, gh: torch.Tensor,
                         r: torch.Tensor) -> torch.Tensor:
        """n = tanh(W_n x + r * U_n h)."""
        hidden = self.config.hidden_dim
        return torch.tanh(gx[..., 2 * hidden:] + r * gh[..., 2 * hidden:])

    def _hidden_state(self, z: torch.Tensor, n: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h' = z * h + (1 - z) * n."""
        return z * h + (1 - z) * n

    def _predict(self, speeds_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Current speed plus a per-horizon change, [batch, sensors, horizons]."""
        return speeds_t.unsqueeze(-1) + self.config.speed_scale * self.head(h)

    def _check_speeds(self, speeds: torch.Tensor, *, dims: int) -> None:
        """ModelError unless ``speeds`` has ``dims`` dims and sensors last."""
        if speeds.dim() != dims or speeds.shape[-1] != self.config.n_sensors:
            expected = "[batch, time, sensors]" if dims == 3 else "[batch, sensors]"
            raise ModelError(f"speeds must be {expected} with {self.config.n_sensors} sensors, "
                             f"got shape {tuple(speeds.shape)}")


def _choose_sparse(support: torch.Tensor) -> bool:
    """Sparse only where it pays: many sensors and few edges."""
    n = support.shape[0]
    density = float((support != 0).sum()) / (n * n)
    return n >= _SPARSE_MIN_SENSORS and density <= _SPARSE_MAX_DENSITY


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
