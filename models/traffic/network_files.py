"""Sensor networks from a sensors table and/or an edge list, with every rule applied counted.

Sensors file (CSV with a header): an id column (``sensor_id`` or ``id``) and, optionally,
coordinates: ``lat``/``lon`` (WGS84 degrees, ``coordinates="wgs84"``) or ``x``/``y`` (projected
metres, e.g. UTM, ``coordinates="metres"``). Its order is the network's sensor order.

Edge list (CSV with a header): ``source``, ``target`` (or ``from``/``to``) and optionally
``distance`` and/or ``weight``. How a link becomes an adjacency weight:

- ``weight`` given: used as is (must be a positive finite number);
- else ``distance`` given: DCRNN's Gaussian kernel ``exp(-(d / sigma)^2)`` with ``sigma`` the root
  mean square of the distances given in the file (any unit: only d / sigma matters), so a link of
  typical length weighs exp(-1) = 0.37, shorter ones more, longer ones less. DCRNN takes the
  standard deviation over all pairwise road distances; over the links alone (similar lengths) it
  is small and would make every link negligible. No threshold: a weight the kernel would make
  smaller than ``MIN_KERNEL_WEIGHT`` is raised to it (counted), so a given link always counts;
- else: weight 1.

Undirected (the default): each link is set both ways. Directed: ``source -> target`` only, which
lets the source sensor read the target's values (a sensor feels the congestion downstream of it).
Self-loops are skipped (each sensor always sees itself) and duplicate links are merged keeping the
larger weight; both are counted in :attr:`NetworkBuild.notes`. A link naming a sensor the sensors
file lacks is an error naming the row.

Without an edge list, sensors with coordinates are linked to their ``neighbors`` nearest others
(Gaussian kernel with sigma the root mean square of those distances, symmetric, no threshold);
without either, the sensors stand alone (the model still forecasts each from its own history).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.exceptions import ModelError
from models.traffic.graph import COORDINATE_SYSTEMS, SensorNetwork, pairwise_km

__all__ = ["NetworkBuild", "SensorTable", "build_network", "read_sensor_table", "read_edge_list",
           "MIN_KERNEL_WEIGHT", "DEFAULT_NEIGHBORS"]

logger = logging.getLogger(__name__)

MIN_KERNEL_WEIGHT = 0.01
DEFAULT_NEIGHBORS = 8
_ID_COLUMNS = ("sensor_id", "id", "sensor")
_COORDINATE_COLUMNS = {"wgs84": (("lat", "latitude"), ("lon", "lng", "longitude")),
                       "metres": (("x", "easting"), ("y", "northing"))}
_SOURCE_COLUMNS = ("source", "from", "src")
_TARGET_COLUMNS = ("target", "to", "dst")


@dataclass(frozen=True)
class SensorTable:
    """Sensor ids in file order and their coordinates [sensors, 2] (None without coordinate columns)."""

    ids: tuple[str, ...]
    coords: np.ndarray | None
    crs: str


@dataclass(frozen=True)
class Edge:
    """One link of an edge list: its 1-based data row, ends, and optional distance and weight."""

    row: int
    source: str
    target: str
    distance: float | None
    weight: float | None


@dataclass(frozen=True)
class NetworkBuild:
    """The network and one line per rule that changed or built links (for the user to read)."""

    network: SensorNetwork
    notes: tuple[str, ...]

    @property
    def links(self) -> int:
        """Non-zero off-diagonal adjacency entries (a two-way link counts twice)."""
        adjacency = self.network.adjacency
        return int((adjacency != 0).sum() - (np.diagonal(adjacency) != 0).sum())


def build_network(name: str, *, sensors: str | Path | None = None, edges: str | Path | None = None,
                  directed: bool = False, coordinates: str = "wgs84", neighbors: int = DEFAULT_NEIGHBORS,
                  extra_ids: Iterable[str] = ()) -> NetworkBuild:
    """The network of a sensors file and/or an edge list (see the module doc for the rules).

    ``extra_ids``: sensors known from elsewhere (the readings); without a sensors file they join
    the network after the edge list's sensors (sorted); with one, they are not added.
    """
    table = read_sensor_table(sensors, coordinates) if sensors is not None else None
    edge_list = read_edge_list(edges) if edges is not None else None
    ids = _sensor_order(table, edge_list, extra_ids)
    if not ids:
        raise ModelError("the network has no sensors: give a sensors file, an edge list, or readings")
    notes: list[str] = []
    if edge_list is not None:
        adjacency = _edge_adjacency(edge_list, ids, directed, edges, notes)
    elif table is not None and table.coords is not None and len(ids) > 1:
        adjacency = _nearest_adjacency(table, min(neighbors, len(ids) - 1), notes)
    else:
        adjacency = np.zeros((len(ids), len(ids)), dtype=np.float32)
        notes.append("no edge list and no coordinates: the sensors have no links (each is forecast from "
                     "its own history)")
    coords = table.coords if table is not None else None
    crs = table.crs if table is not None else "wgs84"
    network = SensorNetwork(name=name, sensor_ids=ids, coords=coords, adjacency=adjacency, crs=crs)
    return NetworkBuild(network=network, notes=tuple(notes))


def read_sensor_table(path: str | Path, coordinates: str = "wgs84") -> SensorTable:
    """Sensor ids (file order) and optional coordinates; ModelError naming the row and the fix."""
    if coordinates not in COORDINATE_SYSTEMS:
        raise ModelError(f"coordinates must be one of {', '.join(COORDINATE_SYSTEMS)}, got {coordinates!r}")
    path = Path(path)
    header, rows = _read_csv(path, "sensors file")
    id_column = _column(header, _ID_COLUMNS, path, "the sensor id")
    first, second = (_optional_column(header, names) for names in _COORDINATE_COLUMNS[coordinates])
    other = next(crs for crs in COORDINATE_SYSTEMS if crs != coordinates)
    if first is None and any(_optional_column(header, names) is not None for names in _COORDINATE_COLUMNS[other]):
        raise ModelError(f"{path}: has {other} coordinate columns but coordinates are read as {coordinates}; "
                         f"pass --coordinates {other} (wgs84: lat,lon degrees; metres: x,y projected metres)")
    if (first is None) != (second is None):
        wanted = " and ".join("/".join(names) for names in _COORDINATE_COLUMNS[coordinates])
        raise ModelError(f"{path}: has one coordinate column but not the other; give both {wanted}")
    ids: list[str] = []
    points: list[list[float]] = []
    seen: dict[str, int] = {}  # sensor id -> row number
    for number, row in rows:
        sensor_id = _cell(row, id_column)
        if not sensor_id:
            raise ModelError(f"{path}, row {number}: empty sensor id; give every sensor an id")
        if sensor_id in seen:
            raise ModelError(f"{path}, row {number}: sensor {sensor_id!r} already on row {seen[sensor_id]}; "
                             "list each sensor once")
        seen[sensor_id] = number
        ids.append(sensor_id)
        if first is not None and second is not None:
            points.append(_coordinate_pair(row, first, second, coordinates, path, number))
    coords = np.array(points, dtype=np.float64).reshape(-1, 2) if first is not None else None
    return SensorTable(ids=tuple(ids), coords=coords, crs=coordinates)


def read_edge_list(path: str | Path) -> list[Edge]:
    """Links of an edge-list CSV; ModelError naming the row and the fix."""
    path = Path(path)
    header, rows = _read_csv(path, "edge list")
    source = _column(header, _SOURCE_COLUMNS, path, "the link's first sensor")
    target = _column(header, _TARGET_COLUMNS, path, "the link's second sensor")
    distance = _optional_column(header, ("distance", "distance_km", "distance_m", "length"))
    weight = _optional_column(header, ("weight",))
    edges = []
    for number, row in rows:
        ends = _cell(row, source), _cell(row, target)
        if not all(ends):
            raise ModelError(f"{path}, row {number}: a link needs both a source and a target sensor id")
        edges.append(Edge(row=number, source=ends[0], target=ends[1],
                          distance=_number(row, distance, path, number, "distance", allow_zero=True),
                          weight=_number(row, weight, path, number, "weight", allow_zero=False)))
    return edges


def _sensor_order(table: SensorTable | None, edges: list[Edge] | None, extra_ids: Iterable[str]) -> tuple[str, ...]:
    """The sensors file's order; else the edge list's first appearances, then the other sensors sorted."""
    if table is not None:
        return table.ids
    ordered: dict[str, None] = {}
    for edge in edges or ():
        ordered.setdefault(edge.source)
        ordered.setdefault(edge.target)
    for sensor_id in sorted(set(extra_ids) - set(ordered)):
        ordered.setdefault(sensor_id)
    return tuple(ordered)


def _edge_adjacency(edges: list[Edge], ids: Sequence[str], directed: bool, path: str | Path | None,
                    notes: list[str]) -> np.ndarray:
    """[sensors, sensors] weights of the links (module doc rules), the rules' counts in ``notes``."""
    index = {sensor_id: i for i, sensor_id in enumerate(ids)}
    adjacency = np.zeros((len(ids), len(ids)), dtype=np.float64)
    weights, floored = _edge_weights(edges)
    self_loops = merged = 0
    for edge, weight in zip(edges, weights, strict=True):
        unknown = [end for end in (edge.source, edge.target) if end not in index]
        if unknown:
            raise ModelError(f"{path}, row {edge.row}: sensor {unknown[0]!r} is not in the sensors file; "
                             "add it there or remove the link")
        i, j = index[edge.source], index[edge.target]
        if i == j:
            self_loops += 1
            continue
        pairs = [(i, j)] if directed else [(i, j), (j, i)]
        merged += adjacency[i, j] > 0
        for a, b in pairs:
            adjacency[a, b] = max(adjacency[a, b], weight)
    kept = len(edges) - self_loops - merged
    notes.append(f"{len(edges)} links read from {path}: {kept} kept as {'directed' if directed else 'two-way'} "
                 f"links, {merged} duplicates merged (larger weight kept), {self_loops} self-loops skipped "
                 "(each sensor always sees itself)")
    if floored:
        notes.append(f"{floored} links are long for the kernel (weight below {MIN_KERNEL_WEIGHT}) and were "
                     f"kept at weight {MIN_KERNEL_WEIGHT}")
    return adjacency.astype(np.float32)


def _edge_weights(edges: list[Edge]) -> tuple[list[float], int]:
    """Each link's weight (given weight, else kernel of its distance, else 1) and how many were floored."""
    distances = np.array([e.distance for e in edges if e.weight is None and e.distance is not None])
    sigma = _kernel_sigma(distances)
    weights, floored = [], 0
    for edge in edges:
        if edge.weight is not None:
            weights.append(edge.weight)
        elif edge.distance is not None:
            kernel = math.exp(-((edge.distance / sigma) ** 2)) if sigma > 0 else 1.0
            floored += kernel < MIN_KERNEL_WEIGHT
            weights.append(max(kernel, MIN_KERNEL_WEIGHT))
        else:
            weights.append(1.0)
    return weights, floored


def _kernel_sigma(distances: np.ndarray) -> float:
    """Root mean square of the distances (0 without any, or when all are 0)."""
    if distances.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(distances))))


def _nearest_adjacency(table: SensorTable, k: int, notes: list[str]) -> np.ndarray:
    """Symmetric Gaussian-kernel links of every sensor to its k nearest others (no threshold)."""
    assert table.coords is not None  # checked by the caller
    coords, n = table.coords, len(table.ids)
    distances = pairwise_km(coords, coords, table.crs)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    picked = np.take_along_axis(distances, nearest, axis=1)
    sigma = _kernel_sigma(picked[np.isfinite(picked)])
    weights = np.exp(-np.square(picked / sigma)) if sigma > 0 else np.ones_like(picked)
    adjacency = np.zeros((n, n), dtype=np.float64)
    np.put_along_axis(adjacency, nearest, np.maximum(weights, MIN_KERNEL_WEIGHT), axis=1)
    adjacency = np.maximum(adjacency, adjacency.T)
    notes.append(f"no edge list: each sensor linked to its {k} nearest (Gaussian kernel, sigma {sigma:.3g} km, "
                 f"symmetric): {int((adjacency > 0).sum()) // 2} two-way links")
    return adjacency.astype(np.float32)


def _read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Lower-cased header and the non-empty data rows with their 1-based numbers."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip().lower() for cell in next(reader, [])]
            rows = [(number, row) for number, row in enumerate(reader, start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelError(f"{what} {path} could not be read: {exc}") from exc
    if not header:
        raise ModelError(f"{what} {path} is empty; it needs a header line and one row per entry")
    return header, rows


def _column(header: list[str], names: Sequence[str], path: Path, meaning: str) -> int:
    """Position of the first of ``names`` in the header; ModelError listing what is there."""
    position = _optional_column(header, names)
    if position is None:
        raise ModelError(f"{path}: no column for {meaning} (looked for {', '.join(names)}; the header has "
                         f"{', '.join(header)}); rename that column")
    return position


def _optional_column(header: list[str], names: Sequence[str]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


def _cell(row: list[str], column: int) -> str:
    return row[column].strip() if column < len(row) else ""


def _number(row: list[str], column: int | None, path: Path, number: int, name: str, *,
            allow_zero: bool) -> float | None:
    """The cell as a non-negative (or positive) finite float; None when absent or empty."""
    if column is None or not _cell(row, column):
        return None
    text = _cell(row, column)
    try:
        value = float(text)
    except ValueError:
        raise ModelError(f"{path}, row {number}: {name} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = "a non-negative finite number" if allow_zero else \
            "a positive finite number (remove the row to leave the link out)"
        raise ModelError(f"{path}, row {number}: {name} {text} must be {rule}")
    return value


def _coordinate_pair(row: list[str], first: int, second: int, crs: str, path: Path, number: int) -> list[float]:
    """(lat, lon) or (x, y) of one sensors row, range-checked for WGS84."""
    try:
        a, b = float(_cell(row, first)), float(_cell(row, second))
    except ValueError:
        raise ModelError(f"{path}, row {number}: coordinates must be numbers") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ModelError(f"{path}, row {number}: coordinates must be finite")
    if crs == "wgs84" and not (-90 <= a <= 90 and -180 <= b <= 180):
        raise ModelError(f"{path}, row {number}: ({a}, {b}) is not a WGS84 latitude/longitude; for projected "
                         "coordinates in metres name the columns x,y and pass --coordinates metres")
    return [a, b]
