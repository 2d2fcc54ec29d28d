"""Per-user serving state and its versioned binary encoding (what a worker's table stores)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from models.exceptions import ModelError
from models.next_action.anomaly import SurpriseState
from models.next_action.features import DENSE_NAMES, EventRecord
from models.next_action.history import ConsumedFilter, Profile

__all__ = ["STATE_FORMAT_VERSION", "UserState", "WindowEvent", "ActionEvent"]

STATE_FORMAT_VERSION = 2
_READABLE = (1, 2)
_MAGIC = b"NA"
# Format 1: magic, format version, flags, last_ts_ms, last_lat, last_lon, event_count, hidden size,
# window length, model version length. Then: the model version (utf-8), hidden (float32), and the
# window as columns: ts_ms (int64), located (uint8), lat and lon (float64, 0 when not located),
# token byte lengths (uint16), then the utf-8 tokens back to back. All little-endian.
# Format 2 appends to that header: profile slots, filter bits, filter hashes, surprise state
# length; and after the window: the profile (occupied slots uint32, their weights float64, token
# byte lengths uint16, tokens),
# the consumed filter (packed bits) and the surprise state (models.next_action.anomaly).
_HEADER_V1 = struct.Struct("<2sBBqddQIIH")
_HEADER_V2 = struct.Struct("<2sBBqddQIIHIIBI")
_HAS_HIDDEN, _HAS_LAST_TS, _HAS_LAST_LOCATION, _HAS_PROFILE, _HAS_FILTER, _HAS_SURPRISE = 1, 2, 4, 8, 16, 32
_HAS_LOCATION_DENSE = DENSE_NAMES.index("has_location")
_WINDOW_COLUMNS = (("ts_ms", "<i8"), ("located", "u1"), ("lat", "<f8"), ("lon", "<f8"), ("token_bytes", "<u2"))

# The serving API's names for the one event record of models.next_action.features: an event kept in a user's
# window (its token stays a string so any model can reuse it), and a user's new event to predict from.
WindowEvent: TypeAlias = EventRecord
ActionEvent: TypeAlias = EventRecord


@dataclass(eq=False)
class UserState:
    """Everything kept per user between events (compared field by field, not with ==).

    ``window``: the recent events; ``hidden``: the GRU state; ``profile``: the user's decayed
    action counts over the whole history; ``consumed``: the filter of actions already done (only
    for models that exclude them); ``surprise``: behavior anomaly scoring's running state. A state
    from format 1 has no profile or filter: a predictor seeds them from the window.

    Change ``window`` only through ``update_window`` (the predictors do): a private, unserialized
    cache of its encoding follows it within a process.
    """

    hidden: np.ndarray | None = None
    window: list[WindowEvent] = field(default_factory=list)
    last_ts_ms: int | None = None
    last_lat: float | None = None
    last_lon: float | None = None
    event_count: int = 0
    model_version: str = ""
    profile: Profile | None = None
    consumed: ConsumedFilter | None = None
    surprise: SurpriseState | None = None
    # The window encoded for ``model_version``, one record per event (``features.event_row_dtype``;
    # not serialized; rebuilt when missing or stale).
    _encoded: np.ndarray | None = field(default=None, init=False, repr=False)
    # The profile slots' vocabulary ids for ``model_version`` (not serialized).
    _profile_ids: np.ndarray | None = field(default=None, init=False, repr=False)

    def to_bytes(self) -> bytes:
        """Versioned little-endian binary encoding (hidden as raw float32, tokens as utf-8)."""
        hidden = b"" if self.hidden is None else np.ascontiguousarray(self.hidden, dtype="<f4").tobytes()
        version = self.model_version.encode("utf-8")
        slots = self.profile.filled() if self.profile is not None else None
        surprise = self.surprise.to_bytes() if self.surprise is not None else b""
        flags = (_HAS_HIDDEN if self.hidden is not None else 0) | \
            (_HAS_LAST_TS if self.last_ts_ms is not None else 0) | \
            (_HAS_LAST_LOCATION if self.last_lat is not None and self.last_lon is not None else 0) | \
            (_HAS_PROFILE if self.profile is not None else 0) | \
            (_HAS_FILTER if self.consumed is not None else 0) | (_HAS_SURPRISE if self.surprise is not None else 0)
        n_bits = len(self.consumed.bits) if self.consumed is not None else 0
        n_hashes = self.consumed.n_hashes if self.consumed is not None else 0
        header = _HEADER_V2.pack(_MAGIC, STATE_FORMAT_VERSION, flags, self.last_ts_ms or 0,
                                 self.last_lat or 0.0, self.last_lon or 0.0, self.event_count,
                                 len(hidden) // 4, len(self.window), len(version),
                                 self.profile.size if self.profile is not None else 0, n_bits, n_hashes,
                                 len(surprise))
        return b"".join([header, version, hidden, _pack_window(self.window, self._encoded), _pack_profile(slots),
                         self.consumed.to_bytes() if self.consumed is not None else b"", surprise])

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Inverse of ``to_bytes`` (formats 1 and 2); raises ModelError for anything else (or a
        newer format)."""
        try:
            return _unpack_state(bytes(data))
        except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise ModelError(f"user state is corrupt ({len(data)} bytes): {exc}") from exc


def _pack_window(window: list[WindowEvent], encoded: np.ndarray | None = None) -> bytes:
    """The window as columns; times and places come from ``encoded`` (the model's cache of the
    same events) when it is there, which saves a pass over the events in Python."""
    tokens = [w.token.encode("utf-8") for w in window]
    lengths = [len(t) for t in tokens]
    if lengths and max(lengths) > 0xFFFF:
        raise ModelError("a window token is longer than 65535 utf-8 bytes")
    columns: dict[str, object]
    if encoded is not None and len(encoded) == len(window):
        columns = {"ts_ms": encoded["ts_ms"], "located": encoded["dense"][:, _HAS_LOCATION_DENSE] > 0,
                   "lat": encoded["lat"], "lon": encoded["lon"]}
    else:
        located = [w.lat is not None and w.lon is not None for w in window]
        columns = {"ts_ms": [w.ts_ms for w in window], "located": located,
                   "lat": [w.lat if h else 0.0 for w, h in zip(window, located, strict=False)],
                   "lon": [w.lon if h else 0.0 for w, h in zip(window, located, strict=False)]}
    columns["token_bytes"] = lengths
    return b"".join([np.asarray(columns[name], dtype=dtype).tobytes() for name, dtype in _WINDOW_COLUMNS] + tokens)


def _pack_profile(slots: list[tuple[str, float]] | None) -> bytes:
    """Occupied slots (uint32), their weights (float64), token byte lengths (uint16), tokens."""
    if slots is None:
        return b""
    tokens = [t.encode("utf-8") for t, _ in slots]
    if any(len(t) > 0xFFFF for t in tokens):
        raise ModelError("a profile token is longer than 65535 utf-8 bytes")
    return b"".join([struct.pack("<I", len(slots)), np.asarray([w for _, w in slots], dtype="<f8").tobytes(),
                     np.asarray([len(t) for t in tokens], dtype="<u2").tobytes()] + tokens)


def _unpack_state(data: bytes) -> UserState:
    if len(data) < 3 or data[:2] != _MAGIC:
        raise ModelError(f"not a user state ({len(data)} bytes, no {_MAGIC!r} header)")
    fmt = data[2]
    if fmt not in _READABLE:
        raise ModelError(f"user state has format {fmt}, this version reads {', '.join(map(str, _READABLE))} "
                         "(written by a newer release?)")
    header = _HEADER_V1 if fmt == 1 else _HEADER_V2
    fields = header.unpack_from(data)
    (_, _, flags, last_ts, last_lat, last_lon, count, n_hidden, n_window, n_version) = fields[:10]
    size, n_bits, n_hashes, n_surprise = fields[10:] if fmt == 2 else (0, 0, 0, 0)
    offset = header.size + n_version
    version = data[header.size:offset].decode("utf-8")
    hidden = np.frombuffer(data, dtype="<f4", count=n_hidden, offset=offset).astype(np.float32)
    window, offset = _unpack_window(data, offset + 4 * n_hidden, n_window)
    profile = consumed = surprise = None
    if flags & _HAS_PROFILE:
        profile, offset = _unpack_profile(data, offset, size)
    if flags & _HAS_FILTER:
        n_bytes = (n_bits + 7) // 8
        if offset + n_bytes > len(data):
            raise ValueError(f"the consumed filter needs {n_bytes} bytes, {len(data) - offset} are left")
        consumed = ConsumedFilter.from_bytes(data[offset:offset + n_bytes], n_bits, n_hashes)
        offset += n_bytes
    if flags & _HAS_SURPRISE:
        surprise = SurpriseState.from_bytes(data[offset:offset + n_surprise])
        offset += n_surprise
    if offset != len(data):
        raise ValueError(f"the state ends at byte {offset}, the data has {len(data)}")
    located = bool(flags & _HAS_LAST_LOCATION)
    return UserState(hidden=hidden if flags & _HAS_HIDDEN else None, window=window,
                     last_ts_ms=last_ts if flags & _HAS_LAST_TS else None,
                     last_lat=last_lat if located else None, last_lon=last_lon if located else None,
                     event_count=count, model_version=version, profile=profile, consumed=consumed,
                     surprise=surprise)


def _unpack_window(data: bytes, offset: int, n: int) -> tuple[list[WindowEvent], int]:
    columns = {}
    for name, dtype in _WINDOW_COLUMNS:
        columns[name] = np.frombuffer(data, dtype=dtype, count=n, offset=offset).tolist()
        offset += n * np.dtype(dtype).itemsize
    ends = np.cumsum(columns["token_bytes"], dtype=np.int64) + offset
    end = int(ends[-1]) if n else offset
    if end > len(data):
        raise ValueError(f"window tokens end at byte {end}, the state has {len(data)}")
    starts = [offset] + ends[:-1].tolist()
    window = [WindowEvent(data[a:b].decode("utf-8"), ts, lat if h else None, lon if h else None)
              for a, b, ts, h, lat, lon in zip(starts, ends.tolist(), columns["ts_ms"], columns["located"],
                                               columns["lat"], columns["lon"], strict=False)]
    return window, end


def _unpack_profile(data: bytes, offset: int, size: int) -> tuple[Profile, int]:
    (n,) = struct.unpack_from("<I", data, offset)
    offset += 4
    if n > size:
        raise ValueError(f"profile holds {n} slots of {size}")
    weights = np.frombuffer(data, dtype="<f8", count=n, offset=offset)
    lengths = np.frombuffer(data, dtype="<u2", count=n, offset=offset + 8 * n).astype(np.int64)
    offset += 10 * n
    ends = np.cumsum(lengths) + offset
    end = int(ends[-1]) if n else offset
    if end > len(data):
        raise ValueError(f"profile tokens end at byte {end}, the state has {len(data)}")
    starts = [offset] + ends[:-1].tolist()
    tokens = [data[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist(), strict=False)]
    return Profile(size, tokens, weights.copy()), end
