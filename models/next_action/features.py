"""Per-event feature encoding shared by training and streaming, so the two never drift apart."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import h3
import numpy as np

from models.exceptions import ModelError
from models.next_action.history import Profile, ProfileSnapshots, consumed_bits, profile_decay, profile_snapshots

__all__ = [
    "PAD_ID", "OOV_ID", "N_DENSE", "DENSE_NAMES", "STATIC_DENSE", "TIME_DENSE", "LOCATION_DENSE",
    "EventRecord", "Vocabulary", "FeatureSpec", "EncodedEvents", "event_row_dtype", "concat_rows",
    "encode_events", "encode_next_events", "encode_runs", "haversine_km", "time_features", "cell_bucket",
    "consumed_columns", "consumed_index", "encode_profiles",
]

logger = logging.getLogger(__name__)

PAD_ID = 0
OOV_ID = 1
_SPECIALS = ("<pad>", "<oov>")

# Layout of EncodedEvents.dense; a feature's index never moves (checkpoints depend on it).
DENSE_NAMES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos", "log_gap_s",
               "lat_norm", "lon_norm", "log_moved_km", "has_location")
N_DENSE = len(DENSE_NAMES)
# Features of the event alone (usable as attention keys of stored window events) ...
STATIC_DENSE = (0, 1, 2, 3, 5, 6, 8)
# ... and which of all the features belong to the time / location groups.
TIME_DENSE = (0, 1, 2, 3, 4)
LOCATION_DENSE = (5, 6, 7, 8)

_MS_PER_DAY = 86_400_000
_EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One user event as plain data: action token, event time (epoch ms, UTC), optional location."""

    token: str
    ts_ms: int
    lat: float | None = None
    lon: float | None = None


class Vocabulary:
    """Action tokens <-> ids; id 0 is padding, id 1 is out-of-vocabulary, then the known tokens."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens: list[str] = list(_SPECIALS)
        self._ids: dict[str, int] = {}
        for token in tokens:
            if not isinstance(token, str):
                raise ModelError(f"vocabulary tokens must be str, got {type(token).__name__} {token!r}")
            if token in self._ids:
                raise ModelError(f"vocabulary token {token!r} appears twice")
            self._ids[token] = len(self._tokens)
            self._tokens.append(token)

    @classmethod
    def build(cls, tokens: Iterable[str], *, min_count: int = 1) -> Vocabulary:
        """Vocabulary of tokens seen at least ``min_count`` times, most frequent first (ties by token)."""
        counts: dict[str, int] = {}
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
        kept = [t for t, c in counts.items() if c >= min_count]
        return cls(sorted(kept, key=lambda t: (-counts[t], t)))

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def encode(self, token: str) -> int:
        """Id of ``token``; OOV_ID when unknown."""
        return self._ids.get(token, OOV_ID)

    def encode_many(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids as int64 [n]."""
        get = self._ids.get
        return np.fromiter((get(t, OOV_ID) for t in tokens), dtype=np.int64)

    def decode(self, token_id: int) -> str:
        """Token of ``token_id`` (the specials decode to "<pad>" and "<oov>")."""
        if not 0 <= token_id < len(self._tokens):
            raise ModelError(f"token id {token_id} is outside the vocabulary (size {len(self._tokens)})")
        return self._tokens[token_id]

    @property
    def ids(self) -> dict[str, int]:
        """Token -> id (read-only by convention; the specials are not in it)."""
        return self._ids

    def to_list(self) -> list[str]:
        """The known tokens in id order, specials left out: what a checkpoint stores."""
        return self._tokens[len(_SPECIALS):]

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Inverse of ``to_list``."""
        return cls(tokens)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """What the encoding needs beyond the events: location normalization and the spatial cells."""

    lat_mean: float = 0.0
    lat_std: float = 1.0
    lon_mean: float = 0.0
    lon_std: float = 1.0
    h3_resolution: int = 8
    n_cell_buckets: int = 4096
    # The user's long-term profile (models.next_action.history.Profile): slots kept, half-life in
    # events (inf: no decay); 0 slots = no profile (checkpoints from before it existed).
    profile_size: int = 0
    profile_half_life: float = math.inf
    # The filter of consumed actions (a Bloom filter): bits and hashes; 0 hashes = no filter.
    consumed_bits: int = 0
    consumed_hashes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.h3_resolution <= 15:
            raise ModelError(f"h3_resolution must be in 0..15, got {self.h3_resolution}")
        if self.n_cell_buckets < 1:
            raise ModelError(f"n_cell_buckets must be >= 1, got {self.n_cell_buckets}")
        if self.lat_std <= 0 or self.lon_std <= 0:
            raise ModelError("lat_std and lon_std must be positive")
        if self.profile_size < 0:
            raise ModelError(f"profile_size must be >= 0, got {self.profile_size}")
        profile_decay(self.profile_half_life)  # raises for a half-life <= 0
        if self.consumed_hashes < 0 or (self.consumed_hashes and self.consumed_bits < 8):
            raise ModelError(f"a consumed-action filter needs >= 8 bits and >= 0 hashes, got "
                             f"{self.consumed_bits} bits and {self.consumed_hashes} hashes")

    @property
    def profile_decay(self) -> float:
        """Per-event decay factor of the profile's counts."""
        return profile_decay(self.profile_half_life)

    @classmethod
    def fit(cls, events: Iterable[EventRecord], **kwargs: Any) -> FeatureSpec:
        """Normalization statistics from the located events (training data only)."""
        lats, lons = [], []
        for event in events:
            if event.lat is not None and event.lon is not None:
                lats.append(event.lat)
                lons.append(event.lon)
        if not lats:
            return cls(**kwargs)
        lat, lon = np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64)
        return cls(lat_mean=float(lat.mean()), lat_std=float(lat.std()) or 1.0,
                   lon_mean=float(lon.mean()), lon_std=float(lon.std()) or 1.0, **kwargs)

    def to_dict(self) -> dict[str, float | int]:
        return {"lat_mean": self.lat_mean, "lat_std": self.lat_std, "lon_mean": self.lon_mean,
                "lon_std": self.lon_std, "h3_resolution": self.h3_resolution,
                "n_cell_buckets": self.n_cell_buckets, "profile_size": self.profile_size,
                "profile_half_life": self.profile_half_life, "consumed_bits": self.consumed_bits,
                "consumed_hashes": self.consumed_hashes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**data)


@dataclass(frozen=True)
class EncodedEvents:
    """Model inputs for one user's events, numpy arrays over [time].

    tokens int64 [time]; cells int64 [time] (0 = no location, else 1..n_cell_buckets);
    ts_ms int64 [time]; lat/lon float64 [time] in degrees (0 where absent);
    dense float32 [time, N_DENSE] laid out as DENSE_NAMES; consumed int64 [time, hashes]: the
    event's bits in the consumed-action filter (no columns without a filter).
    """

    tokens: np.ndarray
    cells: np.ndarray
    ts_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    dense: np.ndarray
    consumed: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to_rows(self) -> np.ndarray:
        """The events as one record array [time] of ``event_row_dtype`` (field names as here)."""
        rows = np.empty(len(self), event_row_dtype(self.consumed.shape[1]))
        for name in _ROW_FIELDS:
            rows[name] = getattr(self, name)
        return rows

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> EncodedEvents:
        """Inverse of ``to_rows``."""
        return cls(**{name: np.ascontiguousarray(rows[name]) for name in _ROW_FIELDS})


_ROW_FIELDS = ("tokens", "cells", "ts_ms", "lat", "lon", "dense", "consumed")


@lru_cache(maxsize=16)
def event_row_dtype(hashes: int) -> np.dtype:
    """One encoded event as a numpy record (the fields of ``EncodedEvents``): a serving window
    cache is one array of these, so appending to, trimming and batching a user's window are one
    numpy call each instead of one per field."""
    return np.dtype([("tokens", np.int64), ("cells", np.int64), ("ts_ms", np.int64), ("lat", np.float64),
                     ("lon", np.float64), ("consumed", np.int64, (hashes,)), ("dense", np.float32, (N_DENSE,))],
                    align=True)


def concat_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` of contiguous record arrays of one dtype (at least one part), as bytes:
    numpy would check the fields of every part in Python, which costs more than the copy."""
    dtype = parts[0].dtype
    return np.concatenate([p.view(np.uint8) for p in parts]).view(dtype)


def time_features(ts_ms: np.ndarray) -> np.ndarray:
    """Hour-of-day and weekday (Monday = 0) as sin/cos, UTC: float64 [time, 4]."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    ms_of_day = np.mod(ts_ms, _MS_PER_DAY)
    hour_angle = 2.0 * math.pi * ms_of_day / _MS_PER_DAY
    weekday = np.mod(np.floor_divide(ts_ms, _MS_PER_DAY) + 3, 7)  # 1970-01-01 was a Thursday
    day_angle = 2.0 * math.pi * weekday / 7.0
    return np.stack([np.sin(hour_angle), np.cos(hour_angle), np.sin(day_angle), np.cos(day_angle)], axis=-1)


def haversine_km(lat1: np.ndarray | float, lon1: np.ndarray | float,
                 lat2: np.ndarray | float, lon2: np.ndarray | float) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    km: np.ndarray = 2.0 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return km


@lru_cache(maxsize=65_536)
def cell_bucket(lat: float, lon: float, resolution: int, n_buckets: int) -> int:
    """H3 cell of a point hashed into 1..n_buckets with blake2b, stable across runs and machines.

    (The cell's own integer modulo n is no hash: its unused low digits are all ones, so every
    cell of a resolution below 12 lands in the same bucket when n is a power of two.)
    """
    cell = h3.latlng_to_cell(lat, lon, resolution)
    digest = hashlib.blake2b(cell.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_buckets + 1


def encode_events(events: Sequence[EventRecord], vocab: Vocabulary, spec: FeatureSpec, *,
                  prev_ts_ms: int | None = None, prev_lat: float | None = None,
                  prev_lon: float | None = None, cells: bool = True) -> EncodedEvents:
    """Encode one user's consecutive events; ``prev_*`` describe the event before the first one.

    Gaps and moves are taken from each event's predecessor (the ``prev_*`` values for the first
    event; 0 when there is none). An event older than its predecessor gets a gap of 0.
    ``cells=False`` leaves every cell 0 (for a model without a cell embedding: no H3 lookups).
    """
    return encode_runs(events, [0] if len(events) else [], [(prev_ts_ms, prev_lat, prev_lon)][:len(events)],
                       vocab, spec, cells=cells)


def encode_next_events(events: Sequence[EventRecord],
                       previous: Sequence[tuple[int | None, float | None, float | None]],
                       vocab: Vocabulary, spec: FeatureSpec, *, cells: bool = True) -> EncodedEvents:
    """Encode the next event of several users at once: ``previous[i]`` is (ts_ms, lat, lon) of
    the event before ``events[i]`` (None when unknown). Same features as ``encode_events``."""
    if len(previous) != len(events):
        raise ModelError(f"{len(events)} events but {len(previous)} previous events")
    return _encode(events, _Columns.of(events), _Columns.of_previous(previous), vocab, spec, cells)


def encode_runs(events: Sequence[EventRecord], starts: Sequence[int] | np.ndarray,
                previous: Sequence[tuple[int | None, float | None, float | None]],
                vocab: Vocabulary, spec: FeatureSpec, *, cells: bool = True) -> EncodedEvents:
    """Encode several users' consecutive events at once: ``events`` holds the runs back to back,
    run i starting at index ``starts[i]`` (increasing, the first 0) after the event ``previous[i]``
    ((ts_ms, lat, lon), None when unknown). Same features as ``encode_events`` per run."""
    if len(starts) != len(previous) or (len(events) and (not len(starts) or starts[0] != 0)):
        raise ModelError(f"{len(starts)} run starts (the first must be 0) for {len(previous)} previous events "
                         f"and {len(events)} events")
    now = _Columns.of(events)
    first = _Columns.of_previous(previous)
    at = np.asarray(starts, dtype=np.int64)
    before = []
    for column, head in zip(now, first, strict=True):
        shifted = np.empty_like(column)
        shifted[1:] = column[:-1]
        shifted[at] = head
        before.append(shifted)
    return _encode(events, now, _Columns(*before), vocab, spec, cells)


class _Columns(NamedTuple):
    """Event times and locations as arrays [n]; ``has_ts``/``has`` say which are known."""

    ts: np.ndarray
    has_ts: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    has: np.ndarray

    @classmethod
    def of(cls, events: Sequence[EventRecord]) -> _Columns:
        n = len(events)
        return cls._located(np.array([e.ts_ms for e in events], dtype=np.int64).reshape(n), np.ones(n, dtype=bool),
                            [e.lat for e in events], [e.lon for e in events])

    @classmethod
    def of_previous(cls, rows: Sequence[tuple[int | None, float | None, float | None]]) -> _Columns:
        n = len(rows)
        times = [t for t, _, _ in rows]
        return cls._located(np.array([0 if t is None else int(t) for t in times], dtype=np.int64).reshape(n),
                            np.array([t is not None for t in times], dtype=bool).reshape(n),
                            [a for _, a, _ in rows], [o for _, _, o in rows])

    @classmethod
    def _located(cls, ts: np.ndarray, has_ts: np.ndarray, lats: list[float | None],
                 lons: list[float | None]) -> _Columns:
        """Coordinates are known where both are given (0.0 elsewhere)."""
        has = np.array([a is not None and o is not None for a, o in zip(lats, lons, strict=True)],
                       dtype=bool).reshape(len(lats))
        lat = np.array(lats, dtype=np.float64).reshape(len(lats))  # None reads as nan, zeroed below
        lon = np.array(lons, dtype=np.float64).reshape(len(lons))
        if not has.all():
            lat[~has], lon[~has] = 0.0, 0.0
        return cls(ts=ts, has_ts=has_ts, lat=lat, lon=lon, has=has)


def _encode(events: Sequence[EventRecord], now: _Columns, before: _Columns, vocab: Vocabulary,
            spec: FeatureSpec, cells: bool = True) -> EncodedEvents:
    """The features of events given their own columns and their predecessors' columns."""
    n = len(events)
    if cells:
        cell_ids = np.array([cell_bucket(a, o, spec.h3_resolution, spec.n_cell_buckets) if h else 0
                             for a, o, h in zip(now.lat.tolist(), now.lon.tolist(), now.has.tolist(), strict=True)],
                            dtype=np.int64).reshape(n)
    else:
        cell_ids = np.zeros(n, dtype=np.int64)
    gap_s = np.where(before.has_ts, np.maximum(now.ts - before.ts, 0) / 1000.0, 0.0)
    moved = now.has & before.has
    km = np.where(moved, haversine_km(before.lat, before.lon, now.lat, now.lon), 0.0)
    dense = np.zeros((n, N_DENSE), dtype=np.float64)
    dense[:, 0:4] = time_features(now.ts)
    dense[:, 4] = np.log1p(gap_s)
    dense[:, 5] = np.where(now.has, (now.lat - spec.lat_mean) / spec.lat_std, 0.0)
    dense[:, 6] = np.where(now.has, (now.lon - spec.lon_mean) / spec.lon_std, 0.0)
    dense[:, 7] = np.log1p(km)
    dense[:, 8] = now.has
    tokens = [e.token for e in events]
    get = vocab.ids.get
    return EncodedEvents(tokens=np.array([get(t, OOV_ID) for t in tokens], dtype=np.int64).reshape(n),
                         cells=cell_ids, ts_ms=now.ts, lat=now.lat, lon=now.lon, dense=dense.astype(np.float32),
                         consumed=consumed_columns(tokens, spec))


def consumed_columns(tokens: Sequence[str], spec: FeatureSpec) -> np.ndarray:
    """Each token's bits in the consumed-action filter of ``spec``: int64 [n, hashes]."""
    n_bits, n_hashes = spec.consumed_bits, spec.consumed_hashes
    if not n_hashes:
        return np.zeros((len(tokens), 0), dtype=np.int64)
    return np.array([consumed_bits(t, n_bits, n_hashes) for t in tokens], dtype=np.int64).reshape(-1, n_hashes)


def consumed_index(vocab: Vocabulary, spec: FeatureSpec) -> np.ndarray:
    """The consumed-action filter bits of every vocabulary id (specials included): int64 [vocab, hashes]."""
    return consumed_columns([vocab.decode(i) for i in range(len(vocab))], spec)


def encode_profiles(events: Sequence[EventRecord], vocab: Vocabulary, spec: FeatureSpec,
                    profile: Profile | None = None) -> ProfileSnapshots:
    """The user's profile after each of ``events``, starting from ``profile`` (updated in place;
    default an empty one of ``spec.profile_size`` slots)."""
    start = Profile(spec.profile_size) if profile is None else profile
    return profile_snapshots((e.token for e in events), vocab.ids, start, spec.profile_decay, oov_id=OOV_ID)
