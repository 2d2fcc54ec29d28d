"""A simulated city: loop detectors along road corridors, with rush hours and incidents.

Daily cycle (morning and evening rush, a corridor direction peaking in one of them, each sensor's
peak a little earlier or later), day-to-day variation (each day's demand a little higher or lower,
for every sensor), weekly cycle (weekday factors: Monday mornings and Friday
evenings heavier; Saturday busier than Sunday, whose traffic is a midday hump), sensors with
different exposure to congestion, incidents that spread upstream. Readings are speeds (with flow
and occupancy) or, with ``measure="count"``, vehicle counts per interval (Poisson around the flow
times ``count_scale`` and a per-sensor weight, so some stations are busy and most are quiet; a small
scale gives sparse counts with many zeros).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from simulation.clock import (
    DAY_MS,
    DEFAULT_START_MS,
    HOUR_MS,
    MINUTE_MS,
    SimulationConfigError,
    local_hours,
    to_latlon,
    utc_offset_ms,
)

__all__ = ["Incident", "TrafficConfig", "TrafficWorkload", "generate_traffic", "iter_traffic_readings",
           "write_traffic_files"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Incident:
    """Ground truth: a sharp slowdown at one sensor between start_ms and end_ms (severity 0..1)."""

    sensor_id: str
    start_ms: int
    end_ms: int
    severity: float


@dataclass(frozen=True, kw_only=True)
class TrafficConfig:
    """Loop detectors along a few road corridors of one city; the defaults give one weekday."""

    network: str = "synthetic-city"
    n_sensors: int = 48
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    duration_hours: float | None = 24.0
    interval_ms: int = 60_000
    utc_offset_hours: float = -5.0
    center_lat: float = 42.2808
    center_lon: float = -83.7430
    radius_km: float = 8.0
    n_corridors: int = 4
    spacing_km: tuple[float, float] = (0.5, 1.0)
    free_flow_mph: tuple[float, float] = (58.0, 66.0)
    lanes: int = 3
    noise_mph: float = 1.5
    incidents: tuple[Incident, ...] = ()
    incident_rate_per_day: float = 3.0
    incident_minutes: tuple[float, float] = (15.0, 60.0)
    spread_lag_s: float = 240.0
    spread_decay: float = 0.7
    dropout_prob: float = 0.005
    n_dead_sensors: int = 0
    speed_only_fraction: float = 0.1
    measure: str = "speed"  # "speed" (speed, flow, occupancy) or "count" (vehicles per interval)
    count_scale: float = 1.0  # share of the vehicles counted (counts mode)
    peak_jitter_h: float = 0.35  # spread of each sensor's rush-hour peak times
    day_variation: float = 0.1  # log-normal spread of each day's demand (weather, events), shared by all sensors

    def __post_init__(self) -> None:
        checks = {
            "n_sensors": self.n_sensors >= 1,
            "n_corridors": 1 <= self.n_corridors <= self.n_sensors,
            "duration_hours": self.duration_hours is None or self.duration_hours >= 0,
            "interval_ms": self.interval_ms >= 1_000,
            "spacing_km": 0 < self.spacing_km[0] <= self.spacing_km[1],
            "incident_minutes": 0 < self.incident_minutes[0] <= self.incident_minutes[1],
            "incident_rate_per_day": self.incident_rate_per_day >= 0,
            "spread_decay": 0.0 <= self.spread_decay <= 1.0,
            "dropout_prob": 0.0 <= self.dropout_prob < 1.0,
            "n_dead_sensors": 0 <= self.n_dead_sensors < self.n_sensors,
            "speed_only_fraction": 0.0 <= self.speed_only_fraction <= 1.0,
            "measure": self.measure in ("speed", "count"),
            "count_scale": self.count_scale > 0,
            "peak_jitter_h": self.peak_jitter_h >= 0,
            "day_variation": self.day_variation >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SimulationConfigError(f"TrafficConfig: invalid {', '.join(bad)}")


@dataclass(frozen=True, kw_only=True)
class TrafficWorkload:
    """Readings in event-time order with the network and the incidents that shaped them.

    ``edges``: (upstream sensor, downstream sensor, km) along each corridor, the direction of travel.
    """

    sensors: list[tuple[str, float, float]]
    readings: list[dict]
    incidents: list[Incident]
    edges: list[tuple[str, str, float]]
    dead_sensors: list[str]


_JAM_DENSITY = 130.0        # vehicles per mile per lane
_VEHICLE_LENGTH_MI = 0.0042  # effective detector length (vehicle + loop), ~22 ft
_RECOVERY_MS = 10 * MINUTE_MS
_ONSET_MS = 2 * MINUTE_MS


class _Network(NamedTuple):
    ids: list[str]
    lat: np.ndarray
    lon: np.ndarray
    downstream: np.ndarray   # index of the next sensor in the direction of travel, -1 at the end
    edges: list[tuple[str, str, float]]
    am_peak: np.ndarray      # bool: the corridor's direction peaks in the morning (else evening)
    exposure: np.ndarray     # 0..1 share of rush-hour congestion the sensor suffers


def _corridor_points(config: TrafficConfig, rng: np.random.Generator, c: int, n: int) -> np.ndarray:
    """[n, 2] (east, north) km of sensors along corridor c, in the direction of travel."""
    angle = math.pi * c / config.n_corridors + rng.normal(0.0, 0.15)
    gaps = rng.uniform(*config.spacing_km, size=n)
    along = np.cumsum(gaps) - gaps.sum() / 2 - gaps[0] / 2
    across = rng.uniform(-0.3, 0.3) * config.radius_km + 0.3 * np.sin(along / 2.5 + rng.uniform(0, 6))
    points = np.stack([along * math.cos(angle) - across * math.sin(angle),
                       along * math.sin(angle) + across * math.cos(angle)], axis=1)
    return points if c % 2 == 0 else points[::-1]


def _build_network(config: TrafficConfig, rng: np.random.Generator) -> _Network:
    sizes = np.full(config.n_corridors, config.n_sensors // config.n_corridors)
    sizes[: config.n_sensors % config.n_corridors] += 1
    ids: list[str] = []
    points, downstream, am_peak, edges = [], [], [], []
    for c, n in enumerate(sizes):
        pts = _corridor_points(config, rng, c, int(n))
        base = len(ids)
        ids += [f"{config.network}-c{c}-{i:03d}" for i in range(n)]
        points.append(pts)
        downstream += [base + i + 1 for i in range(n - 1)] + [-1]
        am_peak += [c % 2 == 0] * int(n)
        edges += [(ids[base + i], ids[base + i + 1], round(float(np.hypot(*(pts[i + 1] - pts[i]))), 3))
                  for i in range(n - 1)]
    xy = np.concatenate(points)
    center = (config.center_lat, config.center_lon)
    latlon = np.array([to_latlon(center, float(e), float(nn)) for e, nn in xy])
    distance = np.hypot(xy[:, 0], xy[:, 1]) / config.radius_km
    exposure = np.clip(0.15 + 0.6 * np.exp(-distance**2 / 0.5) + rng.normal(0, 0.08, len(ids)), 0.05, 0.85)
    return _Network(ids, latlon[:, 0], latlon[:, 1], np.array(downstream), edges,
                    np.array(am_peak), exposure)


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


# Monday .. Sunday: weight of the morning and evening rush, and of the weekend midday hump.
_AM_FACTOR = np.array([1.1, 1.0, 1.0, 0.95, 0.85, 0.0, 0.0])
_PM_FACTOR = np.array([0.9, 1.0, 1.0, 1.05, 1.2, 0.0, 0.0])
_MIDDAY_FACTOR = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.25])


def _weekday(t_ms: np.ndarray, offset_ms: int) -> np.ndarray:
    """[steps] local day of the week, Monday = 0."""
    return ((t_ms + offset_ms) // DAY_MS + 3) % 7


def _rush(hours: np.ndarray, weekday: np.ndarray, am_peak: np.ndarray, shift_h: np.ndarray) -> np.ndarray:
    """[sensors, steps] 0..1 recurring congestion shape; a direction peaks in the morning or evening,
    each sensor ``shift_h`` hours off the corridor's peak times, each weekday with its own weights."""
    local = hours[None, :] - shift_h[:, None]
    am = _AM_FACTOR[weekday][None, :] * _gauss(local, 8.0, 1.0)
    pm = _PM_FACTOR[weekday][None, :] * _gauss(local, 17.5, 1.3)
    rush = np.where(am_peak[:, None], am + 0.6 * pm, 0.6 * am + pm)
    return np.minimum(rush + _MIDDAY_FACTOR[weekday][None, :] * _gauss(local, 13.5, 2.5), 1.0)


def _demand(hours: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    """[steps] uncongested flow, vehicles per hour per lane."""
    daytime = np.clip((_gauss(hours, 14.0, 5.0) - 0.05) / 0.95, 0.0, 1.0)
    rush = np.where(weekday >= 5, 0.3, 1.0) * (_AM_FACTOR[weekday] * _gauss(hours, 8.0, 1.2)
                                               + _PM_FACTOR[weekday] * _gauss(hours, 17.5, 1.5))
    return 150.0 + 1_000.0 * np.where(weekday == 6, 0.8, 1.0) * daytime + 500.0 * rush


def _incident_shape(t_ms: np.ndarray, incident: Incident) -> np.ndarray:
    """0..severity: a two-minute onset, a plateau, a ten-minute recovery after end_ms."""
    rise = (t_ms - incident.start_ms) / _ONSET_MS
    fall = 1.0 - (t_ms - incident.end_ms) / _RECOVERY_MS
    return incident.severity * np.clip(np.minimum(np.minimum(rise, fall), 1.0), 0.0, 1.0)


class _TrafficSim:
    """Advances the whole network one chunk (an hour of steps) at a time, carrying its state."""

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng([config.seed, 7])
        self.net = _build_network(config, self.rng)
        n = len(self.net.ids)
        self.free_flow = self.rng.uniform(*config.free_flow_mph, size=n)
        self.phase_ms = np.sort(self.rng.integers(0, min(5_000, config.interval_ms), size=n))
        self.speed_only = self.rng.random(n) < config.speed_only_fraction
        self.dead = np.zeros(n, dtype=bool)
        self.dead[self.rng.choice(n, size=config.n_dead_sensors, replace=False)] = True
        self.peak_shift_h = self.rng.normal(0.0, config.peak_jitter_h, n)
        # Counted share per sensor (busy and quiet stations), from its own stream: speeds stay as they were.
        self.count_weight = np.random.default_rng([config.seed, 11]).lognormal(0.0, 0.8, n)
        self.incidents = self._explicit_incidents()
        self.lag = max(1, round(config.spread_lag_s * 1000 / config.interval_ms))
        self.chunk = max(self.lag, HOUR_MS // config.interval_ms)
        self.history = np.zeros((n, self.lag))
        self.noise = np.zeros(n)
        self.step = 0
        hours = config.duration_hours
        self.end_ms = math.inf if hours is None else config.start_ms + hours * HOUR_MS

    @property
    def finished(self) -> bool:
        return self.config.start_ms + self.step * self.config.interval_ms >= self.end_ms

    def _explicit_incidents(self) -> list[Incident]:
        unknown = [i.sensor_id for i in self.config.incidents if i.sensor_id not in self.net.ids]
        if unknown:
            raise SimulationConfigError(f"TrafficConfig.incidents: unknown sensor ids {unknown[:5]}")
        return sorted(self.config.incidents, key=lambda i: i.start_ms)

    def _random_incidents(self, t0_ms: int, span_ms: int) -> list[Incident]:
        cfg, rng = self.config, self.rng
        count = rng.poisson(cfg.incident_rate_per_day * span_ms / DAY_MS)
        alive = np.flatnonzero(~self.dead)
        made = []
        for _ in range(count):
            start = t0_ms + int(rng.integers(span_ms))
            minutes = rng.uniform(*cfg.incident_minutes)
            made.append(Incident(sensor_id=self.net.ids[int(rng.choice(alive))], start_ms=start,
                                 end_ms=start + int(minutes * MINUTE_MS),
                                 severity=round(float(rng.uniform(0.5, 0.9)), 3)))
        return sorted(made, key=lambda i: i.start_ms)

    def _day_factor(self, t_ms: np.ndarray, offset: int) -> np.ndarray:
        """[steps] each local day's demand factor, drawn per day from its own stream (chunking-proof)."""
        days = (t_ms + offset) // DAY_MS
        spread = self.config.day_variation
        factors = {int(d): float(np.random.default_rng([self.config.seed, 13, int(d)]).lognormal(0.0, spread))
                   for d in np.unique(days)} if spread > 0 else {}
        return np.array([factors.get(int(d), 1.0) for d in days])

    def _congestion_sources(self, t_ms: np.ndarray) -> np.ndarray:
        offset = utc_offset_ms(self.config.utc_offset_hours)
        hours, _ = local_hours(t_ms, offset)
        sources = self.net.exposure[:, None] * _rush(hours, _weekday(t_ms, offset), self.net.am_peak,
                                                     self.peak_shift_h)
        sources = np.minimum(sources * self._day_factor(t_ms, offset)[None, :], 1.0)
        index = {sensor: i for i, sensor in enumerate(self.net.ids)}
        for incident in self.incidents:
            if incident.start_ms <= t_ms[-1] and incident.end_ms + _RECOVERY_MS >= t_ms[0]:
                row = index[incident.sensor_id]
                sources[row] = np.maximum(sources[row], _incident_shape(t_ms, incident))
        return sources

    def _spread(self, sources: np.ndarray) -> np.ndarray:
        """Queues grow upstream: each sensor also feels its downstream neighbour, lagged and damped."""
        congestion = sources.copy()
        decay, steps = self.config.spread_decay, sources.shape[1]
        for s in range(len(self.net.ids) - 1, -1, -1):  # downstream sensors come later in each corridor
            d = self.net.downstream[s]
            if d >= 0:
                lagged = np.concatenate([self.history[d], congestion[d]])[:steps]
                congestion[s] = np.maximum(congestion[s], decay * lagged)
        self.history = np.concatenate([self.history, congestion], axis=1)[:, -self.lag:]
        return congestion

    def _speed(self, congestion: np.ndarray) -> np.ndarray:
        phi = 0.85
        shocks = self.rng.normal(0.0, self.config.noise_mph * math.sqrt(1 - phi**2), congestion.shape)
        noise = np.empty_like(congestion)
        for k in range(congestion.shape[1]):
            self.noise = phi * self.noise + shocks[:, k]
            noise[:, k] = self.noise
        return np.maximum(self.free_flow[:, None] * (1.0 - 0.85 * congestion) + noise, 1.0)

    def _flow_occupancy(self, speed: np.ndarray, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Greenshields' diagram: demand-limited density when free, jam branch when congested."""
        offset = utc_offset_ms(self.config.utc_offset_hours)
        hours, _ = local_hours(t_ms, offset)
        free = (_demand(hours, _weekday(t_ms, offset)) * self._day_factor(t_ms, offset))[None, :] / speed
        jammed = _JAM_DENSITY * (1.0 - speed / self.free_flow[:, None])
        density = np.maximum(free, jammed) * self.rng.lognormal(0.0, 0.05, speed.shape)
        per_interval = self.config.lanes * self.config.interval_ms / HOUR_MS
        return density * speed * per_interval, np.clip(density * _VEHICLE_LENGTH_MI, 0.0, 1.0)

    def next_chunk(self) -> list[dict]:
        cfg = self.config
        t_ms = cfg.start_ms + (self.step + np.arange(self.chunk, dtype=np.int64)) * cfg.interval_ms
        self.incidents += self._random_incidents(int(t_ms[0]), self.chunk * cfg.interval_ms)
        speed = self._speed(self._spread(self._congestion_sources(t_ms)))
        flow, occupancy = self._flow_occupancy(speed, t_ms)
        reported = ~self.dead[:, None] & (self.rng.random(speed.shape) >= cfg.dropout_prob)
        self.step += self.chunk
        if cfg.measure == "count":
            rate = flow * cfg.count_scale * self.count_weight[:, None]
            return self._count_readings(t_ms, self.rng.poisson(rate), reported)
        return self._readings(t_ms, speed, flow, occupancy, reported)

    def _count_readings(self, t_ms: np.ndarray, counts: np.ndarray, reported: np.ndarray) -> list[dict]:
        """Readings of kind count: vehicles counted in each interval."""
        net, network, counts = self.net, self.config.network, counts.tolist()
        out = []
        for k, t in enumerate(t_ms.tolist()):
            if t >= self.end_ms:
                break
            for s in np.flatnonzero(reported[:, k]).tolist():
                out.append({"sensor_id": net.ids[s], "network": network, "ts": t + int(self.phase_ms[s]),
                            "value": counts[s][k], "kind": "count", "unit": "vehicles",
                            "lat": float(net.lat[s]), "lon": float(net.lon[s])})
        return out

    def _readings(self, t_ms: np.ndarray, speed: np.ndarray, flow: np.ndarray,
                  occupancy: np.ndarray, reported: np.ndarray) -> list[dict]:
        net, network = self.net, self.config.network
        speed, flow, occupancy = speed.round(2).tolist(), flow.round(1).tolist(), occupancy.round(4).tolist()
        out = []
        for k, t in enumerate(t_ms.tolist()):
            if t >= self.end_ms:
                break
            for s in np.flatnonzero(reported[:, k]).tolist():
                only = self.speed_only[s]
                out.append({"sensor_id": net.ids[s], "network": network,
                            "ts": t + int(self.phase_ms[s]), "speed": speed[s][k],
                            "flow": None if only else flow[s][k],
                            "occupancy": None if only else occupancy[s][k],
                            "lat": float(net.lat[s]), "lon": float(net.lon[s])})
        return out


def _run(sim: _TrafficSim) -> Iterator[dict]:
    while not sim.finished:
        yield from sim.next_chunk()


def iter_traffic_readings(config: TrafficConfig = TrafficConfig()) -> Iterator[dict]:
    """Readings of all sensors in event-time order; endless when ``config.duration_hours`` is None."""
    return _run(_TrafficSim(config))


def write_traffic_files(workload: TrafficWorkload, folder: Path) -> tuple[Path, Path, Path]:
    """The workload as the files ``stream-app train traffic`` reads: readings CSV (sensor_id, ts and
    speed or count), edge list (source, target, distance in km) and sensors CSV (sensor_id, lat, lon)."""
    folder.mkdir(parents=True, exist_ok=True)
    readings, edges, sensors = folder / "readings.csv", folder / "edges.csv", folder / "sensors.csv"
    field = "count" if workload.readings and "value" in workload.readings[0] else "speed"
    rows = (f"{r['sensor_id']},{r['ts']},{r['value' if field == 'count' else 'speed']}\n" for r in workload.readings)
    readings.write_text(f"sensor_id,ts,{field}\n" + "".join(rows))
    edges.write_text("source,target,distance\n" + "".join(f"{a},{b},{d}\n" for a, b, d in workload.edges))
    sensors.write_text("sensor_id,lat,lon\n" + "".join(f"{s},{a},{o}\n" for s, a, o in workload.sensors))
    return readings, edges, sensors


def generate_traffic(config: TrafficConfig = TrafficConfig()) -> TrafficWorkload:
    """A finite workload: readings, sensor positions, corridor edges and ground-truth incidents."""
    if config.duration_hours is None:
        raise SimulationConfigError("TrafficConfig.duration_hours: a finite workload needs a duration")
    sim = _TrafficSim(config)
    readings = list(_run(sim))
    net = sim.net
    return TrafficWorkload(
        sensors=[(s, float(a), float(b)) for s, a, b in zip(net.ids, net.lat, net.lon, strict=True)],
        readings=readings,
        incidents=[i for i in sim.incidents if i.start_ms < sim.end_ms],
        edges=list(net.edges),
        dead_sensors=[s for s, dead in zip(net.ids, sim.dead, strict=True) if dead],
    )
