"""Sensor networks the traffic pipeline knows: registered from files, or learned from the stream."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from models.traffic.graph import SensorNetwork
from stream_app.exceptions import ConfigError

__all__ = ["parse_network_spec", "load_networks", "network_from_sensors"]

log = logging.getLogger(__name__)


def parse_network_spec(spec: str | None) -> dict[str, tuple[str, str | None]]:
    """``NAME=ADJ.csv[:SENSORS.csv],...`` -> {name: (adjacency path, sensors path or None)}."""
    networks: dict[str, tuple[str, str | None]] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, files = part.partition("=")
        if not sep or not name or not files:
            raise ConfigError(f"STREAM_APP_NETWORKS entry {part!r} is not NAME=ADJ.csv[:SENSORS.csv]")
        adjacency, _, sensors = files.partition(":")
        networks[name] = (adjacency, sensors or None)
    return networks


def load_networks(spec: str | None) -> dict[str, SensorNetwork]:
    """Every network registered in ``spec`` (see :func:`parse_network_spec`)."""
    return {name: SensorNetwork.from_files(name, adjacency, sensors)
            for name, (adjacency, sensors) in parse_network_spec(spec).items()}


def network_from_sensors(name: str, sensor_ids: Iterable[str]) -> SensorNetwork:
    """An unregistered network: the sensors of its first window, no edges (persistence serves it)."""
    ids = tuple(sorted(set(sensor_ids)))
    log.warning("network %r is not registered (STREAM_APP_NETWORKS); using its %d sensors seen so far "
                "without a graph", name, len(ids))
    return SensorNetwork(name=name, sensor_ids=ids, coords=None, adjacency=np.zeros((len(ids), len(ids))))
