"""The app factory: one worker's Faust app, its topics, tables, pipelines, agents, timers and pages,
built from its settings. Importing this module builds nothing."""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from models.next_action.serving import GRUPredictor, MarkovPredictor, NextActionPredictor
from stream_app.agents.behavior import (
    BehaviorTransport,
    attach_behavior_agent,
    attach_behavior_timers,
    attach_transport,
)
from stream_app.agents.cells import CellTransport, attach_cell_transport, attach_cells
from stream_app.agents.traffic import SensorTransport, attach_traffic, attach_traffic_transport
from stream_app.kafka_io import broker_credentials
from stream_app.lag import attach_consumer_lag
from stream_app.metrics import Metrics
from stream_app.models_holder import HotModel
from stream_app.pipelines.base import StateStore
from stream_app.pipelines.behavior import PIPELINE as BEHAVIOR
from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.pipelines.cells import CellPipeline
from stream_app.pipelines.traffic import NetworkSnapshots, SensorPartitions, SensorWindows
from stream_app.settings import Settings
from stream_app.tables import Tables, declare_tables
from stream_app.topics import Topics, declare_topics
from stream_app.transport import TransportMetrics
from stream_app.web import attach_pages

__all__ = ["StreamApp", "create_app", "broker_credentials"]


def _canonical_url(settings: Settings) -> str:
    """Where other workers reach this one's query API (table routing)."""
    host = socket.gethostname() if settings.web_host in ("0.0.0.0", "::") else settings.web_host
    return f"http://{host}:{settings.web_port}"


@dataclass(frozen=True)
class StreamApp:
    """A worker's app and its parts: ``faust`` is what runs; the pipelines hold all per-key state.
    A stage this worker does not run (``settings.stages``) has None for its parts."""

    faust: faust.App
    settings: Settings
    metrics: Metrics
    topics: Topics
    tables: Tables
    behavior: BehaviorPipeline | None
    cells: CellPipeline | None
    sensors: SensorWindows | SensorPartitions | None  # traffic stage 1: a Faust agent's, or the transport's
    networks: NetworkSnapshots | None
    hot_path: BehaviorTransport | None = None  # the transport running ``behavior`` (None: a Faust agent, or absent)
    traffic: SensorTransport | None = None  # the transport running traffic stage 1 (None: a Faust agent, or absent)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> StreamApp:
    """The app for ``settings``: every topic, and the tables, pipelines, agents, timers and sensors of
    the stages it runs (``settings.stages``; all three on the faust hot path), and the pages.

    No broker is contacted here (a configured next-action checkpoint is loaded when the behavior
    stage runs here). Its Prometheus series, the app's and Faust's, go to ``registry`` (a new one by
    default), served on /metrics. Every topic is still created at start, whichever stages run.
    """
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    app = _faust_app(settings)
    setup_prometheus_sensors(app, pattern="/metrics", registry=metrics.registry, name_prefix="faust")
    topics, tables = declare_topics(app, settings), declare_tables(app, settings)
    stages, on_transport = settings.stages, settings.hot_path == "transport"
    behavior = hot_path = None
    if "behavior" in stages:
        fallback = MarkovPredictor(window_size=settings.window_events, window_span_s=settings.window_span_s)
        load = functools.partial(GRUPredictor.from_checkpoint, surprisal=settings.behavior_alerts)
        model: HotModel[NextActionPredictor] = HotModel(BEHAVIOR, settings.checkpoint, load=load,
                                                        fallback=fallback, metrics=metrics,
                                                        allow_fallback=settings.allow_fallback)
        # Faust tables are mutable mappings of bytes: the pipelines' state stores. On the transport hot
        # path the users live in the transport's store, given to the pipeline once it has started.
        users: StateStore = cast(StateStore, tables.user_state) if tables.user_state is not None \
            else dict[bytes, bytes]()
        behavior = BehaviorPipeline(settings, users, model, metrics)
        if on_transport:
            hot_path = BehaviorTransport(settings, metrics, behavior, _canonical_url(settings))
            attach_transport(app, hot_path)
        else:
            attach_behavior_agent(app, settings, topics, tables, metrics, behavior)
        attach_behavior_timers(app, settings, behavior)
    # The transports of one worker share their series (a registry takes each once): the behavior
    # transport's, or, without it here, one set declared for the others.
    shared: TransportMetrics | None = None
    if on_transport:
        shared = hot_path.transport.metrics if hot_path is not None else TransportMetrics.create(
            metrics.registry, consumed=metrics.events_consumed, dead_letters=metrics.dead_letters,
            outputs=metrics.outputs)
    cells = None
    if "cells" in stages:
        cells = CellPipeline(settings, metrics)
        if shared is None:
            attach_cells(app, settings, topics, tables, cells)
        else:  # the cell stage on its own transport
            attach_cell_transport(app, CellTransport(settings, metrics, cells, _canonical_url(settings), shared))
    traffic = sensors = networks = None
    if "traffic" in stages:
        networks = NetworkSnapshots(settings, cast(StateStore, tables.network_state), metrics)
        if shared is None:
            sensors = SensorWindows(settings, cast(StateStore, tables.sensor_windows), metrics)
            attach_traffic(app, settings, topics, tables, metrics, sensors, networks)
        else:  # traffic stage 1 on its own transport, stage 2 a Faust agent
            traffic = attach_traffic_transport(app, settings, topics, tables, metrics, networks,
                                               _canonical_url(settings), shared)
    attach_consumer_lag(app, metrics)
    attach_pages(app, tables, behavior, networks, hot_path.transport if hot_path is not None else None)
    return StreamApp(faust=app, settings=settings, metrics=metrics, topics=topics, tables=tables,
                     behavior=behavior, cells=cells, sensors=traffic.sensors if traffic else sensors,
                     networks=networks, hot_path=hot_path, traffic=traffic)


def _faust_app(settings: Settings) -> faust.App:
    extra: dict[str, Any] = {}
    if settings.producer_max_batch is not None:
        extra["producer_max_batch_size"] = settings.producer_max_batch
    return faust.App(
        settings.app_id,
        broker=settings.broker or "kafka://127.0.0.1:9092",
        broker_credentials=broker_credentials(settings),
        store="memory://",  # tables are rebuilt from their changelog topics on start
        datadir=settings.state_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        table_standby_replicas=0,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_transport=f"tcp://{settings.web_host}:{settings.web_port}",
        canonical_url=_canonical_url(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        producer_linger_ms=settings.producer_linger_ms,  # batching cuts broker and worker CPU
        consumer_auto_offset_reset="earliest",
        **extra,
    )
