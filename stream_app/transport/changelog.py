"""Changelog topics: creating them, the commit mark that ties them to input offsets, restoring stores.

Every store partition has a compacted changelog partition (same number as the input partition).
A checkpoint flushes the dirty keys there, then commits the input offsets with metadata naming the
changelog end offset of each store (the *mark*): the store's committed state is exactly the
changelog replayed from 0 up to the mark. In ``at_least_once`` a crash between the changelog flush
and the offset commit leaves records past the mark whose inputs will be processed again (orphans);
restore applies only records before the mark, and writes the orphaned keys again with their
restored values at the next checkpoint, so a later replay up to a later mark is right too. Kafka's
log cleaner only builds its key map from segments older than ``min.compaction.lag.ms``, so an
orphan cannot compact away the committed value it shadows within that time: the next owner
restores long before. In ``exactly_once`` the changelog is read ``read_committed``: aborted records
are invisible and committed ones never lie past the mark, so the same code holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from stream_app.transport.exceptions import TransportError
from stream_app.transport.store import PartitionStore

__all__ = ["encode_mark", "decode_mark", "ensure_changelog_topics", "topic_partitions", "RestorePlan",
           "RestoreResult", "restore"]

log = logging.getLogger(__name__)

_MARK_VERSION = 1


def encode_mark(changelog_ends: Mapping[str, int]) -> str:
    """Offset-commit metadata: store name -> changelog end offset the committed state covers."""
    return json.dumps({"v": _MARK_VERSION, "changelog": dict(changelog_ends)}, separators=(",", ":"), sort_keys=True)


def decode_mark(metadata: str | None) -> dict[str, int] | None:
    """The mark in offset-commit metadata, or None when the commit carries none (or another format)."""
    if not metadata:
        return None
    try:
        payload = json.loads(metadata)
        if payload.get("v") != _MARK_VERSION:
            return None
        return {str(name): int(end) for name, end in payload["changelog"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def topic_partitions(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    """Partition counts of the topics that exist (absent ones are left out)."""
    found = {}
    for description in await admin.describe_topics(list(topics)):
        if description.get("error_code", 0) == 0 and description.get("partitions"):
            found[description["topic"]] = len(description["partitions"])
    return found


async def ensure_changelog_topics(admin: AIOKafkaAdminClient, topics: Sequence[str], partitions: int,
                                  replication: int, min_compaction_lag_ms: int) -> None:
    """Create the missing changelog topics (compacted, ``partitions`` like the input); refuse existing
    ones with another partition count, whose partitions would not match the input's."""
    existing = await topic_partitions(admin, topics)
    missing = [t for t in topics if t not in existing]
    if missing:
        configs = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(min_compaction_lag_ms)}
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication,
                                            topic_configs=configs) for t in missing])
        existing.update(await _wait_for_topics(admin, missing))
    wrong = {t: n for t, n in existing.items() if n != partitions}
    if wrong:
        raise TransportError(f"changelog topics {wrong} have another partition count than the input ({partitions}): "
                             "their state cannot follow the input partitions; delete them (the state is rebuilt "
                             "from the input) or restore the input's partition count")


async def _wait_for_topics(admin: AIOKafkaAdminClient, topics: Sequence[str], timeout_s: float = 30.0
                           ) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await topic_partitions(admin, topics)
        if len(found) == len(topics) or time.monotonic() > deadline:
            if len(found) != len(topics):
                raise TransportError(f"could not create changelog topics {sorted(set(topics) - set(found))}: "
                                     "check the broker's log and that this client may create topics")
            return found
        await asyncio.sleep(0.2)


@dataclass
class RestorePlan:
    """Restore one store partition: ``store`` already holds the snapshot (if any) as of ``start``;
    changelog records before ``mark`` are applied, later ones are orphans (None: apply all)."""

    store: PartitionStore
    changelog: TopicPartition
    start: int
    mark: int | None
    snapshot_entries: int = 0


@dataclass
class RestoreResult:
    """What one restore read: per store partition, changelog records applied and orphaned."""

    records_read: dict[tuple[str, int], int] = field(default_factory=dict)
    orphans: dict[tuple[str, int], int] = field(default_factory=dict)
    snapshot_entries: dict[tuple[str, int], int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_read(self) -> int:
        return sum(self.records_read.values())


async def restore(consumer: AIOKafkaConsumer, plans: Sequence[RestorePlan], timeout_s: float = 600.0
                  ) -> RestoreResult:
    """Read every plan's changelog partition from ``start`` to its current end, in parallel.

    ``consumer`` has no group; it is (re)assigned to exactly these partitions here.
    """
    started = time.monotonic()
    result = RestoreResult()
    by_tp = {plan.changelog: plan for plan in plans}
    for plan in plans:
        key = (plan.store.name, plan.store.partition)
        result.records_read[key] = result.orphans[key] = 0
        result.snapshot_entries[key] = plan.snapshot_entries
    if not by_tp:
        return result
    consumer.assign(list(by_tp))
    ends = await consumer.end_offsets(list(by_tp))
    orphans: dict[TopicPartition, set[bytes]] = {tp: set() for tp in by_tp}
    pending = set()
    for tp, plan in by_tp.items():
        if plan.start > ends[tp]:
            log.warning("%s starts at %d, past the changelog's end %d (was the topic recreated?): restoring "
                        "from its beginning", tp, plan.start, ends[tp])
            plan.store.clear()
            plan.start, plan.snapshot_entries = 0, 0
            result.snapshot_entries[(plan.store.name, plan.store.partition)] = 0
        if plan.start < ends[tp]:
            consumer.seek(tp, plan.start)
            pending.add(tp)
    deadline = started + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TransportError(f"restoring {sorted(map(str, pending))} took over {timeout_s:.0f} s: is the "
                                 "broker reachable? (raise restore_timeout_s for very large changelogs)")
        fetched = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in fetched.items():
            plan = by_tp[tp]
            _apply(plan, records, orphans[tp])
            result.records_read[(plan.store.name, plan.store.partition)] += len(records)
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
    for tp, plan in by_tp.items():
        _finish(plan, ends[tp], orphans[tp])
        result.orphans[(plan.store.name, plan.store.partition)] = len(orphans[tp])
    consumer.assign([])
    result.seconds = time.monotonic() - started
    return result


def _apply(plan: RestorePlan, records: Sequence[Any], orphans: set[bytes]) -> None:
    load, mark = plan.store.load, plan.mark
    for record in records:
        if record.key is None:
            continue  # never written by a transport
        if mark is None or record.offset < mark:
            load(record.key, record.value)
        else:
            orphans.add(record.key)


def _finish(plan: RestorePlan, end: int, orphans: set[bytes]) -> None:
    """The store now equals the changelog up to the mark; orphaned keys are rewritten at the next
    flush (their restored value, or a tombstone), so replaying past the orphans gives it too."""
    store = plan.store
    if orphans and plan.mark is not None:  # orphans exist only past a known mark
        store.mark_dirty(orphans)
        store.changelog_end = plan.mark
        log.info("store %s[%d]: %d changelog records past the committed mark %s were orphaned by an earlier "
                 "crash; rewriting those keys", store.name, store.partition, len(orphans), plan.mark)
    else:
        store.changelog_end = end
