"""Next-action data sets: per-key event sequences with each event's split (train/valid/test)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from models.exceptions import ModelError
from models.next_action.features import EventRecord
from models.paths import shared_data_dir

__all__ = [
    "Split", "ActionSequence", "ActionDataset", "FOURSQUARE_EPOCH_MS", "SPLITS",
    "load_foursquare", "load_diginetica", "load_event_file", "leave_last_out", "split_by_time", "split_events",
    "merge_validation", "data_fingerprint",
]

logger = logging.getLogger(__name__)

# Foursquare NYC minutes count from this instant (2012-04-03T18:00Z: the last minute, 458,435, is then the
# original data set's last check-in, 2013-02-16 02:35Z, and hourly totals follow New York's day).
FOURSQUARE_EPOCH_MS = int(dt.datetime(2012, 4, 3, 18, tzinfo=dt.UTC).timestamp() * 1000)
_ACTION_FIELDS = ("action", "item_id", "category")
# How an event log is split: "time" cuts every user's stream at the same instants (train on the
# past, validate, test on the future, as a worker serves it); "last" holds out each user's last
# event for test and the one before for validation.
SPLITS = ("time", "last")
VALID_FRACTION, TEST_FRACTION = 0.1, 0.2


class Split(IntEnum):
    """Which split an event belongs to; event i > 0 of a sequence is a target of its split."""

    TRAIN = 1
    VALID = 2
    TEST = 3


@dataclass(frozen=True)
class ActionSequence:
    """One key's events in time order (a user's history or a session) and each event's split."""

    key: str
    events: tuple[EventRecord, ...]
    splits: tuple[Split, ...]

    def __post_init__(self) -> None:
        if len(self.events) != len(self.splits):
            raise ModelError(f"sequence {self.key!r}: {len(self.events)} events but {len(self.splits)} splits")

    def target_positions(self, split: Split) -> list[int]:
        """Indices i >= 1 whose event is a target of ``split`` (predicted from events[:i])."""
        return [i for i in range(1, len(self.events)) if self.splits[i] == split]


@dataclass(frozen=True)
class ActionDataset:
    """A named set of sequences plus the fingerprint of the files they came from."""

    name: str
    sequences: tuple[ActionSequence, ...]
    fingerprint: str

    def n_targets(self, split: Split) -> int:
        return sum(len(s.target_positions(split)) for s in self.sequences)

    def training_tokens(self) -> Iterator[str]:
        """Tokens of the training events: what a vocabulary may be built from."""
        for seq in self.sequences:
            for event, split in zip(seq.events, seq.splits, strict=False):
                if split == Split.TRAIN:
                    yield event.token


def merge_validation(dataset: ActionDataset) -> ActionDataset:
    """The same data with every validation event relabelled as training (for a final refit)."""
    merged = tuple(ActionSequence(s.key, s.events, tuple(Split.TRAIN if x == Split.VALID else x for x in s.splits))
                   for s in dataset.sequences)
    return ActionDataset(dataset.name, merged, dataset.fingerprint)


def data_fingerprint(*paths: str | os.PathLike[str]) -> str:
    """Short sha256 over the bytes of the given files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def leave_last_out(name: str, by_key: dict[str, list[EventRecord]], fingerprint: str) -> ActionDataset:
    """Per key, stable sort by time; last event = test, the one before = validation, rest = train.

    Keys with fewer than 3 events only train.
    """
    sequences = []
    for key in sorted(by_key):
        events = sorted(by_key[key], key=lambda e: e.ts_ms)
        n = len(events)
        splits = [Split.TRAIN] * n
        if n >= 3:
            splits[-2], splits[-1] = Split.VALID, Split.TEST
        sequences.append(ActionSequence(key, tuple(events), tuple(splits)))
    return ActionDataset(name, tuple(sequences), fingerprint)


def split_by_time(name: str, by_key: dict[str, list[EventRecord]], fingerprint: str, *,
                  valid_fraction: float = VALID_FRACTION, test_fraction: float = TEST_FRACTION) -> ActionDataset:
    """Cut every key's events at the same two instants: the events before the first cut train,
    those before the second validate, the rest test (the cuts leave ``valid_fraction`` and
    ``test_fraction`` of all events after them). Each target is predicted from the key's whole
    earlier stream, whatever its split, as a worker serves it."""
    if not (0 <= valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise ModelError(f"valid_fraction {valid_fraction} and test_fraction {test_fraction} must leave "
                         "some training events")
    times = np.sort(np.fromiter((e.ts_ms for events in by_key.values() for e in events), dtype=np.int64))
    if times.size == 0:
        return ActionDataset(name, (), fingerprint)
    n = len(times)
    valid_from = int(times[min(n - 1, int(n * (1 - valid_fraction - test_fraction)))])
    test_from = int(times[min(n - 1, int(n * (1 - test_fraction)))])
    sequences = []
    for key in sorted(by_key):
        events = sorted(by_key[key], key=lambda e: e.ts_ms)
        splits = tuple(Split.TEST if e.ts_ms >= test_from else Split.VALID if e.ts_ms >= valid_from
                       else Split.TRAIN for e in events)
        sequences.append(ActionSequence(key, tuple(events), splits))
    return ActionDataset(name, tuple(sequences), fingerprint)


def split_events(name: str, by_key: dict[str, list[EventRecord]], fingerprint: str, split: str) -> ActionDataset:
    """``split_by_time`` or ``leave_last_out`` by name (see SPLITS)."""
    if split == "time":
        return split_by_time(name, by_key, fingerprint)
    if split == "last":
        return leave_last_out(name, by_key, fingerprint)
    raise ModelError(f"split must be one of {SPLITS}, got {split!r}")


def load_foursquare(root: str | os.PathLike[str] | None = None, *, split: str = "last") -> ActionDataset:
    """Foursquare NYC check-ins: action = POI id, location = the POI's coordinates; ``split``:
    see SPLITS.

    ``root`` defaults to shared_data_dir()/"foursquare-nyc".
    """
    root = Path(root) if root is not None else shared_data_dir() / "foursquare-nyc"
    checkins_path, pois_path = root / "NYC.npy", root / "NYC_POI.npy"
    _require(checkins_path, pois_path)
    checkins = np.load(checkins_path)
    pois = np.load(pois_path)
    where = {int(p): (float(lat), float(lon)) for p, lat, lon in pois}
    by_user: dict[str, list[EventRecord]] = defaultdict(list)
    for user, poi, minutes in checkins.tolist():
        lat, lon = where.get(poi, (None, None))
        by_user[str(user)].append(EventRecord(str(poi), FOURSQUARE_EPOCH_MS + minutes * 60_000, lat, lon))
    return split_events("foursquare-nyc", by_user, data_fingerprint(checkins_path, pois_path), split)


def load_diginetica(root: str | os.PathLike[str] | None = None, *, valid_fraction: float = 0.1) -> ActionDataset:
    """Diginetica sample as SR-GNN prepares it; one sequence per session, action = item id.

    Drop length-1 sessions and items seen < 5 times (then sessions shorter than 2); sessions
    dated in the last 7 days are test (a session dated exactly on the split day is dropped, as in
    SR-GNN), the rest train; test items unseen in training are removed. The most recent
    ``valid_fraction`` of the training sessions (by date, then session id) become validation
    (kept whole, so ``merge_validation`` gives back SR-GNN's training part exactly; their items
    unseen in the remaining training sessions are out-of-vocabulary misses while validating).
    """
    root = Path(root) if root is not None else shared_data_dir() / "diginetica-sample"
    path = root / "sample_train-item-views.csv"
    _require(path)
    clicks, dates = _read_diginetica(path)
    clicks = _filter_sessions(clicks)
    last = max(dates[s] for s in clicks)
    split_day = last - dt.timedelta(days=7)
    train = sorted((s for s in clicks if dates[s] < split_day), key=lambda s: (dates[s], int(s)))
    test = sorted((s for s in clicks if dates[s] > split_day), key=lambda s: (dates[s], int(s)))
    n_valid = int(round(len(train) * valid_fraction))
    fit, valid = train[:len(train) - n_valid], train[len(train) - n_valid:]
    sequences = [_session(s, clicks[s], dates[s], Split.TRAIN) for s in fit]
    sequences += [_session(s, clicks[s], dates[s], Split.VALID) for s in valid]
    sequences += _known_only(test, clicks, dates, train, Split.TEST)
    return ActionDataset("diginetica-sample", tuple(sequences), data_fingerprint(path))


def _known_only(sessions: list[str], clicks: dict[str, list[tuple[str, int]]], dates: dict[str, dt.date],
                known_from: list[str], split: Split) -> list[ActionSequence]:
    """Sessions with the items unseen in ``known_from`` removed; those left shorter than 2 dropped."""
    known = {item for s in known_from for item, _ in clicks[s]}
    kept_sessions = []
    for s in sessions:
        kept = [(item, t) for item, t in clicks[s] if item in known]
        if len(kept) >= 2:
            kept_sessions.append(_session(s, kept, dates[s], split))
    return kept_sessions


def _read_diginetica(path: Path) -> tuple[dict[str, list[tuple[str, int]]], dict[str, dt.date]]:
    clicks: dict[str, list[tuple[str, int]]] = defaultdict(list)
    dates: dict[str, dt.date] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            clicks[row["session_id"]].append((row["item_id"], int(row["timeframe"])))
            dates[row["session_id"]] = dt.date.fromisoformat(row["eventdate"])
    return {s: sorted(c, key=lambda x: x[1]) for s, c in clicks.items()}, dates


def _filter_sessions(clicks: dict[str, list[tuple[str, int]]]) -> dict[str, list[tuple[str, int]]]:
    clicks = {s: c for s, c in clicks.items() if len(c) > 1}
    counts = Counter(item for c in clicks.values() for item, _ in c)
    kept = {s: [(i, t) for i, t in c if counts[i] >= 5] for s, c in clicks.items()}
    return {s: c for s, c in kept.items() if len(c) >= 2}


def _session(session: str, clicks: list[tuple[str, int]], day: dt.date, split: Split) -> ActionSequence:
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    events = tuple(EventRecord(item, start + t) for item, t in clicks)
    return ActionSequence(session, events, (split,) * len(events))


def load_event_file(path: str | os.PathLike[str], *, action_field: str = "action",
                    key_field: str = "user_id", split: str = "last") -> ActionDataset:
    """A JSONL (``.jsonl``/``.json``) or CSV event file, split per ``split`` (see SPLITS).

    Fields: user_id, ts (epoch ms as a number, or an ISO-8601 string), action, and optionally
    lat, lon, item_id, category. ``action_field`` picks the token: action, item_id or category.
    Rows without a value in that field are skipped; a row without a field the file needs raises
    ModelError naming every missing field and the line; a malformed value raises ModelError naming
    its line.
    """
    if action_field not in _ACTION_FIELDS:
        raise ModelError(f"action_field must be one of {_ACTION_FIELDS}, got {action_field!r}")
    path = Path(path)
    _require(path)
    by_key: dict[str, list[EventRecord]] = defaultdict(list)
    skipped = 0
    wanted = (key_field, "ts", action_field)
    for line, row, header in _rows(path):
        missing = [name for name in wanted if name not in row]
        if missing and (key_field in missing or "ts" in missing or header):
            raise ModelError(f"{path}:{line}: missing field{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(repr(m) for m in missing)} (has {', '.join(repr(k) for k in row) or 'none'})")
        if header:
            continue
        try:
            event = _event_from_row(row, action_field)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}:{line}: bad event ({exc.__class__.__name__}: {exc})") from exc
        if event is None:
            skipped += 1
            continue
        by_key[str(row[key_field])].append(event)
    if skipped:
        logger.warning("%s: skipped %d events without %r", path, skipped, action_field)
    return split_events(path.stem, by_key, data_fingerprint(path), split)


def _rows(path: Path) -> Iterable[tuple[int, dict[str, Any], bool]]:
    """(line, row, is_header) of each event; a CSV file yields its header first (line 1, every
    field present with value None) so that a missing column is reported once, before any row."""
    with path.open(newline="") as handle:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for line, text in enumerate(handle, start=1):
                if text.strip():
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise ModelError(f"{path}:{line}: not JSON ({exc})") from exc
                    if not isinstance(row, dict):
                        raise ModelError(f"{path}:{line}: not a JSON object (one event per line)")
                    yield line, row, False
        else:
            reader = csv.DictReader(handle)
            yield 1, dict.fromkeys(reader.fieldnames or ()), True
            for line, row in enumerate(reader, start=2):
                yield line, row, False


def _event_from_row(row: dict[str, Any], action_field: str) -> EventRecord | None:
    token = row.get(action_field)
    if token in (None, ""):
        return None
    lat, lon = _optional_float(row.get("lat")), _optional_float(row.get("lon"))
    if lat is None or lon is None:
        lat = lon = None
    return EventRecord(str(token), _parse_ts_ms(row["ts"]), lat, lon)


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _parse_ts_ms(value: Any) -> int:
    """Epoch milliseconds from a number (or numeric string) or an ISO-8601 string (UTC if naive)."""
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    try:
        return int(float(text))
    except ValueError:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp() * 1000)


def _require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelError(f"data file(s) not found: {', '.join(missing)}")
