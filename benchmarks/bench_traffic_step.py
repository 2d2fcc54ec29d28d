"""Latency of one TrafficGRU step (batch 1) on Los-loop's network and on a generated 5,000-sensor one.

Each network is timed with a dense and a sparse (COO) normalized adjacency in the same run, and
the whole ``TrafficForecaster.advance`` (dict in, imputation, step, numpy out) with the layout the
model picks by itself; "profile" is that advance for a model that reads the seasonal profile, with
the profile updated online and one horizon served by the hour-of-week average (what training
produces now). Median of repeats after a warm-up, inference mode, one thread by default.

    .venv/bin/python benchmarks/bench_traffic_step.py [--threads 1] [--hidden 64] [--neighbors 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from models.paths import shared_data_dir
from models.traffic.forecaster import TrafficForecaster
from models.traffic.graph import SensorNetwork
from models.traffic.model import N_TIME_FEATURES, STEP_MS, TrafficConfig, TrafficGRU
from models.traffic.profile import SeasonalProfile, profile_slot_ms

__all__ = ["main"]

logger = logging.getLogger(__name__)


def generated_network(n_sensors: int, neighbors: int, seed: int = 0) -> SensorNetwork:
    """Sensors scattered over a 60 x 60 km box, Gaussian kernel over each one's k nearest."""
    rng = np.random.default_rng(seed)
    coords = np.column_stack([34.0 + rng.random(n_sensors) * 0.54,
                              -118.5 + rng.random(n_sensors) * 0.65])
    ids = [f"g{i}" for i in range(n_sensors)]
    return SensorNetwork.from_coordinates(f"generated-{n_sensors}", ids, coords, threshold=0.0,
                                          max_neighbors=neighbors)


def los_loop_network(fallback_neighbors: int) -> SensorNetwork:
    """Los-loop's 207-sensor network, or a generated one of that size without the data."""
    folder = shared_data_dir() / "los-loop"
    if folder.is_dir():
        return SensorNetwork.from_files("los-loop", folder / "los_adj.csv", folder / "los_speed.csv")
    return generated_network(207, fallback_neighbors)


def median_ms(call: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``call`` in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def time_step(network: SensorNetwork, hidden: int, sparse: bool, repeats: int) -> float:
    """Median ms of one ``TrafficGRU.step`` at batch 1."""
    torch.manual_seed(0)
    config = TrafficConfig(n_sensors=network.n_sensors, hidden_dim=hidden, horizons=tuple(range(1, 13)))
    model = TrafficGRU(config, network.adjacency, sparse=sparse).eval()
    speeds = 40 + 20 * torch.rand(1, network.n_sensors)
    features, observed = torch.rand(1, N_TIME_FEATURES), torch.ones(1, network.n_sensors)
    h = torch.zeros(1, network.n_sensors, hidden)

    def step() -> None:
        with torch.inference_mode():
            model.step(speeds, features, h, observed_t=observed)

    return median_ms(step, repeats)


def time_advance(network: SensorNetwork, hidden: int, repeats: int) -> tuple[float, bool]:
    """Median ms of ``TrafficForecaster.advance`` with 95 % of sensors reporting; the layout used."""
    config = TrafficConfig(n_sensors=network.n_sensors, hidden_dim=hidden, horizons=tuple(range(1, 13)))
    model = TrafficGRU(config, network.adjacency)
    forecaster = TrafficForecaster(network, model, version="bench")
    rng = np.random.default_rng(0)
    reporting = [s for s in network.sensor_ids if rng.random() < 0.95]
    observed = {s: float(v) for s, v in zip(reporting, 40 + 20 * rng.random(len(reporting)), strict=True)}
    clock = iter(range(STEP_MS, STEP_MS * (repeats + 100), STEP_MS))
    return median_ms(lambda: forecaster.advance(next(clock), observed), repeats), model.sparse


def time_advance_with_profile(network: SensorNetwork, hidden: int, repeats: int) -> float:
    """Median ms of ``advance`` with the profile read, updated online, and a baseline served."""
    horizons = tuple(range(1, 13))
    config = TrafficConfig(n_sensors=network.n_sensors, hidden_dim=hidden, horizons=horizons, use_profile=True)
    rng = np.random.default_rng(1)
    rows = 14 * 288
    values = 40 + 20 * rng.random((rows, network.n_sensors))
    times = np.int64(1_704_067_200_000) + STEP_MS * np.arange(rows)
    profile = SeasonalProfile.fit(values, np.ones(values.shape, bool), times, profile_slot_ms(STEP_MS),
                                  step_ms=STEP_MS)
    sources = ["model"] * 11 + ["hour-of-week"]
    forecaster = TrafficForecaster(network, TrafficGRU(config, network.adjacency), version="bench", profile=profile,
                                   sources=sources)
    reporting = [s for s in network.sensor_ids if rng.random() < 0.95]
    observed = {s: float(v) for s, v in zip(reporting, 40 + 20 * rng.random(len(reporting)), strict=True)}
    clock = iter(range(int(times[-1]), int(times[-1]) + STEP_MS * (repeats + 100), STEP_MS))
    return median_ms(lambda: forecaster.advance(next(clock), observed), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units per sensor")
    parser.add_argument("--neighbors", type=int, default=8, help="k of the generated kNN graph")
    parser.add_argument("--large", type=int, default=5000, help="sensors of the generated network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), hidden {args.hidden}, batch 1")
    print(f"{'network':<16} {'sensors':>7} {'edges/sensor':>12} {'dense ms':>9} {'sparse ms':>9} "
          f"{'speed-up':>8} {'advance ms':>10} {'layout':>7} {'profile ms':>10}")
    started = time.perf_counter()
    large = generated_network(args.large, args.neighbors)
    logger.info("generated network built in %.1f s", time.perf_counter() - started)
    for network, repeats in ((los_loop_network(args.neighbors), 200), (large, 30)):
        dense = time_step(network, args.hidden, sparse=False, repeats=repeats)
        sparse = time_step(network, args.hidden, sparse=True, repeats=repeats)
        advance, used_sparse = time_advance(network, args.hidden, repeats)
        with_profile = time_advance_with_profile(network, args.hidden, repeats)
        edges = float((network.adjacency > 0).sum()) / network.n_sensors
        print(f"{network.name:<16} {network.n_sensors:>7} {edges:>12.1f} {dense:>9.3f} "
              f"{sparse:>9.3f} {dense / sparse:>7.1f}x {advance:>10.3f} "
              f"{'sparse' if used_sparse else 'dense':>7} {with_profile:>10.3f}")


if __name__ == "__main__":
    main()
