"""Readings files onto the interval grid: formats, timestamps, interval inference, gaps, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.graph import SensorNetwork
from models.traffic.readings import infer_interval_ms, read_readings, to_series

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000


def _network(*ids: str) -> SensorNetwork:
    return SensorNetwork(name="n", sensor_ids=ids, coords=None, adjacency=np.zeros((len(ids), len(ids))))


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_readings_are_averaged_per_interval_and_gaps_masked(tmp_path: Path) -> None:
    rows = [f"a,{T0 + k * 5 * MIN},{10 + k}" for k in range(6)]
    rows += [f"b,{T0 + k * 5 * MIN + 1000},{50}" for k in (0, 1, 4, 5)]
    rows.append(f"a,{T0 + 5 * MIN + 2 * MIN},99")  # a second reading in a's second interval
    readings = read_readings(_csv(tmp_path / "r.csv", "sensor_id,ts,speed", rows))
    assert readings.value_field == "speed" and readings.kind == "speed"
    assert infer_interval_ms(readings) == 5 * MIN
    built = to_series(readings, _network("a", "b"))
    series = built.series
    assert series.step_ms == 5 * MIN and series.start_ms == T0 and series.n_steps == 6
    np.testing.assert_allclose(series.speeds[:, 0], [10, (11 + 99) / 2, 12, 13, 14, 15])
    assert series.mask[:, 1].tolist() == [True, True, False, False, True, True]
    np.testing.assert_allclose(series.speeds[2:4, 1], [50, 50])  # gaps carry the previous value
    assert any("have no reading" in note for note in built.notes)
    assert any("several readings: averaged" in note for note in built.notes)
    assert any("inferred" in note for note in built.notes)


def test_json_lines_with_iso_times_and_kind(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    records = [{"sensor_id": "s1", "ts": "2024-01-01T01:00:00+01:00", "value": 412, "kind": "count",
                "unit": "passengers/h"},
               {"sensor_id": "s1", "ts": "2024-01-01T01:00:00Z", "value": 7, "kind": "count"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    readings = read_readings(path)
    assert readings.kind == "count" and readings.unit == "passengers/h"
    assert readings.ts_ms.tolist() == [T0, T0 + 60 * MIN] and not readings.naive_times
    series = to_series(readings, _network("s1")).series
    assert series.step_ms == 60 * MIN and series.speeds[:, 0].tolist() == [412, 7]


def test_value_field_interval_and_naive_times(tmp_path: Path) -> None:
    path = _csv(tmp_path / "r.csv", "sensor_id,ts,flow,speed",
                ["a,2024-01-01T00:00:00,100,50", "a,2024-01-01T00:10:00,200,40", "a,2024-01-01T00:20:00,,30"])
    readings = read_readings(path, "flow")
    assert readings.kind == "flow" and readings.naive_times and readings.skipped_empty == 1
    series = to_series(readings, _network("a"), interval_ms=5 * MIN).series
    assert series.n_steps == 3 and series.mask[:, 0].tolist() == [True, False, True]


def test_readings_of_sensors_outside_the_network_are_counted(tmp_path: Path) -> None:
    path = _csv(tmp_path / "r.csv", "sensor_id,ts,value", [f"{s},{T0 + k * MIN},1" for s in "ax" for k in range(3)])
    built = to_series(read_readings(path), _network("a"))
    assert any("3 readings of 1 sensors not in the network were left out ('x')" in n for n in built.notes)
    with pytest.raises(ModelError, match="none of its 2 sensor ids"):
        to_series(read_readings(path), _network("b"))


@pytest.mark.parametrize(("header", "row", "message"), [
    ("sensor_id,ts,value", "a,soon,1",
     r"r.csv, row 2: ts 'soon' is neither epoch milliseconds nor ISO-8601; write e\.g\."),
    ("sensor_id,ts,value", "a,1700000000,1", r"row 2: ts 1700000000 looks like epoch seconds"),
    ("sensor_id,ts,value", "a,1700000000000,fast",
     r"row 2: value 'fast' is not a finite number; fix the cell or leave it"),
    ("sensor_id,ts,count", "a,1700000000000,-2", r"row 2: count -2 is negative"),
    ("sensor_id,ts,value", ",1700000000000,1", r"row 2: empty sensor_id"),
    ("sensor,ts,value", "a,1700000000000,1", r"no sensor_id column \(the columns are sensor, ts, value\)"),
    ("sensor_id,ts,level", "a,1700000000000,1", r"no value or speed column .* --value-field"),
])
def test_errors_name_the_file_the_row_and_the_fix(tmp_path: Path, header: str, row: str, message: str) -> None:
    path = _csv(tmp_path / "r.csv", header, ["a,1700000000000,1", row])
    with pytest.raises(ModelError, match=message):
        read_readings(path)


def test_interval_cannot_be_inferred_from_one_time(tmp_path: Path) -> None:
    readings = read_readings(_csv(tmp_path / "r.csv", "sensor_id,ts,value", [f"a,{T0},1", f"b,{T0},2"]))
    with pytest.raises(ModelError, match="pass --interval"):
        infer_interval_ms(readings)
