"""Worker settings: built once, frozen, keyword-only; every environment variable named here."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream_app.exceptions import ConfigError

__all__ = ["Settings", "ProcessingGuarantee", "STAGES", "setting_docs"]

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
# The worker's stages, each on its own topics, consumer group and state (as Kafka Streams' sub-topologies):
# several workers of one app may each run some of them, in separate processes (several cores).
STAGES = ("behavior", "cells", "traffic")


def _setting(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a worker needs; ``Settings.from_env()`` reads ``STREAM_APP_*`` variables."""

    broker: str | None = _setting(None, "STREAM_APP_BROKER",
                                  "Kafka bootstrap URL (kafka://host:9092[;host2:9092]); empty = embedded broker")
    app_id: str = _setting("stream-app", "STREAM_APP_ID", "Faust app id: consumer group and topic prefix")
    topic_prefix: str = _setting("", "STREAM_APP_TOPIC_PREFIX",
                                 "Prefix of every topic name (several deployments on one cluster)")
    state_dir: str = _setting(".stream-app", "STREAM_APP_STATE_DIR", "Worker data directory (tables, offsets)")
    web_host: str = _setting("127.0.0.1", "STREAM_APP_WEB_HOST", "Address of /metrics and the query API")
    web_port: int = _setting(6066, "STREAM_APP_WEB_PORT", "Port of /metrics and the query API")
    partitions: int = _setting(4, "STREAM_APP_PARTITIONS", "Partitions of every topic the app creates")
    replication: int = _setting(1, "STREAM_APP_REPLICATION", "Replication factor of topics the app creates")
    checkpoint: str | None = _setting(None, "STREAM_APP_CHECKPOINT",
                                      "Next-action checkpoint (watched and hot-reloaded); empty = online Markov")
    traffic_checkpoint: str | None = _setting(None, "STREAM_APP_TRAFFIC_CHECKPOINT",
                                              "Traffic checkpoints: NETWORK=PATH,..., a folder of <network>.pt, or "
                                              "one file (for the network it records); watched and hot-reloaded, "
                                              "refused when trained on other sensors; none = persistence forecasts")
    networks: str | None = _setting(None, "STREAM_APP_NETWORKS",
                                    "Sensor-network files: NAME=ADJ.csv[:SENSORS.csv],... ; others are built "
                                    "from reading coordinates")
    behavior_mode: str = _setting("full", "STREAM_APP_BEHAVIOR_MODE",
                                  "full, unbatched (one model step per event) or passthrough (validate only); "
                                  "the last two exist for benchmarks")
    hot_path: str = _setting("transport", "STREAM_APP_HOT_PATH",
                             "What runs the behavior pipeline on user-events: transport (batch-native consume, "
                             "process, produce, checkpoint; per-partition stores) or faust (a Faust agent)")
    stages: tuple[str, ...] = _setting(STAGES, "STREAM_APP_STAGES",
                                       "Stages this worker runs, comma-separated: behavior (user-events -> "
                                       "predictions, cell-events), cells (cell-events -> cell-activity, crowd "
                                       "alerts), traffic (readings -> forecasts); workers of one app id may "
                                       "split them, a process each (more cores); transport hot path only")
    processing_guarantee: ProcessingGuarantee = _setting("at_least_once", "STREAM_APP_PROCESSING_GUARANTEE",
                                         "at_least_once (a re-delivered event gets the same prediction) or "
                                         "exactly_once (Kafka transactions: outputs for read_committed readers); "
                                         "transport hot path only")
    allow_fallback: bool = _setting(False, "STREAM_APP_ALLOW_FALLBACK",
                                    "Start on the fallback predictor when the configured checkpoint cannot be "
                                    "loaded (a WARNING at every reload attempt and stream_app_model_fallback=1) "
                                    "instead of stopping with an error")
    torch_threads: int = _setting(1, "STREAM_APP_TORCH_THREADS",
                                  "Threads torch may use per worker (scale out with partitions and workers)")
    batch_max: int = _setting(512, "STREAM_APP_BATCH_MAX", "Most events per micro-batch")
    batch_within_s: float = _setting(0.1, "STREAM_APP_BATCH_WITHIN_S",
                                     "Longest wait to fill a micro-batch (latency against per-batch work)")
    top_k: int = _setting(10, "STREAM_APP_TOP_K", "Actions per prediction")
    action_field: str = _setting("action", "STREAM_APP_ACTION_FIELD",
                                 "Event field the model predicts: action, item_id or category")
    grace_s: float = _setting(60.0, "STREAM_APP_GRACE_S", "Allowed event-time lateness before an event is late")
    watermark_idle_s: float = _setting(5.0, "STREAM_APP_WATERMARK_IDLE_S",
                                       "A partition silent this long stops holding the event-time watermark back; "
                                       "all of them silent this long: the input has ended, the last windows close")
    state_ttl_s: float = _setting(7 * 86400.0, "STREAM_APP_STATE_TTL_S", "Idle time after which a user's state expires")
    state_cache_users: int = _setting(20_000, "STREAM_APP_STATE_CACHE_USERS",
                                      "Decoded states of recently active users kept in memory (speed only)")
    expiry_interval_s: float = _setting(30.0, "STREAM_APP_EXPIRY_INTERVAL_S", "How often idle state is expired")
    window_events: int = _setting(50, "STREAM_APP_WINDOW_EVENTS", "Most events in a user's sliding window")
    window_span_s: float = _setting(7 * 86400.0, "STREAM_APP_WINDOW_SPAN_S", "Event-time span of a user's window")
    h3_resolution: int = _setting(8, "STREAM_APP_H3_RESOLUTION", "H3 resolution of cell-activity cells")
    cell_window_s: int = _setting(300, "STREAM_APP_CELL_WINDOW_S", "Cell-activity hopping window size")
    cell_batch_within_s: float = _setting(1.0, "STREAM_APP_CELL_BATCH_WITHIN_S",
                                          "Longest wait to fill a cell-activity batch (its state is written "
                                          "once per cell and batch; minute-long windows need no faster)")
    cell_step_s: int = _setting(60, "STREAM_APP_CELL_STEP_S", "Cell-activity hopping window step")
    behavior_alerts: bool = _setting(True, "STREAM_APP_BEHAVIOR_ALERTS",
                                     "Score each event's surprisal under the prediction before it and emit "
                                     "behavior anomaly alerts (costs one more model output per user and batch)")
    behavior_alert_threshold: float = _setting(7.0, "STREAM_APP_BEHAVIOR_ALERT_THRESHOLD",
                                               "Accumulated excess surprisal (standard deviations) of a run of "
                                               "improbable actions that raises a behavior alert")
    behavior_alert_reference: float = _setting(1.0, "STREAM_APP_BEHAVIOR_ALERT_REFERENCE",
                                               "Excess surprisal per event (standard deviations) that a run "
                                               "tolerates: below it the run drains")
    behavior_alert_min_gap_s: float = _setting(3_600.0, "STREAM_APP_BEHAVIOR_ALERT_MIN_GAP_S",
                                               "Event time after a user's behavior alert before the next one")
    crowd_alert_alpha: float = _setting(1e-6, "STREAM_APP_CROWD_ALERT_ALPHA",
                                        "Tail probability under a cell's time-of-week profile below which a "
                                        "closed window raises a crowd alert (spike or drop)")
    crowd_alert_min_users: int = _setting(8, "STREAM_APP_CROWD_ALERT_MIN_USERS",
                                          "Fewest distinct users in a window for a crowd spike")
    crowd_alert_utc_offset_h: float = _setting(0.0, "STREAM_APP_CROWD_ALERT_UTC_OFFSET_H",
                                               "Hours from UTC of the city's local time (time-of-week profiles)")
    sensor_window_s: int = _setting(300, "STREAM_APP_SENSOR_WINDOW_S", "Per-sensor tumbling window size")
    horizons_min: tuple[int, ...] = _setting((15, 30, 60), "STREAM_APP_HORIZONS", "Forecast horizons in minutes")
    producer_linger_ms: int = _setting(5, "STREAM_APP_PRODUCER_LINGER_MS",
                                       "How long the producer waits to fill a request: fewer, larger requests "
                                       "(less broker and worker CPU) against that much added latency")
    producer_max_batch: int | None = _setting(None, "STREAM_APP_PRODUCER_MAX_BATCH",
                                              "Producer max batch size in bytes (set for the Tansu fallback)")
    security_protocol: str = _setting("PLAINTEXT", "STREAM_APP_SECURITY_PROTOCOL",
                                      "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _setting("PLAIN", "STREAM_APP_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = _setting(None, "STREAM_APP_SASL_USERNAME", "SASL user name")
    sasl_password: str | None = _setting(None, "STREAM_APP_SASL_PASSWORD", "SASL password")
    ssl_cafile: str | None = _setting(None, "STREAM_APP_SSL_CAFILE", "CA bundle that signs the brokers' certificates")
    ssl_certfile: str | None = _setting(None, "STREAM_APP_SSL_CERTFILE", "Client certificate (mutual TLS)")
    ssl_keyfile: str | None = _setting(None, "STREAM_APP_SSL_KEYFILE", "Client private key (mutual TLS)")
    session_timeout_s: float = _setting(10.0, "STREAM_APP_SESSION_TIMEOUT_S",
                                        "Consumer-group session timeout (a dead worker is noticed after this)")
    heartbeat_s: float = _setting(1.0, "STREAM_APP_HEARTBEAT_S", "Consumer-group heartbeat interval")
    rebalance_timeout_s: float = _setting(10.0, "STREAM_APP_REBALANCE_TIMEOUT_S",
                                          "Time members get to rejoin during a rebalance")
    log_level: str = _setting("info", "STREAM_APP_LOG_LEVEL", "crit, error, warn, info or debug")
    cache_dir: str = _setting(str(Path.home() / ".cache" / "stream-app"), "STREAM_APP_CACHE",
                              "Cache of downloaded parts: Kafka jars, data sets, the demo's trained models")
    kafka_version: str = _setting("4.1.1", "STREAM_APP_KAFKA_VERSION", "Apache Kafka version of the embedded broker")
    data_dir: str | None = _setting(None, "STREAM_APP_DATA_DIR",
                                    "Folder of the named data sets, searched after the cache and before ../shared/data")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", _stages(self.stages))  # frozen: normalized once, here
        if self.hot_path == "faust" and self.stages != STAGES:
            raise ConfigError(f"STREAM_APP_STAGES={','.join(self.stages)} needs STREAM_APP_HOT_PATH=transport: the "
                              "faust hot path runs all three stages in one worker; unset STREAM_APP_STAGES (or "
                              "--stages), or run the transport hot path")
        choices = {"hot_path": ("transport", "faust"), "processing_guarantee": ("at_least_once", "exactly_once")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                env = next(f.metadata["env"] for f in dataclasses.fields(self) if f.name == name)
                raise ConfigError(f"{env}={getattr(self, name)!r} is not one of {', '.join(allowed)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``STREAM_APP_*`` variables; keyword overrides win (the CLI passes its flags here)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def topic(self, name: str) -> str:
        """The full name of one of the app's topics, e.g. ``topic("user-events")``."""
        return f"{self.topic_prefix}{name}"

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[f.metadata["env"]] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return env


def _stages(value: str | Sequence[str]) -> tuple[str, ...]:
    """``value`` ("cells,traffic" or a sequence of names) as a tuple of known stages in ``STAGES`` order."""
    names = [part.strip() for part in (value.split(",") if isinstance(value, str) else value)]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        problem = f"names unknown stages {', '.join(map(repr, unknown))}" if unknown else "names no stage"
        raise ConfigError(f"STREAM_APP_STAGES={','.join(names)!r} {problem}: give a comma-separated subset of "
                          f"{','.join(STAGES)}, e.g. STREAM_APP_STAGES=behavior or --stages cells,traffic "
                          "(unset: all three)")
    return tuple(stage for stage in STAGES if stage in names)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    if kind.startswith("tuple[str"):
        return tuple(raw.split(","))
    try:
        if kind.startswith("bool"):
            return _parse_bool(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind}: {f.metadata['doc']}") from exc
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def setting_docs() -> list[tuple[str, str, str]]:
    """(env var, default, doc) for every setting: the README table and --help come from here."""
    return [(f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)]
