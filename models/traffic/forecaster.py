"""TrafficForecaster: the graph-GRU stepped once per event-time window for every sensor of a network.

It gathers each window's readings (imputing missing sensors from the previous forecast, else the
last value, and flagging them), advances the hidden state, and serializes it as versioned bytes.

Serving never does worse than the simple baselines on validation: a checkpoint records, per
horizon, the model's and the baselines' validation errors and the source chosen from them
(:mod:`models.traffic.scoring`); at a horizon where a baseline won, the forecaster serves that
baseline (persistence, the hour-of-day or hour-of-week average of its seasonal profile, or the
mean of the last ``input_steps`` windows) and says so in ``StepResult.sources`` and in its
``version`` (``tgru-<hash>+hour-of-week@45-60m``). The profile is updated online with every
observed window (:func:`models.traffic.profile.ewma_update`).
"""

from __future__ import annotations

import copy
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.checkpoint import load_checkpoint
from models.exceptions import CheckpointError, ModelError
from models.traffic.calendar import check_timezone, local_wall_ms
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND, STEP_MS, TrafficConfig, TrafficGRU, time_features
from models.traffic.profile import DEFAULT_ALPHA, SeasonalProfile
from models.traffic.scoring import BASELINE_SOURCES, MODEL

__all__ = ["TrafficForecaster", "StepResult", "load_traffic_model", "served_version", "checkpoint_problem"]

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
    sources: tuple[str, ...] = ()  # per horizon: "model" or the baseline served there
    seasonal: np.ndarray | None = None  # [sensors] the profile's value for this window (before it folds in)
    seasonal_history: np.ndarray | None = None  # [sensors] periods (days or weeks) of history behind it


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
    time the time features and the profile slots expect, None meaning they already are local
    wall-clock times.

    ``profile``: the seasonal profile (required by a model that reads it, and by the hour-of-day /
    hour-of-week baselines), updated online with weight ``profile_alpha`` (0: frozen).
    ``sources``: per horizon, ``model`` or the baseline to serve there (default: the model).
    """

    def __init__(self, network: SensorNetwork, model: TrafficGRU | None, *, version: str,
                 horizons: Sequence[int] | None = None, step_ms: int = STEP_MS,
                 max_gap_windows: int = 12, max_forecast_fill: int = 12,
                 timezone: str | None = None, profile: SeasonalProfile | None = None,
                 sources: Sequence[str] | None = None, input_steps: int = 12,
                 profile_alpha: float = DEFAULT_ALPHA, kind: str = "speed", unit: str = "") -> None:
        if model is not None and model.config.n_sensors != network.n_sensors:
            raise ModelError(f"model has {model.config.n_sensors} sensors, network "
                             f"{network.name!r} has {network.n_sensors}")
        self.network = network
        self.model = model.eval() if model is not None else None
        self.base_version = version
        self.horizons = model.config.horizons if model is not None else tuple(horizons or (3, 6, 12))
        self.step_ms = step_ms
        self.max_gap_windows = max_gap_windows
        self.max_forecast_fill = max_forecast_fill
        self.timezone = check_timezone(timezone)
        self.profile = profile.copy() if profile is not None else None
        self.profile_alpha = profile_alpha
        self.input_steps = input_steps
        self.kind, self.unit = kind, unit  # what the values measure (from the checkpoint)
        self.sources = self._check_sources(sources)
        self.version = served_version(version, self.sources, self.horizons, step_ms) if model is not None else version
        self._fallback = model.config.speed_scale / 2 if model is not None else 0.0
        self.reset()

    def _check_sources(self, sources: Sequence[str] | None) -> tuple[str, ...]:
        """One known source per horizon; the profile there when a source or the model needs it."""
        if self.model is None:
            return tuple("persistence" for _ in self.horizons)
        chosen = tuple(sources) if sources is not None else tuple(MODEL for _ in self.horizons)
        if len(chosen) != len(self.horizons) or not set(chosen) <= {MODEL, *BASELINE_SOURCES}:
            raise ModelError(f"sources must name one of {(MODEL, *BASELINE_SOURCES)} per horizon "
                             f"({len(self.horizons)}), got {list(chosen)}")
        needs_profile = self.model.config.use_profile or {"hour-of-day", "hour-of-week"} & set(chosen)
        if needs_profile and (self.profile is None or self.profile.n_sensors != self.network.n_sensors):
            raise ModelError("this model or its served baselines need the seasonal profile of the network's "
                             f"{self.network.n_sensors} sensors; pass profile (from the checkpoint)")
        return chosen

    @classmethod
    def persistence(cls, network: SensorNetwork, *, horizons: Sequence[int] = (3, 6, 12),
                    **options: Any) -> TrafficForecaster:
        """Forecast every horizon as the current (possibly imputed) value; version "persistence"."""
        return cls(network, None, version="persistence", horizons=horizons, **options)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], network: SensorNetwork, *,
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
        problem = checkpoint_problem(metadata, network, options.get("step_ms"))
        if problem:
            raise CheckpointError(f"checkpoint {path}: {problem}")
        options.setdefault("step_ms", int(metadata.get("interval_ms") or STEP_MS))
        options.setdefault("timezone", metadata.get("timezone"))
        options.setdefault("input_steps", int(metadata.get("input_steps") or 12))
        options.setdefault("kind", str(metadata.get("kind") or "speed"))
        options.setdefault("unit", str(metadata.get("unit") or ""))
        if metadata.get("profile") is not None:
            options.setdefault("profile", _profile_from_metadata(metadata["profile"], network.n_sensors))
        if metadata.get("sources"):
            options.setdefault("sources", list(metadata["sources"]))
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
        # Ring of the last fed values, kept only when the window mean is served somewhere.
        ring = self.input_steps if "window-mean" in self.sources else 0
        self._recent = np.full((ring, n), np.nan, dtype=np.float32)
        self._recent_count = 0
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
        self._remember(filled)
        forecasts = self._serve(window_end_ms, filled, self._predict(window_end_ms, filled, reported))
        seasonal = history = None
        if self.profile is not None:
            local = self._row_local_ms(window_end_ms)
            seasonal, history = self.profile.expected(local), self.profile.history(local, self.step_ms)
            if self.profile_alpha > 0:
                self.profile.observe(int(local), values, reported, self.profile_alpha)
        self._last_values = np.where(reported, values, self._last_values).astype(np.float32)
        self._last_input, self._last_forecast = filled, forecasts
        self._stale = np.where(reported, 0, self._stale + 1).astype(np.uint32)
        self._last_ms = window_end_ms
        return StepResult(window_end_ms=window_end_ms, horizons=self.horizons,
                          forecasts=forecasts, values=filled, imputed=~reported,
                          expected=expected, stale_windows=self._stale.copy(), sources=self.sources,
                          seasonal=seasonal, seasonal_history=history)

    def _remember(self, filled: np.ndarray) -> None:
        """Keep the last ``input_steps`` fed values (the window-mean baseline's inputs)."""
        if len(self._recent):
            self._recent[self._recent_count % len(self._recent)] = filled
            self._recent_count += 1

    def _serve(self, window_end_ms: int, filled: np.ndarray,
               predicted: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The model's forecasts [sensors, horizons] with each baseline horizon replaced by its baseline."""
        if all(source == MODEL for source in self.sources):
            return predicted
        served = predicted.copy()
        for column, source in enumerate(self.sources):
            if source != MODEL:
                served[:, column] = self._baseline(source, window_end_ms, filled, self.horizons[column])
        return np.maximum(served, 0.0).astype(np.float32)

    def _baseline(self, source: str, window_end_ms: int, filled: np.ndarray, steps: int) -> np.ndarray:
        """[sensors] one baseline's forecast ``steps`` windows after this one."""
        if source == "persistence":
            return filled
        if source == "window-mean":
            seen = min(self._recent_count, len(self._recent))
            return self._recent[:seen].mean(axis=0) if seen else filled
        assert self.profile is not None  # checked in __init__
        target = self._row_local_ms(window_end_ms + steps * self.step_ms)
        if source == "hour-of-day":
            return self.profile.hour_of_day(target)
        return self.profile.hour_of_week(target)

    def _row_local_ms(self, window_end_ms: int) -> np.ndarray:
        """Local wall-clock start of the window ending at ``window_end_ms`` (the data's row time)."""
        return local_wall_ms(window_end_ms - self.step_ms, self.timezone)

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

    def _predict(self, window_end_ms: int, filled: npt.NDArray[np.float32],
                 reported: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        """One model step on the filled values; [sensors, horizons] float32, never negative."""
        if self.model is None:
            return np.repeat(filled[:, None], len(self.horizons), axis=1)
        device = self.model.support.device
        features = None
        if self.model.config.use_time_features:
            features = torch.from_numpy(self._time_features(window_end_ms))[None].to(device)
        profile_t, profile_ahead = self._profile_inputs(window_end_ms)
        with torch.inference_mode():
            prediction, h = self.model.step(
                torch.from_numpy(filled)[None].to(device), features,
                torch.from_numpy(self._h)[None].to(device),
                observed_t=torch.from_numpy(reported.astype(np.float32))[None].to(device),
                profile_t=None if profile_t is None else profile_t.to(device),
                profile_ahead_t=None if profile_ahead is None else profile_ahead.to(device))
        self._h = h[0].cpu().numpy()
        forecast: npt.NDArray[np.float32] = prediction[0].cpu().numpy()
        return np.maximum(forecast, 0.0).astype(np.float32)

    def _profile_inputs(self, window_end_ms: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The profile now [1, sensors] and at each horizon [1, sensors, horizons], for a model that reads it."""
        if self.model is None or not self.model.config.use_profile or self.profile is None:
            return None, None
        steps = np.concatenate([[0], np.asarray(self.horizons)])
        local = local_wall_ms(window_end_ms - self.step_ms + steps * self.step_ms, self.timezone)
        values = self.profile.expected(local).astype(np.float32)  # [1 + horizons, sensors]
        return torch.from_numpy(values[:1]), torch.from_numpy(values[1:].T.copy())[None]

    def _time_features(self, window_end_ms: int) -> np.ndarray:
        """[4] features of the window's start in local time (rows of the data are window starts)."""
        return time_features(self._row_local_ms(window_end_ms))

    def state_bytes(self) -> bytes:
        """Compact versioned encoding of the running state (float32 arrays behind a header)."""
        version = self.version.encode()
        header = _STATE_HEADER.pack(_STATE_MAGIC, _STATE_FORMAT, len(version),
                                    self.network.n_sensors, self.hidden_dim, len(self.horizons),
                                    -1 if self._last_ms is None else self._last_ms)
        horizons = np.asarray(self.horizons, dtype="<u2").tobytes()
        arrays = (self._h, self._last_values, self._last_input, self._last_forecast)
        body = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
        recent = _RING_HEADER.pack(len(self._recent), self._recent_count) + self._recent.astype("<f4").tobytes()
        return header + version + horizons + body + self._stale.astype("<u4").tobytes() + recent

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
        if fmt >= 2:
            self._load_recent(data, offset + sum(sizes), n)
        elif len(data) != offset + sum(sizes):
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


    def _load_recent(self, data: bytes, offset: int, n: int) -> None:
        """The ring of recent fed values (format 2), kept when it has this forecaster's length."""
        if len(data) < offset + _RING_HEADER.size:
            raise ModelError(f"state bytes have length {len(data)}, too short for their recent values")
        steps, count = _RING_HEADER.unpack_from(data, offset)
        if len(data) != offset + _RING_HEADER.size + steps * n * 4:
            raise ModelError(f"state bytes have length {len(data)}, expected "
                             f"{offset + _RING_HEADER.size + steps * n * 4}")
        if steps == len(self._recent):
            start = offset + _RING_HEADER.size
            self._recent = np.frombuffer(data[start:], dtype="<f4").reshape(steps, n).copy()
            self._recent_count = count

    def profile_state_bytes(self) -> bytes:
        """The online-updated profile as bytes (large: persist it less often than :meth:`state_bytes`)."""
        if self.profile is None:
            return b""
        arrays = [np.ascontiguousarray(getattr(self.profile, name), dtype="<f4").tobytes()
                  for name in ("day_mean", "day_count", "week_mean", "week_count")]
        return _PROFILE_MAGIC + b"".join(arrays)

    def load_profile_state_bytes(self, data: bytes) -> None:
        """Restore :meth:`profile_state_bytes`; ModelError when they do not fit this profile."""
        if self.profile is None or not data:
            return
        names = ("day_mean", "day_count", "week_mean", "week_count")
        shapes = [getattr(self.profile, name).shape for name in names]
        expected = len(_PROFILE_MAGIC) + sum(int(np.prod(shape)) * 4 for shape in shapes)
        if not data.startswith(_PROFILE_MAGIC) or len(data) != expected:
            raise ModelError(f"profile state of {len(data)} bytes does not fit this profile ({expected} bytes)")
        offset = len(_PROFILE_MAGIC)
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape)) * 4
            values = np.frombuffer(data[offset:offset + size], dtype="<f4").reshape(shape)
            setattr(self.profile, name, values.astype(np.float64))
            offset += size


def served_version(version: str, sources: Sequence[str], horizons: Sequence[int], step_ms: int) -> str:
    """``version`` plus ``+<baseline>@<minutes>m`` for each baseline served at some horizons
    (consecutive horizons as a range), e.g. ``tgru-1a2b+hour-of-week@45-60m``."""
    suffix = []
    for source in dict.fromkeys(s for s in sources if s != MODEL):
        minutes = [h * step_ms // 60_000 for h, s in zip(horizons, sources, strict=True) if s == source]
        suffix.append(f"+{source}@{_ranges(minutes)}m")
    return version + "".join(suffix)


def _ranges(numbers: list[int]) -> str:
    """``[5, 10, 15, 30]`` in steps of the first gap -> ``"5-15,30"``."""
    parts: list[list[int]] = []
    step = min((b - a for a, b in zip(numbers, numbers[1:], strict=False)), default=1)
    for number in numbers:
        if parts and number - parts[-1][-1] == step:
            parts[-1].append(number)
        else:
            parts.append([number])
    return ",".join(f"{p[0]}-{p[-1]}" if len(p) > 2 else ",".join(map(str, p)) for p in parts)


def checkpoint_problem(metadata: dict[str, Any], network: SensorNetwork, step_ms: int | None = None) -> str | None:
    """Why a traffic checkpoint does not fit ``network`` (and windows of ``step_ms``), or None.

    The check a worker runs before serving a checkpoint for a network: same sensor ids in the same
    order, and the interval it was trained at equal to the window it will be stepped at.
    """
    trained_ids = tuple(str(s) for s in metadata.get("sensor_ids", ()))
    if trained_ids != network.sensor_ids:
        return (f"trained on {len(trained_ids)} sensors of network {metadata.get('network')!r}; network "
                f"{network.name!r} ({network.n_sensors} sensors) has other ids or another order")
    interval = metadata.get("interval_ms")
    if interval is not None and step_ms is not None and int(interval) != int(step_ms):
        return (f"trained on {int(interval) // 1000} s intervals, the windows are {int(step_ms) // 1000} s; "
                "set the window size to the training interval or retrain")
    return None


def _profile_from_metadata(data: dict[str, Any], n_sensors: int) -> SeasonalProfile:
    """The profile stored in a checkpoint (tensors) as a SeasonalProfile."""
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    try:
        return SeasonalProfile.from_arrays(arrays, n_sensors)
    except ModelError as exc:
        raise CheckpointError(f"the checkpoint's seasonal profile is unusable: {exc}") from exc


def load_traffic_model(path: str | os.PathLike[str], network: SensorNetwork, *,
                       sparse: bool | None = None) -> tuple[TrafficGRU, dict[str, Any]]:
    """Model (in eval mode) and metadata of a traffic checkpoint trained on ``network``'s sensors."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND)
    metadata = payload["metadata"]
    problem = checkpoint_problem(metadata, network)
    if problem:
        raise CheckpointError(f"checkpoint {path} was {problem}")
    if metadata.get("network_fingerprint") not in (None, network.fingerprint):
        logger.warning("checkpoint %s was trained on another adjacency of network %s",
                       path, network.name)
    try:
        model = TrafficGRU(TrafficConfig.from_dict(dict(metadata["config"])), network.adjacency,
                           sparse=sparse)
        state = dict(payload["state_dict"])
        state.setdefault("value_scale", model.value_scale.clone())  # checkpoints before per-sensor scales
        model.load_state_dict(state)
    except (KeyError, ModelError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit a TrafficGRU: {exc}") from exc
    return model.eval(), metadata


_STATE_MAGIC = b"TGFS"
_STATE_FORMAT = 2  # 2 added the ring of recent values; format 1 is still read
_RING_HEADER = struct.Struct("<HQ")  # ring length, values seen
_PROFILE_MAGIC = b"TGPR1"
# magic, format, version length, sensors, hidden, horizons, last window end ms (-1: none)
_STATE_HEADER = struct.Struct("<4sBHIIHq")


def _unpack_state_header(data: bytes) -> tuple[Any, ...]:
    """Header fields of a state encoding; ModelError if it is not one this code reads."""
    if len(data) < _STATE_HEADER.size:
        raise ModelError(f"state bytes too short ({len(data)} bytes)")
    fields = _STATE_HEADER.unpack_from(data)
    if fields[0] != _STATE_MAGIC:
        raise ModelError("bytes are not a traffic forecaster state")
    if fields[1] not in (1, _STATE_FORMAT):
        raise ModelError(f"traffic state format {fields[1]}, this version reads 1 and {_STATE_FORMAT}")
    return fields
