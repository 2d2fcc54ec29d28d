"""Traffic jobs on a generic readings file, edge list and sensors file: train, checkpoint, evaluate, serve.

The network is the simulated city as hourly vehicle counts over three weeks (daily and weekly cycle,
day-to-day demand variation, a few gaps), written to files by the test and read back the way
`stream-app train traffic --data FILE` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.traffic.forecaster import TrafficForecaster
from models.traffic.model import CHECKPOINT_KIND
from models.traffic.monitor import IncidentMonitor
from models.traffic.scoring import BASELINE_SOURCES, MODEL, choose_sources
from models.traffic.training import window_predictions
from simulation.city import TrafficConfig, generate_traffic, write_traffic_files
from stream_app.jobs import JobError
from stream_app.jobs.traffic import (
    TrafficData,
    evaluate_traffic,
    load_traffic_checkpoint,
    load_traffic_data,
    parse_duration_ms,
    train_traffic_models,
)

HOUR_MS = 3_600_000
CITY = TrafficConfig(network="weekly", n_sensors=6, n_corridors=2, seed=3, duration_hours=21 * 24, interval_ms=HOUR_MS,
                     measure="count", count_scale=0.002, incident_rate_per_day=0, dropout_prob=0.02, day_variation=0.25)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_traffic_files(generate_traffic(CITY), tmp_path_factory.mktemp("weekly"))


@pytest.fixture(scope="module")
def data(files: tuple[Path, Path, Path]) -> TrafficData:
    readings, edges, sensors = files
    return load_traffic_data(str(readings), edges=edges, sensors=sensors, horizons_min=(60, 120, 180),
                             timezone="Etc/GMT+5")


@pytest.fixture(scope="module")
def trained(data: TrafficData, tmp_path_factory: pytest.TempPathFactory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("model") / "weekly.pt"
    result, info = train_traffic_models(data, protocols=("strict",), epochs=8, hidden_dim=8, embedding_dim=2,
                                        progress=False, out={"strict": path})["strict"]
    torch.set_num_threads(previous)
    return result, info, path


def test_files_load_onto_an_hourly_grid_with_gaps_masked(data: TrafficData) -> None:
    series = data.series
    assert series.step_ms == HOUR_MS and series.kind == "count" and data.horizons == (1, 2, 3)
    assert series.network.n_sensors == 6 and series.n_steps == 21 * 24
    assert 0 < (~series.mask).sum() < 0.05 * series.mask.size  # dropped readings are gaps
    assert (series.network.adjacency > 0).sum() == 2 * 4  # 4 corridor links, both ways, none dropped
    assert any("have no reading" in note for note in data.notes)


def test_checkpoint_round_trips_with_its_network_profile_and_choices(data: TrafficData, trained) -> None:
    result, info, path = trained
    under_test, metadata = load_traffic_checkpoint(path, data.series)
    assert metadata["version"] == info["version"] and metadata["interval_ms"] == HOUR_MS
    assert metadata["sensor_ids"] == list(data.series.network.sensor_ids) and metadata["timezone"] == "Etc/GMT+5"
    assert metadata["sources"] == info["sources"] and set(metadata["validation_scores"]) == {MODEL, *BASELINE_SOURCES}
    test = data.series.rows(slice(400, 504))
    np.testing.assert_allclose(window_predictions(under_test.model, test, 3, profile=result.profile)[0],
                               window_predictions(result.model, test, 3, profile=result.profile)[0], rtol=1e-6)
    forecaster = TrafficForecaster.from_checkpoint(path, data.series.network)
    assert forecaster.version == info["version"] and forecaster.step_ms == HOUR_MS
    np.testing.assert_allclose(forecaster.profile.week_mean, result.profile.week_mean)


def test_model_beats_the_hour_of_week_average_where_the_profile_is_informative(data: TrafficData, trained) -> None:
    result, info, _ = trained
    validation = info["validation_scores"]
    for step in range(3):
        assert validation[MODEL]["rmse"][step] < validation["hour-of-week"]["rmse"][step]
    assert info["sources"] == [MODEL, MODEL, MODEL]
    report = evaluate_traffic(data, {"graph-GRU": (result, {"version": info["version"]})})
    for horizon in data.horizons:
        model = report.scores["graph-GRU, window"][horizon]["rmse"]
        assert model < report.scores["hour-of-week average"][horizon]["rmse"]
        assert model < report.scores["persistence"][horizon]["rmse"]


def test_served_forecast_falls_back_to_the_average_where_the_model_loses_on_validation(
        data: TrafficData, trained, tmp_path: Path) -> None:
    _, info, path = trained
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND)
    scores = payload["metadata"]["validation_scores"]
    scores[MODEL]["rmse"][1] = 2 * max(scores[s]["rmse"][1] for s in BASELINE_SOURCES)  # the model loses at 2 h
    best = min(BASELINE_SOURCES, key=lambda s: scores[s]["rmse"][1])
    sources = choose_sources(scores)
    assert sources == [MODEL, best, MODEL]
    losing = save_checkpoint(tmp_path / "losing.pt", kind=CHECKPOINT_KIND, state_dict=payload["state_dict"],
                             metadata={**payload["metadata"], "validation_scores": scores, "sources": sources})
    served = TrafficForecaster.from_checkpoint(losing, data.series.network)
    model_only = TrafficForecaster.from_checkpoint(path, data.series.network)
    assert served.version == f"{info['version']}+{best}@120m"
    series = data.series
    for row in range(300, 310):
        window_end = series.start_ms + (row + 1) * HOUR_MS
        observed = {s: float(series.speeds[row, i]) for i, s in enumerate(series.network.sensor_ids)}
        profile = served.profile.copy()  # the averages before this window folds in
        result, reference = served.advance(window_end, observed), model_only.advance(window_end, observed)
        target = np.asarray(served._row_local_ms(window_end + 2 * HOUR_MS))
        average = profile.hour_of_day(target) if best == "hour-of-day" else profile.hour_of_week(target)
        np.testing.assert_allclose(result.forecasts[:, 1], np.maximum(average, 0), rtol=1e-5)
        np.testing.assert_allclose(result.forecasts[:, [0, 2]], reference.forecasts[:, [0, 2]], rtol=1e-5)
        assert result.sources == (MODEL, best, MODEL)


def test_checkpoint_carries_an_incident_monitor_calibrated_on_validation(data: TrafficData, trained) -> None:
    _, info, path = trained
    network, series = data.series.network, data.series
    metadata = load_checkpoint(path, kind=CHECKPOINT_KIND)["metadata"]
    monitor = IncidentMonitor.from_metadata(metadata, network)
    config = monitor.calibration.config
    assert config.counts and config.direction == "both" and config.threshold >= config.min_threshold
    assert info["incidents"]["threshold"] == config.threshold
    forecaster = TrafficForecaster.from_checkpoint(path, network)
    busiest = int(np.argmax(series.speeds[:300].mean(axis=0)))
    closed = range(450, 454)  # a Friday, 18:00-22:00 local: the station counts nothing
    events = []
    for row in range(400, 480):
        values = series.speeds[row].copy()
        values[busiest] = 0.0 if row in closed else values[busiest]
        observed = {s: float(values[i]) for i, s in enumerate(network.sensor_ids) if series.mask[row, i]}
        events += [(row, e) for e in monitor.update(forecaster.advance(series.start_ms + (row + 1) * HOUR_MS,
                                                                       observed))]
    mine = [(row, e) for row, e in events if network.sensor_ids[busiest] in e.sensors]
    assert [e.status for _, e in mine] == ["raised", "resolved"], mine
    (raised_at, raised), (resolved_at, resolved) = mine
    assert closed[0] <= raised_at <= closed[0] + config.depart_windows and raised.score < 0
    assert resolved.incident_id == raised.incident_id and closed[-1] < resolved_at <= closed[-1] + 8


def test_readings_file_errors_name_the_file_the_row_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sensor_id,ts,value\na,1700000000000,3\nb,yesterday,4\n")
    with pytest.raises(JobError, match=r"bad.csv, row 2: ts 'yesterday' is neither epoch milliseconds nor ISO-8601"):
        load_traffic_data(str(bad))
    seconds = tmp_path / "seconds.csv"
    seconds.write_text("sensor_id,ts,value\na,1700000000,3\n")
    with pytest.raises(JobError, match="looks like epoch seconds.*multiply by 1000"):
        load_traffic_data(str(seconds))


def test_option_errors_say_what_to_pass(data: TrafficData, files: tuple[Path, Path, Path]) -> None:
    with pytest.raises(JobError, match="not a whole number of 60-minute steps"):
        load_traffic_data(str(files[0]), edges=files[1], horizons_min=(90,))
    with pytest.raises(JobError, match="Los-loop brings its own network"):
        load_traffic_data("los-loop", edges=files[1])
    with pytest.raises(JobError, match="IANA name"):
        load_traffic_data(str(files[0]), timezone="Mars/Olympus")
    assert parse_duration_ms("5min") == 300_000 and parse_duration_ms("1h") == HOUR_MS
    with pytest.raises(JobError, match="give a number and a unit"):
        parse_duration_ms("5")
