"""What one transport reads, where it keeps state, and how it checkpoints: a frozen value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream_app.exceptions import ConfigError

__all__ = ["TransportConfig", "Guarantee", "GUARANTEES"]

Guarantee = Literal["at_least_once", "exactly_once"]
GUARANTEES: tuple[str, ...] = ("at_least_once", "exactly_once")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """One input topic, its consumer group, its state stores and its checkpoint policy.

    ``client_options`` are the aiokafka connection options every client gets (``bootstrap_servers``
    and any security settings: ``stream_app.kafka_io.client_options(settings)``).
    """

    name: str  # the pipeline: a metrics label and the default group suffix
    app_id: str
    input_topic: str
    dead_letter_topic: str
    state_dir: Path
    client_options: Mapping[str, Any] = field(default_factory=dict)
    group_id: str = ""  # default "<app_id>-<name>": its own group, apart from Faust's
    stores: tuple[str, ...] = ()  # store names; default (name,). Unique per app: they name changelogs
    guarantee: Guarantee = "at_least_once"
    commit_interval_s: float = 1.0
    punctuate_interval_s: float = 1.0  # the wall-clock punctuator's period (when one is given)
    snapshot_interval_s: float = 60.0
    max_records: int = 2048
    fetch_timeout_ms: int = 100
    advertised_url: str = ""  # this worker's query API, broadcast to the group for routing
    auto_offset_reset: str = "earliest"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    producer_linger_ms: int = 5
    producer_max_batch_bytes: int = 256 * 1024
    transaction_timeout_ms: int = 60_000
    shutdown_timeout_s: float = 30.0  # the last checkpoint at stop; after it the worker closes dirty
    # A broker that cannot be reached while the clients start (a restart) is retried this long.
    start_timeout_s: float = 120.0
    changelog_replication: int = 1
    # An orphaned changelog record (flushed, offsets not committed) must not be compacted over the
    # committed value it shadows before the next owner restores past it: see changelog.py.
    changelog_min_compaction_lag_ms: int = 3_600_000

    def __post_init__(self) -> None:
        problems = []
        if self.guarantee not in GUARANTEES:
            problems.append(f"guarantee {self.guarantee!r} is not one of {GUARANTEES}")
        if len(set(self.stores)) != len(self.stores):
            problems.append(f"stores {self.stores!r} must be distinct names")
        for name in (self.name, self.app_id, *self.stores):
            if not _NAME.match(name):
                problems.append(f"{name!r} may only hold letters, digits, '.', '_' and '-' (it names topics)")
        if self.commit_interval_s <= 0 or self.max_records < 1 or self.fetch_timeout_ms < 0:
            problems.append("commit_interval_s > 0, max_records >= 1 and fetch_timeout_ms >= 0 are required")
        if self.punctuate_interval_s <= 0:
            problems.append(f"punctuate_interval_s must be > 0 (got {self.punctuate_interval_s})")
        if problems:
            raise ConfigError(f"transport {self.name!r}: " + "; ".join(problems))

    @property
    def group(self) -> str:
        return self.group_id or f"{self.app_id}-{self.name}"

    @property
    def store_names(self) -> tuple[str, ...]:
        return self.stores or (self.name,)

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly_once"

    def changelog_topic(self, store: str) -> str:
        """``<app_id>-<store>-changelog`` (Kafka Streams' naming)."""
        return f"{self.app_id}-{store}-changelog"

    @property
    def store_dir(self) -> Path:
        """This transport's snapshots: one folder per consumer group inside the state folder."""
        return Path(self.state_dir) / self.group
