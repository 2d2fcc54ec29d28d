"""Readings files (CSV or JSON lines) onto a network's interval grid, gaps masked.

A readings file has one reading per row: ``sensor_id``, ``ts`` (epoch milliseconds, or ISO-8601;
without an offset a time is UTC, as on the stream) and a value column: ``value_field`` when given,
else ``value``, else ``speed``, else the one column named ``flow``, ``count`` or ``occupancy``.
JSON lines may also carry ``kind`` and ``unit`` (as the ``traffic-readings`` topic does); a CSV may
have ``kind``/``unit`` columns.

Resampling: the grid's rows are the tumbling intervals the worker aggregates,
``[k * interval, (k + 1) * interval)`` in epoch ms; a cell holds the mean of its readings. The
interval is the median spacing of each sensor's consecutive readings (rounded to the second, and
to the minute from a minute up) unless given. Cells without a reading are gaps: masked, and
filled with the sensor's previous value (its first before it) so the model can be fed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.checkpoint import file_digest
from models.exceptions import ModelError
from models.traffic.data import TrafficSeries
from models.traffic.graph import SensorNetwork

__all__ = ["ReadingsFile", "SeriesBuild", "read_readings", "infer_interval_ms", "to_series", "VALUE_KINDS",
           "MAX_GRID_CELLS"]

logger = logging.getLogger(__name__)

VALUE_KINDS = ("speed", "flow", "count", "occupancy")
MAX_GRID_CELLS = 60_000_000  # rows x sensors of the resampled grid (float32: 240 MB)
_MIN_EPOCH_MS = 100_000_000_000  # 1973-03-03: smaller integers are seconds, not milliseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class ReadingsFile:
    """The rows of a readings file: sensor ids, epoch ms and values [readings], and what they measure."""

    path: Path
    sensor_ids: np.ndarray
    ts_ms: np.ndarray
    values: np.ndarray
    value_field: str
    kind: str
    unit: str
    skipped_empty: int = 0  # rows whose value cell was empty
    naive_times: bool = False  # some ISO times had no offset (read as UTC)

    @property
    def sensors(self) -> tuple[str, ...]:
        """Distinct sensor ids, sorted."""
        return tuple(str(s) for s in np.unique(self.sensor_ids))


@dataclass(frozen=True, eq=False)
class SeriesBuild:
    """The resampled series and one line per rule that dropped, filled or guessed something."""

    series: TrafficSeries
    notes: tuple[str, ...]


def read_readings(path: str | Path, value_field: str | None = None, *, kind: str | None = None,
                  unit: str | None = None) -> ReadingsFile:
    """Read a CSV (``.csv``) or JSON-lines (anything else starting with ``{``) readings file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"readings file {path} does not exist; give a CSV or JSON-lines file of "
                         "sensor_id, ts and a value column")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            first = handle.read(1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"readings file {path} could not be read: {exc}") from exc
    table = _json_lines(path) if first == "{" else _csv_columns(path)
    return _parse_columns(path, table, value_field, kind, unit)


def infer_interval_ms(readings: ReadingsFile) -> int:
    """Median spacing of each sensor's consecutive distinct times, rounded (see module doc)."""
    order = np.lexsort((readings.ts_ms, readings.sensor_ids))
    ids, ts = readings.sensor_ids[order], readings.ts_ms[order]
    gaps = np.diff(ts)[(ids[1:] == ids[:-1]) & (np.diff(ts) > 0)]
    if gaps.size == 0:
        raise ModelError(f"{readings.path}: no sensor has two readings at different times, so the sampling "
                         "interval cannot be inferred; pass --interval (e.g. 5min or 1h)")
    median = float(np.median(gaps))
    unit = 60_000 if median >= 60_000 else 1_000
    return max(1_000, int(round(median / unit)) * unit)


def to_series(readings: ReadingsFile, network: SensorNetwork, *, interval_ms: int | None = None,
              timezone: str | None = None) -> SeriesBuild:
    """The readings on ``network``'s sensors, averaged per interval, gaps masked and filled."""
    notes: list[str] = []
    interval = interval_ms or infer_interval_ms(readings)
    if interval_ms is None:
        notes.append(f"sampling interval inferred from the readings: {_duration(interval)} (override with --interval)")
    columns = np.array([network.get_index(str(s)) if network.get_index(str(s)) is not None else -1
                        for s in readings.sensors], dtype=np.int64)
    sensor_column = columns[np.searchsorted(np.array(readings.sensors, dtype=object), readings.sensor_ids)]
    known = sensor_column >= 0
    _note_unknown(readings, known, network, notes)
    rows = readings.ts_ms[known] // interval
    origin, n_rows = int(rows.min()), int(rows.max() - rows.min() + 1)
    if n_rows * network.n_sensors > MAX_GRID_CELLS:
        raise ModelError(f"{readings.path}: {n_rows:,} intervals of {_duration(interval)} x {network.n_sensors} "
                         f"sensors is too large a grid; pass a longer --interval")
    sums = np.zeros((n_rows, network.n_sensors))
    counts = np.zeros((n_rows, network.n_sensors), dtype=np.int64)
    np.add.at(sums, (rows - origin, sensor_column[known]), readings.values[known])
    np.add.at(counts, (rows - origin, sensor_column[known]), 1)
    observed = counts > 0
    values = _carry_forward(np.where(observed, sums / np.maximum(counts, 1), np.nan), observed, notes, network)
    _note_gaps(observed, counts, notes)
    series = TrafficSeries(network=network, speeds=values.astype(np.float32), start_ms=origin * interval,
                           step_ms=interval, fingerprint=f"{file_digest(readings.path)}-{network.fingerprint}",
                           observed=None if observed.all() else observed, timezone=timezone,
                           kind=readings.kind, unit=readings.unit)
    return SeriesBuild(series=series, notes=tuple(notes))


def _carry_forward(values: npt.NDArray[np.float64], observed: npt.NDArray[np.bool_], notes: list[str],
                   network: SensorNetwork) -> npt.NDArray[np.float64]:
    """Fill each gap with the sensor's previous value, leading gaps with its first value, 0 if none."""
    rows = np.where(observed, np.arange(len(values))[:, None], 0)
    np.maximum.accumulate(rows, axis=0, out=rows)
    filled: npt.NDArray[np.float64] = values[rows, np.arange(values.shape[1])[None, :]]
    first = np.argmax(observed, axis=0)
    first_values = values[first, np.arange(values.shape[1])]
    filled = np.where(np.isnan(filled), first_values[None, :], filled)
    silent = ~observed.any(axis=0)
    if silent.any():
        names = ", ".join(network.sensor_ids[i] for i in np.flatnonzero(silent)[:5])
        notes.append(f"{int(silent.sum())} sensors of the network have no readings ({names}"
                     f"{', ...' if silent.sum() > 5 else ''}): fed as 0 and never scored")
    return np.nan_to_num(filled, nan=0.0)


def _note_unknown(readings: ReadingsFile, known: np.ndarray, network: SensorNetwork, notes: list[str]) -> None:
    """Count readings of sensors the network lacks; all of them unknown is an error."""
    if known.all():
        return
    unknown = np.unique(readings.sensor_ids[~known])
    sample = ", ".join(repr(str(s)) for s in unknown[:5])
    if not known.any():
        raise ModelError(f"{readings.path}: none of its {len(unknown)} sensor ids ({sample}...) is in network "
                         f"{network.name!r} (ids such as {', '.join(network.sensor_ids[:3])}); check that the "
                         "readings and the sensors/edges files use the same ids")
    notes.append(f"{int((~known).sum()):,} readings of {len(unknown)} sensors not in the network were left out "
                 f"({sample}{', ...' if len(unknown) > 5 else ''}); add them to the sensors file to use them")


def _note_gaps(observed: np.ndarray, counts: np.ndarray, notes: list[str]) -> None:
    gaps = int((~observed).sum())
    if gaps:
        notes.append(f"{gaps:,} of {observed.size:,} sensor-intervals have no reading ({gaps / observed.size:.1%}): "
                     "masked (never scored) and fed as the previous value")
    merged = int((counts > 1).sum())
    if merged:
        notes.append(f"{merged:,} sensor-intervals had several readings: averaged")


def _csv_columns(path: Path) -> dict[str, list[str]]:
    """Column name (lower case) -> cells, padded with '' for short rows."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip().lower() for cell in next(reader, [])]
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelError(f"readings file {path} could not be read as CSV: {exc}") from exc
    if not header:
        raise ModelError(f"readings file {path} is empty; it needs a header line sensor_id,ts,value")
    return {name: [row[i].strip() if i < len(row) else "" for row in rows] for i, name in enumerate(header)}


def _json_lines(path: Path) -> dict[str, list[object]]:
    """Field -> values over every JSON object line (None where a line lacks the field)."""
    records = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{path}, line {number}: not JSON ({exc.msg}); write one JSON object "
                                 "per line") from None
            if not isinstance(record, dict):
                raise ModelError(f"{path}, line {number}: expected a JSON object per line")
            records.append(record)
    fields = {key for record in records for key in record}
    return {str(key).lower(): [record.get(key) for record in records] for key in fields}


#: Raw columns as read from a file: name -> one cell per row.
Columns = Mapping[str, Sequence[object]]


def _parse_columns(path: Path, table: Columns, value_field: str | None, kind: str | None,
                   unit: str | None) -> ReadingsFile:
    """Typed arrays from the raw columns; ModelError naming the row and the fix."""
    field = _value_field(path, table, value_field)
    for required in ("sensor_id", "ts"):
        if required not in table:
            raise ModelError(f"{path}: no {required} column (the columns are {', '.join(sorted(table))}); "
                             "a readings file needs sensor_id, ts and a value column")
    raw_values = table[field]
    present = np.array([v is not None and v != "" for v in raw_values], dtype=bool)
    ids = np.array([str(s) if s is not None else "" for s in table["sensor_id"]], dtype=object)[present]
    empty_id = np.flatnonzero(ids == "")
    if empty_id.size:
        raise ModelError(f"{path}, row {_row_number(present, empty_id[0])}: empty sensor_id; give every reading "
                         "its sensor's id")
    ts, naive = _timestamps(path, [t for t, p in zip(table["ts"], present, strict=True) if p], present)
    values = _values(path, [v for v, p in zip(raw_values, present, strict=True) if p], present, field)
    what = _kind(path, table, field, kind, present)
    if what == "count" and (values < 0).any():
        bad = int(np.flatnonzero(values < 0)[0])
        raise ModelError(f"{path}, row {_row_number(present, bad)}: count {values[bad]:g} is negative; counts "
                         "must be >= 0")
    if not present.any():
        raise ModelError(f"{path}: no row has a {field} value")
    return ReadingsFile(path=path, sensor_ids=ids, ts_ms=ts, values=values, value_field=field, kind=what,
                        unit=unit or _unit(table, present), skipped_empty=int((~present).sum()), naive_times=naive)


def _value_field(path: Path, table: Columns, value_field: str | None) -> str:
    if value_field is not None:
        if value_field.lower() not in table:
            raise ModelError(f"{path}: no column {value_field!r} (the columns are {', '.join(sorted(table))}); "
                             "name the value column with --value-field")
        return value_field.lower()
    for name in ("value", "speed"):
        if name in table:
            return name
    kinds = [name for name in VALUE_KINDS if name in table]
    if len(kinds) == 1:
        return kinds[0]
    raise ModelError(f"{path}: no value or speed column (the columns are {', '.join(sorted(table))}); name the "
                     "value column with --value-field")


def _timestamps(path: Path, cells: list[object], present: np.ndarray) -> tuple[np.ndarray, bool]:
    """Epoch ms of every cell (ints or ISO-8601 text), and whether some times had no offset."""
    parsed: dict[object, tuple[int, bool]] = {}
    out = np.empty(len(cells), dtype=np.int64)
    naive = False
    for i, cell in enumerate(cells):
        if cell not in parsed:
            parsed[cell] = _timestamp(path, cell, _row_number(present, i))
        out[i], without_offset = parsed[cell]
        naive |= without_offset
    return out, naive


def _timestamp(path: Path, cell: object, row: int) -> tuple[int, bool]:
    """(epoch ms, had no offset) of one ts cell."""
    text = str(cell).strip() if cell is not None else ""
    if isinstance(cell, bool) or not text:
        raise ModelError(f"{path}, row {row}: empty ts; give epoch milliseconds or an ISO-8601 time")
    if isinstance(cell, (int, float)) or text.lstrip("-").isdigit():
        try:
            ms = int(float(text)) if isinstance(cell, float) else int(text)
        except (ValueError, OverflowError):
            raise ModelError(f"{path}, row {row}: ts {text!r} is not a time") from None
        if 0 <= ms < _MIN_EPOCH_MS:
            raise ModelError(f"{path}, row {row}: ts {ms} looks like epoch seconds; ts must be epoch "
                             "milliseconds (multiply by 1000) or an ISO-8601 time")
        return ms, False
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ModelError(f"{path}, row {row}: ts {text[:40]!r} is neither epoch milliseconds nor ISO-8601; "
                         "write e.g. 1700000000000 or 2023-11-14T22:13:20Z") from None
    naive = moment.tzinfo is None
    moment = moment.replace(tzinfo=UTC) if naive else moment
    return int((moment - _EPOCH).total_seconds() * 1000), naive


def _values(path: Path, cells: list[object], present: np.ndarray, field: str) -> np.ndarray:
    """Finite floats of the value cells; ModelError naming the first bad row."""
    try:
        values = np.array(cells, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or not np.isfinite(values).all():
        for i, cell in enumerate(cells):
            try:
                ok = not isinstance(cell, bool) and math.isfinite(float(cell))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ModelError(f"{path}, row {_row_number(present, i)}: {field} {cell!r} is not a finite "
                                 "number; fix the cell or leave it empty to mark a gap")
    assert values is not None
    return values


def _kind(path: Path, table: Columns, field: str, kind: str | None, present: np.ndarray) -> str:
    """What the values measure: ``kind`` if given, else a kind column, else the value column's name, else speed."""
    if kind is None and "kind" in table:
        kinds = {str(k) for k, p in zip(table["kind"], present, strict=True) if p and k not in (None, "")}
        if len(kinds) > 1:
            raise ModelError(f"{path}: readings of several kinds ({', '.join(sorted(kinds))}); train one model per "
                             "kind (split the file)")
        kind = kinds.pop() if kinds else None
    kind = kind or (field if field in VALUE_KINDS else "speed")
    if kind not in VALUE_KINDS:
        raise ModelError(f"{path}: kind {kind!r} is not one of {', '.join(VALUE_KINDS)}")
    return kind


def _unit(table: Columns, present: np.ndarray) -> str:
    units = {str(u) for u, p in zip(table.get("unit", []), present, strict=False) if p and u not in (None, "")}
    return units.pop() if len(units) == 1 else ""


def _row_number(present: np.ndarray, index: int) -> int:
    """1-based data row of the ``index``-th kept row."""
    return int(np.flatnonzero(present)[index]) + 1


def _duration(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"
