"""Per-network traffic checkpoints: which file serves which network, refused when it does not fit, reloaded
when it changes.

``STREAM_APP_TRAFFIC_CHECKPOINT`` is one of:

- ``NETWORK=PATH,...``: a checkpoint per network;
- a folder: ``<folder>/<network>.pt`` serves that network (files added later are found too);
- one file: it serves the network its metadata records (``network``), or every network when it
  records none.

A checkpoint records the network it was trained on (sensor ids in order, interval, horizons,
normalization, see ``models.traffic.training.save_traffic_checkpoint``). One whose sensors or interval
do not match the network is refused: logged as an error naming the fix, counted as
``stream_app_model_reloads_total{pipeline="traffic",outcome="network_mismatch"}``, and the network
keeps the model it serves (persistence at first). :meth:`TrafficModels.changed` says which networks'
files changed (size or mtime) since they were loaded, as the next-action hot reload does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import load_checkpoint
from models.exceptions import ModelError
from models.traffic.forecaster import TrafficForecaster, checkpoint_problem
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND
from models.traffic.monitor import IncidentMonitor
from stream_app.exceptions import ConfigError
from stream_app.metrics import Metrics

__all__ = ["ServedModel", "TrafficModels", "parse_checkpoint_spec", "PIPELINE"]

log = logging.getLogger(__name__)

PIPELINE = "traffic"
NETWORK_MISMATCH = "network_mismatch"


@dataclass(frozen=True)
class ServedModel:
    """A network's forecaster from a checkpoint and the incident monitor it calibrated (None without one)."""

    forecaster: TrafficForecaster
    monitor: IncidentMonitor | None
    path: str


def parse_checkpoint_spec(spec: str | None) -> tuple[dict[str, str], Path | None, str | None]:
    """(``{network: path}``, folder, single path) from ``STREAM_APP_TRAFFIC_CHECKPOINT`` (module doc)."""
    spec = (spec or "").strip()
    if not spec:
        return {}, None, None
    if "=" not in spec:
        return ({}, Path(spec), None) if Path(spec).is_dir() else ({}, None, spec)
    paths: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"STREAM_APP_TRAFFIC_CHECKPOINT entry {part!r} is not NETWORK=PATH "
                              "(give NETWORK=PATH,..., a folder of <network>.pt, or one checkpoint file)")
        paths[name.strip()] = path.strip()
    return paths, None, None


class TrafficModels:
    """The checkpoints of ``STREAM_APP_TRAFFIC_CHECKPOINT`` and what each network last loaded from them."""

    def __init__(self, spec: str | None, metrics: Metrics, *, step_ms: int) -> None:
        self.paths, self.folder, self.single = parse_checkpoint_spec(spec)
        self.metrics, self.step_ms = metrics, step_ms
        self._single_network: tuple[tuple[int, int], str | None] | None = None  # (file signature, recorded network)
        self._signatures: dict[str, tuple[int, int] | None] = {}  # network -> file signature last tried

    def path_for(self, network: str) -> str | None:
        """The checkpoint file configured for ``network`` (None: it is served persistence)."""
        if network in self.paths:
            return self.paths[network]
        if self.folder is not None:
            return str(self.folder / f"{network}.pt")
        if self.single is not None and self._single_records(self.single, network):
            return self.single
        return None

    def changed(self, networks: list[str]) -> list[str]:
        """Those of ``networks`` whose checkpoint file appeared or changed since it was last tried."""
        return [n for n in networks if self._signature(n) not in (None, self._signatures.get(n))]

    def load(self, network: SensorNetwork) -> ServedModel | None:
        """The model for ``network`` from its checkpoint; None when there is none, or it is refused (logged)."""
        path = self.path_for(network.name)
        signature = self._signature(network.name)
        self._signatures[network.name] = signature
        if path is None or signature is None:
            return None
        try:
            metadata = load_checkpoint(path, kind=CHECKPOINT_KIND)["metadata"]
            problem = checkpoint_problem(metadata, network, self.step_ms)
            if problem:
                self._refuse(network.name, path, problem)
                return None
            forecaster = TrafficForecaster.from_checkpoint(path, network, step_ms=self.step_ms)
            monitor = IncidentMonitor.from_metadata(metadata, network)
        except (ModelError, KeyError, TypeError, ValueError) as exc:
            self.metrics.model_reloads.labels(pipeline=PIPELINE, outcome="failed").inc()
            log.error("traffic network %s: checkpoint %s could not be loaded (%s); keeping the model it serves",
                      network.name, path, exc)
            return None
        self.metrics.model_reloads.labels(pipeline=PIPELINE, outcome="loaded").inc()
        log.info("traffic network %s: now serving %s from %s%s", network.name, forecaster.version, path,
                 "" if monitor else " (no incident calibration in it: no incident alerts)")
        return ServedModel(forecaster, monitor, path)

    def _refuse(self, network: str, path: str, problem: str) -> None:
        self.metrics.model_reloads.labels(pipeline=PIPELINE, outcome=NETWORK_MISMATCH).inc()
        log.error("traffic network %s: refusing checkpoint %s, it was %s. Train one on this network "
                  "(stream-app train traffic) or map the file to its own network in STREAM_APP_TRAFFIC_CHECKPOINT "
                  "(NETWORK=PATH); keeping the model it serves", network, path, problem)

    def _single_records(self, path: str, network: str) -> bool:
        """Whether the single checkpoint ``path`` is for ``network`` (one that records no network: for every one)."""
        signature = _file_signature(path)
        if signature is None:
            return True  # not there yet: it is tried once it appears
        if self._single_network is None or self._single_network[0] != signature:
            try:
                recorded = load_checkpoint(path, kind=CHECKPOINT_KIND)["metadata"].get("network")
            except (ModelError, KeyError, TypeError):  # unreadable: loading it says why
                recorded = None
            self._single_network = (signature, None if recorded is None else str(recorded))
        return self._single_network[1] in (None, network)

    def _signature(self, network: str) -> tuple[int, int] | None:
        path = self.path_for(network)
        return None if path is None else _file_signature(path)


def _file_signature(path: str) -> tuple[int, int] | None:
    """(mtime ns, size) of ``path``; None when it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
