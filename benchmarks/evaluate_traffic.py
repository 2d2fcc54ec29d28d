"""Traffic forecasts and incident alerts against the simple baselines, on three networks.

- ``los-loop``: the shared Los-loop set (207 sensors, 5-minute speeds, one week);
- ``city``: the simulated city's speeds (5-minute windows, weeks, incidents injected at random);
- ``counts``: the simulated city as hourly vehicle counts, sparse (many zeros), weeks long;
- ``foursquare-counts``: a real count network, Foursquare NYC check-ins per hour and H3 cell
  (``../shared/data/foursquare-nyc``, 2012-04-03 to 2013-02-16, local time America/New_York).

The generated sets are written as a readings CSV, an edge list and a sensors CSV, and read back
through the same loader as ``stream-app train traffic --data FILE`` (so the generic path is the one
measured). Protocol: strict (train on the first 64 %, early stopping and every choice on the next
16 %, test once on the last 20 %); ``--protocols strict,tgcn`` adds T-GCN's refit on 80 %.

Incidents: the detector's expected value is the seasonal profile (departure from normal), its
residual scale is fitted on the training rows (leave-one-period-out profile residuals), its
threshold calibrated on the validation rows to the alert budget (one incident per sensor and
week); the test rows are then replayed and the incidents counted (and, for the city, matched to
the injected ones).

    .venv/bin/python benchmarks/evaluate_traffic.py los-loop [--out artifacts]
    .venv/bin/python benchmarks/evaluate_traffic.py city --weeks 4
    .venv/bin/python benchmarks/evaluate_traffic.py counts --weeks 4
    .venv/bin/python benchmarks/evaluate_traffic.py foursquare-counts [--h3-resolution 7 --min-checkins 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.paths import shared_data_dir
from models.traffic.calendar import WEEK_MS
from models.traffic.data import TrafficSeries, strict_split, tgcn_split
from models.traffic.evaluation import ModelUnderTest, test_profile
from models.traffic.incidents import (
    RAISED,
    IncidentConfig,
    IncidentDetector,
    ResidualScale,
    calibrate_threshold,
    neighbour_lists,
    residuals,
    z_scores,
)
from models.traffic.inputs import model_inputs
from models.traffic.monitor import calibrate_incidents, seasonal_scores
from models.traffic.profile import SeasonalProfile
from models.traffic.training import TrainResult, fit_profile
from simulation.city import Incident, TrafficConfig, generate_traffic, write_traffic_files
from stream_app.jobs.traffic import TrafficData, evaluate_traffic, load_traffic_data, train_traffic_models

__all__ = ["main", "incident_report"]

logger = logging.getLogger(__name__)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# NYC.npy's minutes count from the first check-in's hour, 2012-04-03T18:00Z: minute 458,435 then
# falls on 2013-02-16 02:35Z, the original data set's last check-in, and the hourly profile has its
# trough at 4 am and peaks at 8 am and 7 pm New York time (with 00:00Z the trough would be at 10 am).
FOURSQUARE_START_MS = int(dt.datetime(2012, 4, 3, 18, tzinfo=dt.UTC).timestamp() * 1000)


def incident_report(series: TrafficSeries, direction: str, counts: bool, injected: list[Incident] | None = None,
                    forecasts: np.ndarray | None = None) -> dict[str, Any]:
    """Calibrate on validation, replay the test rows; counts and, with ``injected``, precision/recall.

    ``forecasts``: [time, sensors] the one-step forecast of each row, the detector's expected value
    (None: the seasonal profile, gated on two periods of history).
    """
    split = strict_split(series.n_steps)
    profile = fit_profile(series, split.train)
    neighbours = neighbour_lists(series.network.adjacency)
    if forecasts is None:  # what the checkpoint's monitor does
        calibration = calibrate_incidents(series, split, profile)
        config, scale, val_raised = calibration.config, calibration.scale, calibration.validation_incidents
    else:
        train = series.rows(split.train)
        mask = train.mask & np.isfinite(forecasts[split.train])
        scale = ResidualScale.fit(residuals(train.speeds, forecasts[split.train], counts), mask, train.local_ms(),
                                  profile.slot_ms, minimum=1.0 if counts else 0.0)
        config = IncidentConfig(direction=direction, counts=counts)
        val_z, val_ends = _scores(series, split.val, profile, scale, config, forecasts)
        threshold, val_raised = calibrate_threshold(val_z, val_ends, neighbours, config)
        config = dataclasses.replace(config, threshold=threshold)
    threshold = config.threshold
    test_part = tgcn_split(series.n_steps).test
    test_z, test_ends = _scores(series, test_part, test_profile(series), scale, config, forecasts)
    detector = IncidentDetector(series.network.sensor_ids, neighbours, config, name=series.network.name)
    events = [e for t in range(len(test_ends)) for e in detector.step(int(test_ends[t]), test_z[t])]
    raised = [e for e in events if e.status == RAISED]
    weeks = (test_ends[-1] - test_ends[0] + series.step_ms) / WEEK_MS
    per_sensor = [sum(e.sensor_id == s for e in raised) for s in {e.sensor_id for e in raised}]
    report = {"expected": "one-step forecast" if forecasts is not None else "profile",
              "threshold": round(threshold, 2), "validation incidents": val_raised,
              "test incidents": len(raised), "test resolved": sum(e.status != RAISED for e in events),
              "test days": round(float(weeks) * 7, 2),
              "per sensor per week": round(float(len(raised) / series.network.n_sensors / weeks), 3),
              "sensors alerted": len({e.sensor_id for e in raised}), "max per sensor": max(per_sensor, default=0)}
    if injected is not None:
        report.update(_match(events, injected, int(test_ends[0]) - series.step_ms, int(test_ends[-1]), series))
    return report


def one_step_forecasts(result: TrainResult, series: TrafficSeries) -> np.ndarray:
    """[time, sensors] the model's forecast of each row made at the row before (stream mode; row 0 NaN)."""
    model = result.model
    inputs = model_inputs(series, model.config.horizons, result.profile if model.config.use_profile else None)
    with torch.inference_mode():
        batch = inputs.gather(torch.arange(series.n_steps)[None, :], with_targets=False)
        predictions, _ = model(batch.values, **batch.model_kwargs(model.config.use_time_features))
    first = model.config.horizons.index(1)
    track = np.full(series.speeds.shape, np.nan)
    track[1:] = np.maximum(predictions[0, :-1, :, first].numpy(), 0.0)
    return track


def _scores(series: TrafficSeries, part: slice, profile: SeasonalProfile, scale: ResidualScale,
            config: IncidentConfig, forecasts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """z [windows, sensors] and window ends of ``part`` against the profile (history-gated) or the forecasts."""
    if forecasts is None:
        return seasonal_scores(series, part, profile, scale, config)
    rows = series.rows(part)
    observed = np.where(rows.mask, rows.speeds, np.nan)
    z = z_scores(observed, forecasts[part], scale.at(rows.local_ms()), counts=config.counts)
    return z, rows.row_ms() + series.step_ms


def _match(events: list[Any], injected: list[Incident], start_ms: int, end_ms: int,
           series: TrafficSeries) -> dict[str, Any]:
    """Injected incidents in the test rows found by a raised incident on their sensor or a neighbour
    (recall), and raised incidents near an injected one (precision), within 30 minutes."""
    slack = 30 * 60_000
    neighbours = neighbour_lists(series.network.adjacency)
    index = {s: i for i, s in enumerate(series.network.sensor_ids)}
    near = {s: {s, *(series.network.sensor_ids[j] for j in neighbours[index[s]])} for s in index}
    truth = [i for i in injected if start_ms <= i.start_ms < end_ms]
    raised = [e for e in events if e.status == RAISED]

    def hit(event: Any, incident: Incident) -> bool:
        return (event.sensor_id in near[incident.sensor_id]
                and incident.start_ms - slack <= event.window_end_ms <= incident.end_ms + slack)

    found = [i for i in truth if any(hit(e, i) for e in raised)]
    correct = [e for e in raised if any(hit(e, i) for i in truth)]
    delays = [min(e.window_end_ms for e in raised if hit(e, i)) - i.start_ms for i in found]
    return {"injected in test": len(truth), "found": len(found),
            "recall": round(len(found) / max(len(truth), 1), 3),
            "precision": round(len(correct) / max(len(raised), 1), 3),
            "median delay min": round(float(np.median(delays)) / 60_000, 1) if delays else None}


def foursquare_count_files(folder: Path, root: Path, resolution: int, min_checkins: int) -> tuple[Path, Path, str]:
    """Hourly check-in counts per H3 cell of ``resolution`` (cells with at least ``min_checkins`` in all),
    written as a readings CSV (sensor_id, ts, count; every hour of every cell, zeros included, since a
    missing reading is a gap) and a sensors CSV (cell id, centroid lat, lon). Returns them and a summary."""
    import h3  # only this network needs it

    checkins = np.load(root / "NYC.npy")
    pois = np.load(root / "NYC_POI.npy")
    cell_of_poi = {int(p): h3.latlng_to_cell(float(lat), float(lon), resolution) for p, lat, lon in pois}
    cells = np.array([cell_of_poi[int(p)] for p in checkins[:, 1]])
    names, cell_index, totals = np.unique(cells, return_inverse=True, return_counts=True)
    kept = np.flatnonzero(totals >= min_checkins)
    hours = checkins[:, 2].astype(np.int64) // 60
    counts = np.zeros((int(hours.max()) + 1, len(names)), dtype=np.int64)
    np.add.at(counts, (hours, cell_index), 1)
    counts = counts[:, kept]
    folder.mkdir(parents=True, exist_ok=True)
    readings, sensors = folder / "readings.csv", folder / "sensors.csv"
    stamps = FOURSQUARE_START_MS + np.arange(len(counts)) * HOUR_MS
    with readings.open("w") as out:
        out.write("sensor_id,ts,count\n")
        for j, cell in enumerate(names[kept]):
            out.writelines(f"{cell},{t},{c}\n" for t, c in zip(stamps.tolist(), counts[:, j].tolist(), strict=True))
    centroids = [(cell, *h3.cell_to_latlng(cell)) for cell in names[kept]]
    sensors.write_text("sensor_id,lat,lon\n" + "".join(f"{c},{a:.6f},{o:.6f}\n" for c, a, o in centroids))
    summary = (f"{len(kept)} of {len(names)} H3 res-{resolution} cells with >= {min_checkins} check-ins "
               f"({counts.sum()} of {len(checkins)} check-ins), {len(counts)} hours, "
               f"mean {counts.mean():.3f} per cell-hour, {(counts == 0).mean():.0%} zeros, max {counts.max()}")
    return readings, sensors, summary


def run(data: TrafficData, protocols: tuple[str, ...], out: Path, direction: str, counts: bool,
        injected: list[Incident] | None, **hyper: Any) -> None:
    """Train, print the validation choices, the test tables and the incident report."""
    started = time.perf_counter()
    paths = {p: out / f"traffic-{data.name}-{p}.pt" for p in protocols}
    trained = train_traffic_models(data, protocols=protocols, progress=False, out=paths, **hyper)
    strict, info = trained["strict"]
    print(f"{data.name}: {data.series.network.n_sensors} sensors, {data.series.n_steps} rows of "
          f"{data.step_minutes:g} min; strict best epoch {strict.best_epoch} of {info['epochs_run']} run, "
          f"{(time.perf_counter() - started) / 60:.1f} min (all protocols); time features "
          f"{'on' if info['time_features'] else 'off'}")
    print("validation RMSE per horizon (strict run), and what is served:")
    for source, metrics in (info["validation_scores"] or {}).items():
        print(f"  {source:<13}" + "".join(f"{metrics['rmse'][h - 1]:>9.4f}" for h in data.horizons))
    print("  served       " + "".join(f"{info['sources'][h - 1]:>13}" for h in data.horizons))
    models = {f"graph-GRU {p}": (ModelUnderTest(r.model, tuple(i["sources"])), {"version": i["version"]})
              for p, (r, i) in trained.items()}
    print(evaluate_traffic(data, models, hyper.get("input_steps", 12)).markdown())
    print("incidents:", incident_report(data.series, direction, counts, injected))
    forecasts = one_step_forecasts(strict, data.series)
    print("incidents:", incident_report(data.series, direction, counts, injected, forecasts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", choices=["los-loop", "city", "counts", "foursquare-counts"])
    parser.add_argument("--weeks", type=float, default=4.0, help="length of a generated network")
    parser.add_argument("--sensors", type=int, default=48, help="sensors of a generated network")
    parser.add_argument("--protocols", default="strict", help="strict or strict,tgcn")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units per sensor")
    parser.add_argument("--embedding", type=int, default=8, help="per-sensor embedding size")
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap (early stopping decides)")
    parser.add_argument("--time-features", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--h3-resolution", type=int, default=7, help="foursquare-counts: H3 cell resolution")
    parser.add_argument("--min-checkins", type=int, default=500,
                        help="foursquare-counts: keep the cells with at least this many check-ins in all")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="foursquare-counts: folder of NYC.npy, NYC_POI.npy (default: shared foursquare-nyc)")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="checkpoint (and generated data) folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    hyper = {"hidden_dim": args.hidden, "embedding_dim": args.embedding, "epochs": args.epochs, "seed": args.seed,
             "time_features": {"auto": None, "on": True, "off": False}[args.time_features]}
    protocols = tuple(p.strip() for p in args.protocols.split(","))
    if args.network == "los-loop":
        run(load_traffic_data("los-loop"), protocols, args.out, "below", False, None, **hyper)
        return
    if args.network == "foursquare-counts":
        root = args.data_dir or shared_data_dir() / "foursquare-nyc"
        readings, sensors, summary = foursquare_count_files(args.out / "foursquare-counts", root,
                                                            args.h3_resolution, args.min_checkins)
        print("foursquare-counts:", summary)
        data = load_traffic_data(str(readings), sensors=sensors, timezone="America/New_York", interval="1h",
                                 horizons_min=(60, 120, 180), network="foursquare-counts", kind="count")
        for note in data.notes:
            print("note:", note)
        run(data, protocols, args.out, "both", True, None, **hyper)
        return
    counts = args.network == "counts"
    config = TrafficConfig(network="city-counts" if counts else "city-speeds", n_sensors=args.sensors, seed=args.seed,
                           duration_hours=args.weeks * 168, interval_ms=3_600_000 if counts else 300_000,
                           measure="count" if counts else "speed", count_scale=0.0001 if counts else 1.0,
                           incident_rate_per_day=0.0 if counts else 3.0, dropout_prob=0.01)
    workload = generate_traffic(config)
    readings, edges, sensors = write_traffic_files(workload, args.out / config.network)
    injected = workload.incidents
    data = load_traffic_data(str(readings), edges=edges, sensors=sensors, timezone="Etc/GMT+5",
                             interval="1h" if counts else "5min", horizons_min=(60, 120, 180) if counts else None,
                             network=config.network, kind="count" if counts else "speed")
    for note in data.notes:
        print("note:", note)
    run(data, protocols, args.out, "both" if counts else "below", counts, None if counts else injected, **hyper)


if __name__ == "__main__":
    main()
