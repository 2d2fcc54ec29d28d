"""Traffic jobs behind `stream-app train traffic` and `evaluate traffic`: the graph-GRU on Los-loop or on
any readings file with its network, under the strict or the T-GCN protocol, scored with
:mod:`models.traffic.evaluation`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.exceptions import CheckpointError, ModelError
from models.traffic.calendar import DAY_MS, check_timezone
from models.traffic.data import INPUT_STEPS, Split, TrafficSeries, load_los_loop, strict_split, tgcn_split
from models.traffic.evaluation import ModelUnderTest, TrafficReport, traffic_report
from models.traffic.forecaster import load_traffic_model
from models.traffic.graph import SensorNetwork
from models.traffic.model import TrafficConfig
from models.traffic.monitor import calibrate_incidents
from models.traffic.network_files import build_network
from models.traffic.readings import read_readings, to_series
from models.traffic.training import TrainConfig, TrainResult, model_version, save_traffic_checkpoint, train_traffic
from stream_app.jobs import JobError, shared_folder

__all__ = ["TrafficData", "load_traffic_data", "load_traffic_series", "train_traffic_models",
           "load_traffic_checkpoint", "evaluate_traffic", "write_network_csv", "parse_duration_ms",
           "DEFAULT_HORIZONS_MIN", "TIME_FEATURES_MIN_DAYS"]

log = logging.getLogger(__name__)

DEFAULT_HORIZONS_MIN = (15, 30, 45, 60)
TIME_FEATURES_MIN_DAYS = 14  # time features by default only with two weeks of training rows (each weekday twice)
_UNITS_MS = {"ms": 1, "s": 1_000, "sec": 1_000, "min": 60_000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}


@dataclass(frozen=True, eq=False)
class TrafficData:
    """A series to train or evaluate on, the horizons to score (steps) and what loading it did."""

    name: str
    series: TrafficSeries
    horizons: tuple[int, ...]
    notes: tuple[str, ...] = ()
    source: dict[str, Any] | None = None  # how it was read (for checkpoint metadata)

    @property
    def step_minutes(self) -> float:
        return self.series.step_ms / 60_000


def parse_duration_ms(text: str) -> int:
    """``"5min"``, ``"1h"``, ``"30s"``, ``"300000ms"`` -> milliseconds; JobError without a unit."""
    value = text.strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = value[len(number):].strip()
    if not number or unit not in _UNITS_MS:
        raise JobError(f"--interval {text!r}: give a number and a unit, e.g. 5min, 1h, 30s")
    try:
        ms = float(number) * _UNITS_MS[unit]
    except ValueError:
        raise JobError(f"--interval {text!r}: {number!r} is not a number") from None
    if ms < 1_000 or ms != int(ms):
        raise JobError(f"--interval {text!r}: the interval must be a whole number of milliseconds, at least 1 s")
    return int(ms)


def load_traffic_data(data: str, *, data_dir: Path | None = None, sensors: Path | None = None,
                      edges: Path | None = None, coordinates: str = "wgs84", directed: bool = False,
                      value_field: str | None = None, kind: str | None = None, unit: str | None = None,
                      interval: str | None = None, timezone: str | None = None,
                      horizons_min: tuple[int, ...] | None = None, network: str | None = None) -> TrafficData:
    """Los-loop (``data == "los-loop"``) or a readings file with its network files."""
    try:
        check_timezone(timezone)
        if data == "los-loop":
            return _los_loop(data_dir, sensors, edges, timezone, interval, horizons_min)
        return _readings_file(Path(data), sensors=sensors, edges=edges, coordinates=coordinates, directed=directed,
                              value_field=value_field, kind=kind, unit=unit, interval=interval, timezone=timezone,
                              horizons_min=horizons_min, network=network)
    except ModelError as exc:
        raise JobError(str(exc)) from exc


def load_traffic_series(data: str, data_dir: Path | None = None) -> TrafficSeries:
    """The series of :func:`load_traffic_data` (defaults for every option)."""
    return load_traffic_data(data, data_dir=data_dir).series


def _los_loop(data_dir: Path | None, sensors: Path | None, edges: Path | None, timezone: str | None,
              interval: str | None, horizons_min: tuple[int, ...] | None) -> TrafficData:
    if sensors is not None or edges is not None or interval is not None:
        raise JobError("Los-loop brings its own network and 5-minute interval; drop --sensors, --edges and "
                       "--interval, or give a readings file with --data FILE")
    series = load_los_loop(shared_folder("los-loop", data_dir))
    notes: tuple[str, ...] = ()
    if timezone is not None:
        notes = (f"--timezone {timezone} ignored: Los-loop's rows are already local (Los Angeles) times",)
    horizons = _horizon_steps(horizons_min or DEFAULT_HORIZONS_MIN, series.step_ms)
    return TrafficData("los-loop", series, horizons, notes, {"data": "los-loop"})


def _readings_file(path: Path, *, sensors: Path | None, edges: Path | None, coordinates: str, directed: bool,
                   value_field: str | None, kind: str | None, unit: str | None, interval: str | None,
                   timezone: str | None, horizons_min: tuple[int, ...] | None, network: str | None) -> TrafficData:
    readings = read_readings(path, value_field, kind=kind, unit=unit)
    name = network or path.stem
    built = build_network(name, sensors=sensors, edges=edges, directed=directed, coordinates=coordinates,
                          extra_ids=readings.sensors)
    interval_ms = parse_duration_ms(interval) if interval else None
    resampled = to_series(readings, built.network, interval_ms=interval_ms, timezone=timezone)
    series = resampled.series
    notes = list(built.notes) + list(resampled.notes)
    if readings.skipped_empty:
        notes.append(f"{readings.skipped_empty:,} rows with an empty {readings.value_field} were read as gaps")
    if readings.naive_times:
        notes.append("timestamps without an offset were read as UTC (as the stream reads them); add the offset "
                     "(e.g. +01:00) if they are local times")
    if timezone is None:
        notes.append("no --timezone: time of day and week are taken in UTC")
    horizons = _horizon_steps(horizons_min or _default_horizons(series.step_ms), series.step_ms)
    source = {"data": str(path), "value_field": readings.value_field, "sensors": _text(sensors),
              "edges": _text(edges), "directed": directed, "coordinates": coordinates}
    return TrafficData(name, series, horizons, tuple(notes), source)


def _default_horizons(step_ms: int) -> tuple[int, ...]:
    """15/30/45/60 min where they are whole steps, else 1..4 steps."""
    if all(m * 60_000 % step_ms == 0 for m in DEFAULT_HORIZONS_MIN):
        return DEFAULT_HORIZONS_MIN
    return tuple(k * step_ms // 60_000 for k in range(1, 5)) if step_ms % 60_000 == 0 else (1,)


def _horizon_steps(horizons_min: tuple[int, ...], step_ms: int) -> tuple[int, ...]:
    """Minutes -> steps of the series; JobError for one that is not a whole number of steps."""
    steps = []
    for minutes in sorted(set(horizons_min)):
        if minutes <= 0 or (minutes * 60_000) % step_ms:
            raise JobError(f"--horizons: {minutes} min is not a whole number of {step_ms / 60_000:g}-minute steps; "
                           f"use multiples of {step_ms / 60_000:g} min")
        steps.append(minutes * 60_000 // step_ms)
    return tuple(steps)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def train_traffic_models(data: TrafficData | TrafficSeries, *, protocols: tuple[str, ...] = ("strict", "tgcn"),
                         epochs: int = 200, patience: int = 10, lr: float = 2e-3, hidden_dim: int = 64,
                         embedding_dim: int = 8, seed: int = 0, progress: bool = True,
                         time_features: bool | None = None, profile: bool = True, input_steps: int = INPUT_STEPS,
                         out: dict[str, Path] | None = None) -> dict[str, tuple[TrainResult, dict[str, Any]]]:
    """Train under each protocol in ``protocols``.

    ``strict``: train on the first 64 % of rows, early stopping on the next 16 % (validation), which
    also scores the baselines per horizon, picks what to serve and calibrates the incident monitor
    (:mod:`models.traffic.monitor`) to the alert budget. ``tgcn``: that strict run picks
    the epoch count and learning-rate schedule, then the model is refitted on the first 80 % (the
    strict run is done once for both; the refit serves the strict run's choices). ``time_features``
    None: on when the training rows span two weeks. Saves ``out[protocol]`` when given. Returns
    {protocol: (result, summary with version, best epoch, validation metrics and sources)}.
    """
    data = data if isinstance(data, TrafficData) else TrafficData("los-loop", data, (3, 6, 9, 12))
    unknown = sorted(set(protocols) - {"strict", "tgcn"})
    if unknown or not protocols:
        raise JobError(f"protocols must be strict and/or tgcn, got {list(protocols)}")
    series, out = data.series, out or {}
    split = strict_split(series.n_steps)
    model_config = _model_config(series, split.train, max(data.horizons), hidden_dim, embedding_dim,
                                 time_features, profile)
    config = TrainConfig(epochs=epochs, patience=patience, learning_rate=lr, seed=seed, progress=progress,
                         input_steps=input_steps)
    strict = _train(series, split, model_config, config)
    if strict.profile is None:  # train_traffic always fits one
        raise JobError("training returned no seasonal profile; incident thresholds are calibrated on it")
    incidents = calibrate_incidents(series, split, strict.profile)
    runs: dict[str, tuple[TrainResult, Split, TrainConfig, dict[str, Any]]] = {
        "strict": (strict, split, config, {"protocol": "strict"})}
    if "tgcn" in protocols:
        schedule = tuple(r["lr"] for r in strict.history if "lr" in r)[:max(1, strict.best_epoch)]
        refit_config = replace(config, stop_after=max(1, strict.best_epoch), lr_schedule=schedule or None)
        refit_split = tgcn_split(series.n_steps)
        refit = _train(series, refit_split, model_config, refit_config)
        runs["tgcn"] = (refit, refit_split, refit_config,
                        {"protocol": "tgcn", "strict_val_metrics": strict.val_metrics,
                         "validation_scores": strict.validation_scores, "sources": strict.sources})
    trained = {}
    for protocol in protocols:
        result, part, used, extra = runs[protocol]
        if protocol in out:
            save_traffic_checkpoint(out[protocol], result, series, part, used, data=data.source,
                                    incidents=incidents.to_metadata(), **extra)
        trained[protocol] = (result, {
            "version": model_version(result.model, result.profile), "protocol": protocol,
            "best_epoch": result.best_epoch, "strict_best_epoch": strict.best_epoch,
            "epochs_run": len(strict.history) - 1, "validation": strict.val_metrics or {},
            "validation_scores": strict.validation_scores, "sources": strict.sources,
            "time_features": model_config.use_time_features,
            "incidents": {"threshold": incidents.config.threshold, "direction": incidents.config.direction,
                          "validation_incidents": incidents.validation_incidents}})
    return trained


def _model_config(series: TrafficSeries, train: slice, max_horizon: int, hidden_dim: int, embedding_dim: int,
                  time_features: bool | None, profile: bool) -> TrafficConfig:
    part = series.rows(train)
    observed = part.speeds[part.mask]
    scale = float(np.abs(observed).max()) if observed.size and np.abs(observed).max() > 0 else 1.0
    if time_features is None:
        time_features = part.n_steps * part.step_ms >= TIME_FEATURES_MIN_DAYS * DAY_MS
    return TrafficConfig(n_sensors=series.network.n_sensors, hidden_dim=hidden_dim,
                         horizons=tuple(range(1, max_horizon + 1)), speed_scale=scale,
                         node_embedding_dim=embedding_dim, use_time_features=time_features, use_profile=profile,
                         step_minutes=max(1, series.step_ms // 60_000))


def _train(series: TrafficSeries, split: Split, model_config: TrafficConfig, config: TrainConfig) -> TrainResult:
    try:
        return train_traffic(series, split, model_config, config)
    except ModelError as exc:
        raise JobError(str(exc)) from exc


def load_traffic_checkpoint(path: Path, series: TrafficSeries) -> tuple[ModelUnderTest, dict[str, Any]]:
    """A traffic checkpoint for ``series``' network; JobError with the reason when unusable."""
    try:
        model, metadata = load_traffic_model(path, series.network)
    except (CheckpointError, ModelError) as exc:
        raise JobError(str(exc)) from exc
    interval = metadata.get("interval_ms")
    if interval is not None and int(interval) != series.step_ms:
        raise JobError(f"checkpoint {path} was trained on {int(interval) // 1000} s intervals, the data has "
                       f"{series.step_ms // 1000} s; pass the same --interval as for training")
    sources = tuple(metadata["sources"]) if metadata.get("sources") else None
    return ModelUnderTest(model, sources), metadata


def evaluate_traffic(data: TrafficData, models: dict[str, tuple[Any, dict[str, Any]]],
                     input_steps: int = INPUT_STEPS) -> TrafficReport:
    """The report of :func:`models.traffic.evaluation.traffic_report` at the data's horizons."""
    try:
        return traffic_report(data.series, models, data.name, horizons=data.horizons, input_steps=input_steps)
    except ModelError as exc:
        raise JobError(str(exc)) from exc


def write_network_csv(network: SensorNetwork, folder: Path) -> tuple[Path, Path]:
    """The network as the worker's STREAM_APP_NETWORKS files: a dense adjacency CSV and a sensors CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    adjacency, sensors = folder / f"{network.name}-adjacency.csv", folder / f"{network.name}-sensors.csv"
    np.savetxt(adjacency, network.adjacency, delimiter=",", fmt="%.6g")
    if network.coords is not None and network.crs == "wgs84":
        rows = [f"{s},{lat:.7f},{lon:.7f}" for s, (lat, lon) in zip(network.sensor_ids, network.coords, strict=True)]
        sensors.write_text("sensor_id,lat,lon\n" + "\n".join(rows) + "\n")
    else:
        sensors.write_text(",".join(network.sensor_ids) + "\n")
    return adjacency, sensors
