"""Road-sensor networks: sensor ids, optional coordinates and a weighted adjacency matrix.

File formats read by :meth:`SensorNetwork.from_files`:

- adjacency CSV: ``sensors`` lines of ``sensors`` comma-separated floats, no header
  (Los-loop's ``los_adj.csv``). Row/column ``i`` is the ``i``-th sensor id.
- sensors CSV, one of two shapes:

  * a header line of sensor ids, e.g. the first line of Los-loop's ``los_speed.csv``
    (``773869,767541,...``); any further lines are ignored;
  * a table with the header ``sensor_id,lat,lon`` and one sensor per line, in adjacency order
    (latitude and longitude in degrees, WGS84).

  Without a sensors CSV the ids are ``"0" .. "sensors-1"``.

Edge lists and sensor tables with projected coordinates are read by
:mod:`models.traffic.network_files`.

:meth:`SensorNetwork.from_coordinates` builds the adjacency the DCRNN way (Li et al., 2018):
``W_ij = exp(-d_ij^2 / sigma^2)`` for the distance ``d_ij`` in km (great-circle for WGS84
degrees, Euclidean for projected metres), ``sigma`` the standard deviation of the finite
distances, weights below ``threshold`` set to zero, zero diagonal.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.exceptions import ModelError

__all__ = ["SensorNetwork", "normalized_adjacency", "gaussian_kernel", "haversine_km", "EARTH_RADIUS_KM",
           "COORDINATE_SYSTEMS", "pairwise_km"]

logger = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088
#: How coordinates are given: (lat, lon) WGS84 degrees, or projected (x, y) metres (e.g. UTM).
COORDINATE_SYSTEMS = ("wgs84", "metres")
_BLOCK_ROWS = 512  # rows of the distance matrix computed at once (bounds memory for big networks)


@dataclass(frozen=True, eq=False)
class SensorNetwork:
    """A named set of sensors with a symmetric or directed weighted adjacency.

    ``coords``: [sensors, 2] (lat, lon) in degrees when ``crs`` is wgs84, (x, y) metres when it
    is metres, or None. ``adjacency``: [sensors, sensors] float32, ``adjacency[i, j]`` the weight
    of edge i -> j (the model lets sensor i read sensor j's values through it).
    """

    name: str
    sensor_ids: tuple[str, ...]
    coords: np.ndarray | None
    adjacency: np.ndarray
    crs: str = "wgs84"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        adjacency = np.asarray(self.adjacency, dtype=np.float32)
        n = len(self.sensor_ids)
        if adjacency.shape != (n, n):
            raise ModelError(f"network {self.name!r}: adjacency has shape {adjacency.shape}, "
                             f"expected ({n}, {n}) for {n} sensor ids")
        if not np.isfinite(adjacency).all():
            raise ModelError(f"network {self.name!r}: adjacency holds non-finite weights")
        index = {sensor_id: i for i, sensor_id in enumerate(self.sensor_ids)}
        if len(index) != n:
            raise ModelError(f"network {self.name!r}: sensor ids are not unique")
        if self.coords is not None and np.shape(self.coords) != (n, 2):
            raise ModelError(f"network {self.name!r}: coords have shape {np.shape(self.coords)}, "
                             f"expected ({n}, 2)")
        if self.crs not in COORDINATE_SYSTEMS:
            raise ModelError(f"network {self.name!r}: crs {self.crs!r} is not one of {COORDINATE_SYSTEMS}")
        object.__setattr__(self, "sensor_ids", tuple(str(s) for s in self.sensor_ids))
        object.__setattr__(self, "adjacency", adjacency)
        object.__setattr__(self, "_index", index)

    @property
    def n_sensors(self) -> int:
        """Number of sensors (nodes)."""
        return len(self.sensor_ids)

    @property
    def fingerprint(self) -> str:
        """Short hash of the sensor ids and adjacency weights (stored in checkpoints)."""
        digest = hashlib.sha256("\n".join(self.sensor_ids).encode())
        digest.update(np.ascontiguousarray(self.adjacency, dtype="<f4").tobytes())
        return digest.hexdigest()[:12]

    def index_of(self, sensor_id: str) -> int:
        """Position of ``sensor_id`` in ``sensor_ids``; ModelError if unknown."""
        try:
            return self._index[sensor_id]
        except KeyError:
            raise ModelError(f"sensor {sensor_id!r} is not in network {self.name!r}") from None

    def get_index(self, sensor_id: str) -> int | None:
        """Position of ``sensor_id``, or None if the network does not hold it."""
        return self._index.get(sensor_id)

    @classmethod
    def from_files(cls, name: str, adjacency_csv: str | Path,
                   sensors_csv: str | Path | None = None) -> SensorNetwork:
        """Read a network from an adjacency CSV and an optional sensors CSV (see module doc)."""
        adjacency = _read_adjacency(Path(adjacency_csv))
        if sensors_csv is None:
            ids, coords = tuple(str(i) for i in range(len(adjacency))), None
        else:
            ids, coords = _read_sensors(Path(sensors_csv))
        return cls(name=name, sensor_ids=ids, coords=coords, adjacency=adjacency)

    @classmethod
    def from_coordinates(cls, name: str, sensor_ids: Sequence[str], coords: np.ndarray, *,
                         sigma_km: float | None = None, threshold: float = 0.1,
                         max_neighbors: int | None = None, crs: str = "wgs84") -> SensorNetwork:
        """Gaussian-kernel adjacency from positions (DCRNN construction, see module doc).

        ``coords``: [sensors, 2] (lat, lon) in degrees, or (x, y) metres with ``crs="metres"``.
        ``max_neighbors`` keeps only each sensor's k nearest others (distances to the rest count
        as infinite, as unconnected roads do in DCRNN), which makes big networks sparse; the
        result is symmetrized by the maximum.
        """
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape != (len(sensor_ids), 2):
            raise ModelError(f"network {name!r}: coords have shape {coords.shape}, "
                             f"expected ({len(sensor_ids)}, 2)")
        distances = _pairwise_distances(coords, max_neighbors, crs)
        adjacency = gaussian_kernel(distances, sigma_km=sigma_km, threshold=threshold)
        if max_neighbors is not None:
            adjacency = np.maximum(adjacency, adjacency.T)
        return cls(name=name, sensor_ids=tuple(sensor_ids), coords=coords, adjacency=adjacency, crs=crs)


def gaussian_kernel(distances: np.ndarray, *, sigma_km: float | None = None,
                    threshold: float = 0.1) -> np.ndarray:
    """``exp(-d^2 / sigma^2)`` of [sensors, sensors] distances (inf = no edge), zero diagonal."""
    finite = distances[np.isfinite(distances) & ~np.eye(len(distances), dtype=bool)]
    if sigma_km is None:
        sigma_km = float(finite.std()) if finite.size else 1.0
    if sigma_km <= 0:
        raise ModelError(f"sigma_km must be positive, got {sigma_km}")
    with np.errstate(over="ignore"):
        weights = np.exp(-np.square(distances / sigma_km))
    weights[weights < threshold] = 0.0
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def haversine_km(lat1: npt.NDArray[np.floating], lon1: npt.NDArray[np.floating], lat2: npt.NDArray[np.floating],
                 lon2: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Great-circle distance in km between points given in degrees (numpy broadcasting)."""
    lat1, lon1, lat2, lon2 = (np.radians(v) for v in (lat1, lon1, lat2, lon2))
    a: npt.NDArray[np.float64] = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def normalized_adjacency(adj: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Renormalized adjacency ``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling), D the degree of A + I.

    ``adj``: [sensors, sensors] non-negative weights; returns [sensors, sensors] float32.
    """
    adj = np.asarray(adj, dtype=np.float64)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ModelError(f"adjacency must be square, got shape {adj.shape}")
    if (adj < 0).any():
        raise ModelError("adjacency weights must be non-negative")
    with_loops = adj + np.eye(len(adj))
    inv_sqrt_degree: npt.NDArray[np.float64] = 1.0 / np.sqrt(with_loops.sum(axis=1))
    return (with_loops * inv_sqrt_degree[:, None] * inv_sqrt_degree[None, :]).astype(np.float32)


def pairwise_km(rows: npt.NDArray[np.floating], coords: npt.NDArray[np.floating],
                crs: str = "wgs84") -> npt.NDArray[np.float64]:
    """[rows, sensors] km between two sets of points: great-circle for wgs84 (lat, lon) degrees,
    Euclidean for projected (x, y) metres."""
    if crs == "metres":
        return np.hypot(rows[:, :1] - coords[None, :, 0], rows[:, 1:] - coords[None, :, 1]) / 1000.0
    if crs != "wgs84":
        raise ModelError(f"coordinates must be one of {COORDINATE_SYSTEMS}, got {crs!r}")
    return haversine_km(rows[:, :1], rows[:, 1:], coords[None, :, 0], coords[None, :, 1])


def _pairwise_distances(coords: np.ndarray, max_neighbors: int | None, crs: str = "wgs84") -> np.ndarray:
    """[sensors, sensors] km, computed in row blocks; inf beyond the k nearest."""
    n = len(coords)
    if max_neighbors is not None and not 0 < max_neighbors < n:
        raise ModelError(f"max_neighbors must be in 1..{n - 1}, got {max_neighbors}")
    distances = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, _BLOCK_ROWS):
        rows = coords[start:start + _BLOCK_ROWS]
        block = pairwise_km(rows, coords, crs)
        if max_neighbors is not None:
            block = _keep_nearest(block, start, max_neighbors)
        distances[start:start + len(rows)] = block
    return distances


def _keep_nearest(block: np.ndarray, start: int, k: int) -> np.ndarray:
    """Set all but the k smallest off-diagonal distances of each row of ``block`` to inf."""
    block = block.copy()
    block[np.arange(len(block)), start + np.arange(len(block))] = np.inf
    nearest = np.argpartition(block, k - 1, axis=1)[:, :k]
    kept = np.full_like(block, np.inf)
    np.put_along_axis(kept, nearest, np.take_along_axis(block, nearest, axis=1), axis=1)
    kept[np.arange(len(block)), start + np.arange(len(block))] = 0.0
    return kept


def _read_adjacency(path: Path) -> np.ndarray:
    """Square float matrix from a header-less CSV."""
    try:
        adjacency = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ModelError(f"adjacency {path} could not be read: {exc}") from exc
    if adjacency.shape[0] != adjacency.shape[1]:
        raise ModelError(f"adjacency {path} is {adjacency.shape[0]}x{adjacency.shape[1]}, "
                         "expected a square matrix")
    return adjacency


def _read_sensors(path: Path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Sensor ids (and coordinates for the sensor_id,lat,lon shape) from a sensors CSV."""
    try:
        with path.open(newline="") as handle:
            rows = csv.reader(handle)
            header = [cell.strip() for cell in next(rows, [])]
            if [h.lower() for h in header[:3]] != ["sensor_id", "lat", "lon"]:
                return tuple(header), None
            table = [row for row in rows if row]
    except OSError as exc:
        raise ModelError(f"sensors file {path} could not be read: {exc}") from exc
    try:
        coords = np.array([[float(r[1]), float(r[2])] for r in table], dtype=np.float64)
    except (IndexError, ValueError) as exc:
        raise ModelError(f"sensors file {path}: bad sensor_id,lat,lon row ({exc})") from exc
    return tuple(r[0].strip() for r in table), coords.reshape(-1, 2)
