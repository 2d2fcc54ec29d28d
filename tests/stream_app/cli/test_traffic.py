"""`stream-app train traffic` and `evaluate traffic` on a readings file, an edge list and a sensors file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from models.traffic.forecaster import load_traffic_model
from models.traffic.network_files import build_network
from simulation.city import TrafficConfig, generate_traffic, write_traffic_files
from stream_app.cli import cli

CITY = TrafficConfig(network="stops", n_sensors=5, n_corridors=1, seed=7, duration_hours=14 * 24,
                     interval_ms=3_600_000, measure="count", count_scale=0.002, incident_rate_per_day=0)
FAST = ["--epochs", "3", "--hidden-dim", "8", "--embedding-dim", "2", "--threads", "1", "--no-progress"]


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_traffic_files(generate_traffic(CITY), tmp_path_factory.mktemp("stops"))


@pytest.fixture(scope="module")
def trained(files: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    torch.set_num_threads(1)
    readings, edges, sensors = files
    out = tmp_path_factory.mktemp("model") / "stops.pt"
    result = invoke("train", "traffic", "--data", readings, "--edges", edges, "--sensors", sensors,
                    "--horizons", "60,120", "--timezone", "Etc/GMT+5", "--network", "stops", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_from_files_writes_a_checkpoint_for_the_files_network(files, trained) -> None:
    out, output = trained
    readings, edges, sensors = files
    network = build_network("stops", sensors=sensors, edges=edges).network
    model, metadata = load_traffic_model(out, network)
    assert metadata["interval_ms"] == 3_600_000 and metadata["kind"] == "count"
    assert metadata["timezone"] == "Etc/GMT+5" and model.config.horizons == (1, 2)
    assert len(metadata["sources"]) == 2 and metadata["data"]["value_field"] == "count"
    assert "Validation RMSE per horizon" in output and "hour-of-week" in output and "served" in output
    assert "4 links read" in output  # what the network rules did is printed
    assert "STREAM_APP_SENSOR_WINDOW_S=3600" in output and (out.parent / "stops-adjacency.csv").is_file()


def test_evaluate_a_checkpoint_on_the_same_files(files, trained, tmp_path: Path) -> None:
    out, _ = trained
    readings, edges, sensors = files
    json_out = tmp_path / "report.json"
    result = invoke("evaluate", "traffic", "--data", readings, "--edges", edges, "--sensors", sensors,
                    "--horizons", "60,120", "--timezone", "Etc/GMT+5", "--network", "stops", "--checkpoint", out,
                    "--threads", "1", "--json-out", json_out)
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    assert report["horizons"] == ["60 min", "120 min"]
    assert {"persistence", "hour-of-day average", "hour-of-week average", "window mean (T-GCN HA)",
            "graph-GRU strict, window", "graph-GRU strict, stream"} <= set(report["scores"])
    assert report["scores"]["graph-GRU strict, window"]["60 min"]["rmse"] > 0


def test_errors_name_the_file_the_row_and_the_fix(files, tmp_path: Path) -> None:
    _, edges, sensors = files
    bad = tmp_path / "bad.csv"
    bad.write_text("sensor_id,ts,count\nstops-c0-000,1709532000000,3\nstops-c0-001,noon,4\n")
    result = invoke("train", "traffic", "--data", bad, "--out", tmp_path / "x.pt", *FAST)
    assert result.exit_code == 1
    assert "bad.csv, row 2: ts 'noon' is neither epoch milliseconds nor ISO-8601" in result.output
    links = tmp_path / "links.csv"
    links.write_text("source,target\nstops-c0-000,ghost\n")
    result = invoke("train", "traffic", "--data", files[0], "--edges", links, "--sensors", sensors,
                    "--out", tmp_path / "x.pt", *FAST)
    assert result.exit_code == 1 and "links.csv, row 1: sensor 'ghost' is not in the sensors file" in result.output
    result = invoke("train", "traffic", "--data", files[0], "--interval", "5", "--out", tmp_path / "x.pt", *FAST)
    assert result.exit_code == 1 and "give a number and a unit, e.g. 5min" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_help_documents_the_file_formats() -> None:
    text = " ".join(invoke("train", "traffic", "--help").output.split())
    for words in ("--sensors", "--edges", "--coordinates", "--directed / --undirected", "--value-field",
                  "--interval", "--horizons", "--time-features / --no-time-features", "--timezone", "no threshold"):
        assert words in text, words
