"""`stream-app demo`: embedded broker + worker + generator + live view, in one command."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

from stream_app.broker import free_port
from stream_app.cli.common import broker_option, broker_url, console
from stream_app.cli.io import HISTORY_MS, corrupt, generated_events, to_records
from stream_app.cli.live import LiveView, watch
from stream_app.kafka_io import produce
from stream_app.lifecycle import remove_folder, spawn_child, stop_child, stop_on_signals, temporary_folder
from stream_app.settings import Settings

__all__ = ["demo", "write_network_files"]

WORKER_STOP_S = 30.0  # time the worker gets to commit and leave its group before SIGKILL
TRAFFIC_HISTORY_DAYS = 14  # of generated city history the demo's traffic model learns from (two weekly cycles)
TRAFFIC_STEP_MS = 300_000  # the worker's sensor window (STREAM_APP_SENSOR_WINDOW_S default)


def write_network_files(name: str, sensors: list[tuple[str, float, float]], folder: Path) -> str:
    """Write a generated network as adjacency + sensors CSV; returns its STREAM_APP_NETWORKS entry."""
    from models.traffic.graph import SensorNetwork

    folder.mkdir(parents=True, exist_ok=True)
    ids = [s[0] for s in sensors]
    coords = np.array([[lat, lon] for _, lat, lon in sensors])
    network = SensorNetwork.from_coordinates(name, ids, coords)
    adjacency, listing = folder / f"{name}-adj.csv", folder / f"{name}-sensors.csv"
    np.savetxt(adjacency, network.adjacency, delimiter=",", fmt="%.6f")
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sensor_id", "lat", "lon"])
        writer.writerows(sensors)
    return f"{name}={adjacency}:{listing}"


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return spawn_child([sys.executable, "-m", "stream_app", "worker"], grace_s=WORKER_STOP_S, env=env,
                           stdout=log, stderr=subprocess.STDOUT)


@click.command()
@broker_option
@click.option("--users", default=300, show_default=True, help="Simulated users.")
@click.option("--sensors", default=40, show_default=True, help="Simulated road sensors.")
@click.option("--rate", default=300.0, show_default=True, help="Input records per second.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--bad-fraction", default=0.002, show_default=True, help="Fraction of malformed input records.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train (once, cached) a small next-action model on generated users and a traffic model on "
                   "two weeks of the generated city before starting; --no-train serves the online Markov "
                   "predictor and persistence forecasts.")
@click.option("--seed", default=0, show_default=True)
def demo(broker: str | None, users: int, sensors: int, rate: float, duration: float | None, bad_fraction: float,
         train: bool, seed: int) -> None:
    """Everything in one command: broker, worker, workload generator, and a live view of the outputs.

    Ctrl-C, SIGTERM or SIGHUP stop the worker and the broker and remove their temporary folders;
    if the demo is killed outright (SIGKILL), its guardian process does the same.
    """
    from simulation.city import TrafficConfig, generate_traffic

    demo_dir = Path(Settings.from_env().cache_dir) / "demo"
    with stop_on_signals():
        start_ms = int(time.time() * 1000) - HISTORY_MS
        checkpoint = _demo_model(seed, demo_dir) if train else None
        roads = TrafficConfig(n_sensors=sensors, seed=seed, start_ms=start_ms, duration_hours=0)
        network = write_network_files(roads.network, generate_traffic(roads).sensors, demo_dir)
        traffic_checkpoint = train_demo_traffic_model(demo_dir, sensors, seed, start_ms) if train else None
        with broker_url(broker) as endpoint:
            settings = Settings.from_env(broker=endpoint.url, producer_max_batch=endpoint.producer_max_batch)
            state_dir = temporary_folder(prefix="stream-app-demo-state-")
            env = {**os.environ, **settings.as_env(), "STREAM_APP_WEB_PORT": str(free_port()),
                   "STREAM_APP_STATE_DIR": str(state_dir), "STREAM_APP_NETWORKS": network,
                   "STREAM_APP_LOG_LEVEL": "warn"}
            if checkpoint is not None:
                env["STREAM_APP_CHECKPOINT"] = str(checkpoint)
            if traffic_checkpoint is not None:
                env["STREAM_APP_TRAFFIC_CHECKPOINT"] = f"{roads.network}={traffic_checkpoint}"
            log_path = demo_dir / "worker.log"
            try:
                worker = _start_worker(env, log_path)
                console.print(f"worker: pid {worker.pid}, metrics at "
                              f"http://127.0.0.1:{env['STREAM_APP_WEB_PORT']}/metrics, log {log_path}")
                try:
                    asyncio.run(_run(settings, users, sensors, rate, duration, bad_fraction, seed, start_ms))
                except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: a normal way to end the demo
                    pass
                finally:
                    console.print("stopping the worker...")
                    stop_child(worker, WORKER_STOP_S)
            finally:
                remove_folder(state_dir)


async def _run(settings: Settings, users: int, sensors: int, rate: float, duration: float | None,
               bad_fraction: float, seed: int, start_ms: int) -> None:
    events = generated_events(users, sensors, seed, start_ms)
    produced = [0]
    records = corrupt(to_records(events, settings.topic_prefix), bad_fraction, seed)
    view = LiveView(produced=lambda: produced[0])
    producer = asyncio.create_task(produce(settings, records, rate=rate,
                                           on_sent=lambda n: produced.__setitem__(0, n)))
    try:
        await watch(settings, view, duration)
    finally:
        producer.cancel()


def _demo_model(seed: int, demo_dir: Path) -> Path | None:
    """A small next-action checkpoint trained on generated data, cached after the first run."""
    from stream_app.jobs.next_action import train_demo_model

    return train_demo_model(demo_dir / "next-action.pt", seed=seed)


def train_demo_traffic_model(demo_dir: Path, sensors: int, seed: int, stream_start_ms: int) -> Path:
    """The demo city's traffic checkpoint (cached per sensor count and seed): a graph-GRU trained with a
    progress bar on ``TRAFFIC_HISTORY_DAYS`` of the generated city before the stream starts, on the network
    the worker registers, in 5-minute windows and the city's local time."""
    from models.checkpoint import load_checkpoint
    from models.exceptions import CheckpointError
    from models.traffic.graph import SensorNetwork
    from models.traffic.model import CHECKPOINT_KIND
    from models.traffic.readings import read_readings, to_series
    from simulation.city import TrafficConfig, generate_traffic, write_traffic_files
    from stream_app.jobs.traffic import TrafficData, train_traffic_models

    path = demo_dir / f"traffic-{sensors}-sensors-seed-{seed}.pt"
    if path.is_file():
        try:
            load_checkpoint(path, kind=CHECKPOINT_KIND)
            return path
        except CheckpointError as exc:
            console.print(f"retraining the demo traffic model: {exc}")
    history_ms = TRAFFIC_HISTORY_DAYS * 86_400_000
    city = TrafficConfig(n_sensors=sensors, seed=seed, start_ms=stream_start_ms - history_ms,
                         duration_hours=TRAFFIC_HISTORY_DAYS * 24, interval_ms=TRAFFIC_STEP_MS)
    console.print(f"Training a traffic model on {TRAFFIC_HISTORY_DAYS} days of the generated city "
                  f"(first run only; cached in {path})")
    workload = generate_traffic(city)
    ids = [s[0] for s in workload.sensors]
    # The network as the worker will read it: from the files the demo registers (rounded weights).
    adjacency, listing = write_network_files(city.network, workload.sensors, demo_dir).split("=", 1)[1].split(":")
    network = SensorNetwork.from_files(city.network, adjacency, listing)
    if list(network.sensor_ids) != ids:
        raise click.ClickException("the generated city's sensors changed between history and stream; "
                                   f"remove {demo_dir} and run the demo again")
    readings_file, _, _ = write_traffic_files(workload, demo_dir / "city-history")
    timezone = f"Etc/GMT{-int(city.utc_offset_hours):+d}"  # POSIX sign: Etc/GMT+5 is UTC-5
    series = to_series(read_readings(readings_file), network, interval_ms=TRAFFIC_STEP_MS, timezone=timezone).series
    horizons = tuple(m * 60_000 // TRAFFIC_STEP_MS for m in Settings().horizons_min)
    trained = train_traffic_models(TrafficData(city.network, series, horizons), protocols=("strict",),
                                   epochs=15, patience=3, hidden_dim=32, seed=seed, out={"strict": path})
    summary = trained["strict"][1]
    served = zip(Settings().horizons_min, summary["sources"], strict=False)
    console.print(f"[green]traffic model {summary['version']}[/]: serving "
                  + ", ".join(f"{minutes} min: {source}" for minutes, source in served))
    return path
