"""Traffic series (values on an interval grid, with gaps masked), Los-loop, and the T-GCN evaluation
protocol: splits, windows and metrics. Generic readings files are read by
:mod:`models.traffic.readings`.

Data (``<shared data>/los-loop``): ``los_speed.csv`` has a header line of sensor ids and one row
per 5-minute step from 2012-03-01T00:00 local (Los Angeles) time, speeds in mph;
``los_adj.csv`` is the header-less adjacency (see :mod:`models.traffic.graph`).

T-GCN protocol (Zhao et al., 2019): chronological 80/20 split of the steps; inputs are 12
consecutive steps of one split; a forecast of ``h`` steps is scored on all of steps 1..h of
every window ``i in range(len(split) - 12 - h)`` (T-GCN's own loop bound); RMSE, MAE and
Accuracy = 1 - ||Y - Ŷ||_F / ||Y||_F in mph; T-GCN divides by the global maximum, here the
model divides by the training maximum. The stricter protocol carves the last 20 % of the
training part off as a validation split for early stopping; nothing is chosen on test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.checkpoint import file_digest
from models.exceptions import ModelError
from models.paths import shared_data_dir
from models.traffic.calendar import DAY_MS, local_wall_ms
from models.traffic.graph import SensorNetwork
from models.traffic.model import STEP_MS, time_features

__all__ = ["TrafficSeries", "Split", "load_los_loop", "tgcn_split", "strict_split",
           "forecast_windows", "forecast_metrics", "LOS_LOOP_START", "INPUT_STEPS",
           "EVAL_HORIZONS", "MAPE_FLOOR"]

logger = logging.getLogger(__name__)

LOS_LOOP_START = np.datetime64("2012-03-01T00:00", "ms")
INPUT_STEPS = 12  # one hour of 5-minute steps
EVAL_HORIZONS = (3, 6, 9, 12)  # 15, 30, 45, 60 minutes
MAPE_FLOOR = 5.0  # mph; MAPE only counts targets above it (stopped traffic would dominate)


@dataclass(frozen=True, eq=False)
class TrafficSeries:
    """Values [time, sensors] on a network; row ``t`` is the interval starting ``start_ms + t * step_ms``.

    ``speeds`` holds the values whatever their ``kind`` (the name predates other kinds), with gaps
    filled by the sensor's previous value (its first one before it) and ``observed`` [time, sensors]
    saying which cells were measured (None: all). ``timezone``: the IANA zone of the network, the
    row times being UTC; None means ``start_ms`` already is local wall-clock time (Los-loop).
    """

    network: SensorNetwork
    speeds: np.ndarray
    start_ms: int
    step_ms: int = STEP_MS
    fingerprint: str = ""
    observed: np.ndarray | None = None
    timezone: str | None = None
    kind: str = "speed"
    unit: str = ""

    @property
    def values(self) -> np.ndarray:
        """[time, sensors] the values (same array as ``speeds``)."""
        return self.speeds

    @property
    def mask(self) -> np.ndarray:
        """[time, sensors] bool: measured cells (all True without gaps)."""
        return self.observed if self.observed is not None else np.ones(self.speeds.shape, dtype=bool)

    @property
    def n_steps(self) -> int:
        """Number of time steps (rows)."""
        return len(self.speeds)

    def row_ms(self, extra: int = 0) -> np.ndarray:
        """[time + extra] start of each row (and of ``extra`` rows after the last), as stored."""
        return self.start_ms + self.step_ms * np.arange(self.n_steps + extra, dtype=np.int64)

    def local_ms(self, extra: int = 0) -> np.ndarray:
        """[time + extra] local wall-clock epoch ms of each row's start (daylight saving included)."""
        return local_wall_ms(self.row_ms(extra), self.timezone)

    def time_features(self) -> np.ndarray:
        """[time, 4] the model's time-of-day / day-of-week features of each row."""
        return time_features(self.local_ms())

    def slot_of_day(self) -> np.ndarray:
        """[time] index of each row's step within its day (0 .. steps per day - 1)."""
        return (self.local_ms() % DAY_MS) // self.step_ms

    def rows(self, part: slice) -> TrafficSeries:
        """The rows in ``part`` (a slice of steps) as a series of their own."""
        start, _, _ = part.indices(self.n_steps)
        return replace(self, speeds=self.speeds[part], start_ms=self.start_ms + start * self.step_ms,
                       observed=None if self.observed is None else self.observed[part])


@dataclass(frozen=True)
class Split:
    """Row ranges of a chronological split; ``val`` is None for the T-GCN protocol."""

    train: slice
    val: slice | None
    test: slice


def load_los_loop(folder: str | Path | None = None) -> TrafficSeries:
    """Read Los-loop from ``folder`` (default: the shared data dir's ``los-loop``)."""
    folder = Path(folder) if folder is not None else shared_data_dir() / "los-loop"
    speed_file, adjacency_file = folder / "los_speed.csv", folder / "los_adj.csv"
    if not speed_file.is_file() or not adjacency_file.is_file():
        raise ModelError(f"Los-loop data not found in {folder} (need los_speed.csv and "
                         "los_adj.csv; originals in the T-GCN repository, lehaifeng/T-GCN, data/)")
    network = SensorNetwork.from_files("los-loop", adjacency_file, speed_file)
    try:
        speeds = np.loadtxt(speed_file, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ModelError(f"{speed_file} could not be read: {exc}") from exc
    if speeds.shape[1] != network.n_sensors:
        raise ModelError(f"{speed_file} has {speeds.shape[1]} columns, the header "
                         f"{network.n_sensors} sensor ids")
    fingerprint = f"{file_digest(speed_file)}-{file_digest(adjacency_file)}"
    start_ms = int(LOS_LOOP_START.astype(np.int64))
    return TrafficSeries(network=network, speeds=speeds, start_ms=start_ms, fingerprint=fingerprint)


def tgcn_split(n_steps: int, train_fraction: float = 0.8) -> Split:
    """T-GCN's chronological split: first ``int(n * train_fraction)`` steps train, rest test."""
    cut = int(n_steps * train_fraction)
    return Split(train=slice(0, cut), val=None, test=slice(cut, n_steps))


def strict_split(n_steps: int, train_fraction: float = 0.8, val_fraction: float = 0.2) -> Split:
    """T-GCN's test split; the last ``val_fraction`` of its training part becomes validation."""
    cut = int(n_steps * train_fraction)
    val_start = int(cut * (1 - val_fraction))
    return Split(train=slice(0, val_start), val=slice(val_start, cut), test=slice(cut, n_steps))


def forecast_windows(speeds: np.ndarray, horizon: int,
                     input_steps: int = INPUT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """T-GCN windows of one split.

    ``speeds``: [time, sensors]. Returns input start rows [windows] and targets
    [windows, horizon, sensors]; window ``i`` reads rows ``i .. i + input_steps - 1`` and is
    scored on the next ``horizon`` rows, for ``i in range(time - input_steps - horizon)``.
    """
    count = len(speeds) - input_steps - horizon
    if count <= 0:
        raise ModelError(f"{len(speeds)} steps hold no window of {input_steps} inputs and "
                         f"{horizon} targets")
    starts = np.arange(count)
    offsets = input_steps + np.arange(horizon)
    return starts, speeds[starts[:, None] + offsets[None, :]]


def forecast_metrics(targets: np.ndarray, predictions: np.ndarray, *, mape_floor: float = MAPE_FLOOR,
                     mask: np.ndarray | None = None) -> dict[str, float]:
    """RMSE, MAE, MAPE (%, targets above ``mape_floor``) and T-GCN's Accuracy, same shapes in;
    with ``mask`` (same shape, bool) only the measured targets count."""
    if targets.shape != predictions.shape:
        raise ModelError(f"targets {targets.shape} and predictions {predictions.shape} differ")
    counted = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if counted.shape != targets.shape:
        raise ModelError(f"mask {counted.shape} and targets {targets.shape} differ")
    y, y_hat = targets[counted].astype(np.float64), predictions[counted].astype(np.float64)
    if y.size == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "mape": float("nan"), "accuracy": float("nan")}
    error = y_hat - y
    above = y > mape_floor
    mape = float(np.mean(np.abs(error[above]) / y[above]) * 100) if above.any() else float("nan")
    norm = np.linalg.norm(y)
    accuracy = float(1 - np.linalg.norm(error) / norm) if norm > 0 else float("nan")
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "mape": mape, "accuracy": accuracy}
