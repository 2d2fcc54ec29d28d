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
              help="Train (once, cached) a small next-action model on generated data before starting.")
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
        with broker_url(broker) as endpoint:
            settings = Settings.from_env(broker=endpoint.url, producer_max_batch=endpoint.producer_max_batch)
            state_dir = temporary_folder(prefix="stream-app-demo-state-")
            env = {**os.environ, **settings.as_env(), "STREAM_APP_WEB_PORT": str(free_port()),
                   "STREAM_APP_STATE_DIR": str(state_dir), "STREAM_APP_NETWORKS": network,
                   "STREAM_APP_LOG_LEVEL": "warn"}
            if checkpoint is not None:
                env["STREAM_APP_CHECKPOINT"] = str(checkpoint)
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
