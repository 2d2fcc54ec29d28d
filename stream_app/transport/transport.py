"""The batch-native hot path: fetch many records, decode once, call the pipeline once, write one record
batch per output partition, checkpoint on an interval.

Shaped after Kafka Streams' StreamThread (poll -> process -> commit on ``commit.interval.ms``, a
task and its state stores per input partition, restore before processing, commit before revoke)
and Quix Streams' checkpoint order. A checkpoint:

1. flushes each store's changed keys to its changelog partition (one record per key, tombstones
   for deletions);
2. waits until every queued record batch (outputs, dead letters, changelog) is acknowledged;
3. commits the input offsets (the consumer's position: after the last processed record), with the
   changelog end each store reached as commit metadata (see ``changelog.py``).

``exactly_once`` runs the same steps inside Kafka transactions, one transactional producer per
input partition (``transactional.id`` = group-topic-partition, so a new owner fences the old one,
as Kafka Streams' ``exactly_once`` did before KIP-447; aiokafka's TxnOffsetCommit has no group
generation to fence with otherwise). A checkpoint interval is one transaction per partition:
outputs, dead letters, changelog records and, by ``send_offsets_to_transaction``, the offsets.
On any failure the transaction is aborted, the partition rewound to its committed offset and its
stores reloaded; a fenced partition is dropped until the next rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, NodeNotReadyError, ProducerFenced
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from stream_app.transport.assignor import OwnerAssignor
from stream_app.transport.batch import Batch, BatchDecoder, Outputs, PartitionListener, Processor, Punctuator, State
from stream_app.transport.changelog import (
    RestorePlan,
    RestoreResult,
    decode_mark,
    encode_mark,
    ensure_changelog_topics,
    restore,
    topic_partitions,
)
from stream_app.transport.config import TransportConfig
from stream_app.transport.dead_letters import (
    REJECTION_TYPES,
    LetterRecord,
    Rejected,
    dead_letter_record,
    key_mismatch,
)
from stream_app.transport.exceptions import NotLocalError, SnapshotError, TransportError
from stream_app.transport.metrics import TransportMetrics
from stream_app.transport.noise import install_outage_filter
from stream_app.transport.outputs import Delivery, OutputWriter
from stream_app.transport.partitioning import partition_of
from stream_app.transport.producers import PartitionProducers, close_quietly, new_producer
from stream_app.transport.snapshot import (
    Snapshot,
    read_snapshot,
    remove_stale_temporaries,
    snapshot_path,
    write_snapshot,
)
from stream_app.transport.store import PartitionStore, RoutedStore

__all__ = ["Transport"]

log = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C")
_NO_OFFSET = -1


class Transport(Generic[T]):
    """Runs one pipeline over one input topic: ``await start()``, ``await run()`` until ``stop()``.

    ``decode`` turns one partition's fetched records into valid records and rejections (aligned,
    see ``BatchDecoder``); ``process`` is called once per batch (once per partition and batch in
    ``exactly_once``) and returns the outputs per topic; ``id_of`` gives the id a valid record's
    Kafka key must equal (``id_name`` names it in dead letters), so one key's state never splits.
    ``before_checkpoint`` lets a pipeline that writes its state behind put it into the stores at
    the start of every checkpoint; ``listener`` tells it when partitions' stores are (re)loaded or
    dropped, so it forgets what it cached from them. ``punctuate`` is a wall-clock timer (see
    ``Punctuator``): the loop calls it every ``punctuate_interval_s`` even when no record comes, its
    outputs go into the same producer (transaction) as a batch's and its state changes into the next
    checkpoint, so what a timer emits is committed with the state that says it was emitted.
    """

    def __init__(self, config: TransportConfig, *, decode: BatchDecoder, process: Processor[T],
                 id_of: Callable[[T], str] | None = None, id_name: str = "id",
                 metrics: TransportMetrics | None = None, listener: PartitionListener | None = None,
                 before_checkpoint: Callable[[], object] | None = None, punctuate: Punctuator | None = None) -> None:
        self.config = config
        self._decode = decode
        self._process = process
        self._punctuate = punctuate
        self._before_checkpoint = before_checkpoint
        self._id_of = id_of
        self._id_name = id_name
        self._listener = listener
        self.metrics = metrics or TransportMetrics.create()
        self.assignor = OwnerAssignor(config.advertised_url)
        self._stores: dict[str, dict[int, PartitionStore]] = {name: {} for name in config.store_names}
        self._standby: dict[str, dict[int, PartitionStore]] = {name: {} for name in config.store_names}
        self._ready: set[int] = set()   # owned partitions whose stores are restored
        self._lost: set[int] = set()    # fenced partitions, paused until the next rebalance
        self._expected: dict[int, int] = {}  # next input offset each owned partition should deliver
        self._progressed: set[int] = set()   # partitions processed since their last commit
        self._committed_offsets: dict[int, int] = {}  # committed input offset of each owned partition (consumer lag)
        self._lock = asyncio.Lock()
        self._stop_requested = asyncio.Event()
        self._fatal: BaseException | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._writer = OutputWriter()                      # at_least_once
        self._producer: AIOKafkaProducer | None = None     # at_least_once
        self._txn = PartitionProducers(config)              # exactly_once
        self._consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._state: State | None = None
        self.n_partitions = 0
        self.last_restore = RestoreResult()
        self.checkpoints = 0
        self._next_checkpoint = 0.0
        self._next_snapshot = 0.0
        self._next_punctuate = 0.0
        self._children = self._metric_children()
        self._commit_failures = 0
        self._closed = False
        self._starting: asyncio.Event | None = None  # set once start() has returned

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check topics, create changelogs, join the group (partitions are restored as they come).

        A ``stop()`` or ``close()`` that comes while this runs (a SIGTERM during the worker's start)
        closes the clients once it returns, as does a start that fails or is cancelled: no client
        is left open either way.
        """
        if self._closed or self._stop_requested.is_set():
            return
        self._starting = asyncio.Event()
        try:
            await self._start_retrying()
        except BaseException:
            await self._close(clean=False)
            raise
        finally:
            self._starting.set()
        if self._stop_requested.is_set():  # run() will not follow: nothing was processed, nothing to commit
            await self._close(clean=False)

    async def _start_retrying(self) -> None:
        """Start the clients; a broker that drops or cannot be reached (a restart) is retried, from
        scratch and with backoff, for ``start_timeout_s`` (a Kafka Streams thread likewise waits for
        its brokers) before the error is raised."""
        deadline = time.monotonic() + self.config.start_timeout_s
        backoff_s = 0.5
        while True:
            try:
                return await self._start_clients()
            except KafkaError as exc:
                if not _retriable(exc) or time.monotonic() + backoff_s > deadline or self._stop_requested.is_set():
                    raise
                log.warning("transport %r: the broker failed while starting (%r); retrying in %.1f s",
                            self.config.name, exc, backoff_s)
                await self._close_clients()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _start_clients(self) -> None:
        config = self.config
        install_outage_filter()
        config.store_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(config.store_dir)
        self._admin = AIOKafkaAdminClient(**config.client_options)
        await self._admin.start()
        found = await topic_partitions(self._admin, [config.input_topic, config.dead_letter_topic])
        missing = [t for t in (config.input_topic, config.dead_letter_topic) if t not in found]
        if missing:
            raise TransportError(f"topics {missing} do not exist: create them before starting transport "
                                 f"{config.name!r} (stream-app creates its topics at worker start)")
        self.n_partitions = found[config.input_topic]
        self._state = State(self._stores, config.store_names[0], self.n_partitions)
        await ensure_changelog_topics(self._admin, [config.changelog_topic(s) for s in config.store_names],
                                      self.n_partitions, config.changelog_replication,
                                      config.changelog_min_compaction_lag_ms)
        self._restorer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                          isolation_level="read_committed", **config.client_options)
        await self._restorer.start()
        if not config.exactly_once:
            self._producer = new_producer(self.config)
            await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            group_id=config.group, enable_auto_commit=False, auto_offset_reset=config.auto_offset_reset,
            isolation_level="read_committed" if config.exactly_once else "read_uncommitted",
            partition_assignment_strategy=(self.assignor,), session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms, rebalance_timeout_ms=config.rebalance_timeout_ms,
            max_poll_interval_ms=config.max_poll_interval_ms, **config.client_options)
        self._consumer.subscribe([config.input_topic], listener=_Listener(self))
        await self._consumer.start()
        self._next_checkpoint = time.monotonic() + config.commit_interval_s
        self._next_snapshot = time.monotonic() + config.snapshot_interval_s
        self._next_punctuate = time.monotonic() + config.punctuate_interval_s

    async def run(self) -> None:
        """Process batches until ``stop()``; then checkpoint, snapshot and close everything.

        An unexpected error (a pipeline bug) closes without a checkpoint, so state never gets
        ahead of the committed offsets, and is raised.
        """
        if self._consumer is None:
            await self.start()
        if self._closed:  # stopped while starting
            return
        clean = False
        try:
            while not self._stop_requested.is_set():
                await self._step()
            clean = True
        finally:
            await self._close(clean)

    async def checkpoint(self) -> bool:
        """Checkpoint now (as the interval would): True when everything processed is committed."""
        async with self._lock:
            return await self._checkpoint("request")

    def stop(self) -> None:
        """Ask ``run()`` to finish after the current batch (with a last checkpoint)."""
        self._stop_requested.set()

    async def close(self) -> None:
        """Stop a transport whose ``run()`` never began (stopped before or while starting): close its
        clients without a checkpoint (nothing was processed). A start in progress closes them itself
        when it returns; this waits for that."""
        self.stop()
        if self._starting is not None and not self._starting.is_set():
            await self._starting.wait()
        await self._close(clean=False)

    async def _close(self, clean: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._background:  # earlier snapshots first, so the last one written is the newest
            await asyncio.gather(*self._background, return_exceptions=True)
        if clean:
            try:
                await asyncio.wait_for(self._final_checkpoint(), self.config.shutdown_timeout_s)
            except TimeoutError:
                log.warning("no checkpoint at shutdown within %.0f s (is the broker reachable?): the next owner "
                            "resumes from the last committed one", self.config.shutdown_timeout_s)
        await self._txn.close()
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self._consumer, self._restorer, self._producer):
            if client is not None:
                await close_quietly(client.stop())
        if self._admin is not None:
            await close_quietly(self._admin.close())
        self._consumer = self._restorer = self._producer = None
        self._admin = None

    async def _final_checkpoint(self) -> None:
        async with self._lock:
            if await self._checkpoint("shutdown"):
                await self._snapshot_stores(self._owned_stores(), wait=True)

    # ------------------------------------------------------------------ queries

    @property
    def closed(self) -> bool:
        """True once the clients are closed (after ``run()``, or a stop before or while starting)."""
        return self._closed

    def owner_of(self, partition: int) -> str | None:
        """URL of the worker that owns ``partition`` of the input (None until a rebalance names one)."""
        return self.assignor.owner_of(self.config.input_topic, partition)

    def is_local(self, partition: int) -> bool:
        return partition in self._ready

    def partition_for(self, key: bytes) -> int:
        return partition_of(key, self.n_partitions)

    def get(self, key: bytes, store: str | None = None) -> bytes | None:
        """``key``'s value in a local store; ``NotLocalError`` (with the owner's URL) if elsewhere."""
        partition = self.partition_for(key)
        if partition not in self._ready:
            raise NotLocalError(f"partition {partition} of {self.config.input_topic!r} is owned by "
                                f"{self.owner_of(partition) or 'no worker yet'}")
        return self._stores[store or self.config.store_names[0]][partition].get(key)

    def store_view(self, store: str | None = None) -> RoutedStore:
        """The owned partitions of a store as one ``StateStore`` routed by key (after ``start()``),
        for a pipeline built with a single store."""
        return self._started(self._state).routed(store)

    def lag(self) -> dict[int, int]:
        """Consumer lag of each owned partition: its end offset (as of the last fetch) minus the
        committed offset; partitions not fetched from yet are left out."""
        if self._consumer is None or self._closed:
            return {}
        lags = {}
        for partition, committed in list(self._committed_offsets.items()):
            try:
                end = self._consumer.highwater(TopicPartition(self.config.input_topic, partition))
            except Exception:  # no longer assigned
                continue
            if end is not None:
                lags[partition] = max(0, end - committed)
        return lags

    def items(self, store: str | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of a store on the partitions this worker owns."""
        for partition_store in list(self._stores[store or self.config.store_names[0]].values()):
            yield from partition_store.items()

    # ------------------------------------------------------------------ the loop

    async def _step(self) -> None:
        if self._fatal is not None:
            raise TransportError(f"transport {self.config.name!r} cannot continue") from self._fatal
        try:
            fetched = await self._started(self._consumer).getmany(timeout_ms=self.config.fetch_timeout_ms,
                                                                  max_records=self.config.max_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.warning("fetch failed, retrying: %r", exc)
            await asyncio.sleep(0.5)
            return
        if fetched:
            async with self._lock:
                await self._handle(fetched)
        if self._punctuate is not None and time.monotonic() >= self._next_punctuate:
            async with self._lock:
                await self._run_punctuator()
        if time.monotonic() >= self._next_checkpoint:
            async with self._lock:
                await self._checkpoint("interval")
        install_outage_filter().tick()

    async def _handle(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now_ms = int(time.time() * 1000)
        valid_by_partition: dict[int, list[T]] = {}
        letters_by_partition: dict[int, list[LetterRecord]] = {}
        reasons: Counter[str] = Counter()
        consumed = 0
        for tp, raw in fetched.items():
            raw = self._usable(tp, raw)
            if not raw:
                continue
            consumed += len(raw)
            valid, letters = self._screen(tp.partition, raw, now_ms, reasons)
            valid_by_partition[tp.partition] = valid
            if letters:
                letters_by_partition[tp.partition] = letters
        if not consumed:
            return
        # Marked before processing: a failed write reloads these partitions, which clears the mark.
        self._progressed.update(valid_by_partition)
        if self.config.exactly_once:
            for partition, valid in valid_by_partition.items():
                await self._process_exactly_once(partition, valid, letters_by_partition.get(partition, []))
        else:
            await self._process_at_least_once(valid_by_partition, letters_by_partition)
        self._count_batch(consumed, reasons)

    def _usable(self, tp: TopicPartition, raw: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records to process: none from a partition not (yet) restored, none fetched before a seek."""
        partition = tp.partition
        if partition not in self._ready or partition in self._lost:
            return []  # never delivered while unready: only a batch fetched just before the assignment
        expected = self._expected.get(partition) or 0
        if raw[0].offset < expected:  # fetched before the seek the assignment or a recovery made
            raw = [record for record in raw if record.offset >= expected]
        if raw:
            self._expected[partition] = raw[-1].offset + 1
        return raw

    def _screen(self, partition: int, raw: list[ConsumerRecord], now_ms: int, reasons: Counter[str]
                ) -> tuple[list[T], list[LetterRecord]]:
        """Decode; rejections and key mismatches become dead letters, the rest is returned."""
        results = self._decoded(raw)
        valid: list[T] = []
        letters: list[LetterRecord] = []
        id_of = self._id_of
        for record, result in zip(raw, results, strict=True):
            rejection = result if type(result) in REJECTION_TYPES else None
            if rejection is None and id_of is not None:
                expected = id_of(result)
                if record.key is None or record.key != expected.encode():
                    rejection = key_mismatch(record.key, self._id_name, expected)
            if rejection is None:
                valid.append(result)
                continue
            reasons[rejection.reason] += 1
            letters.append(dead_letter_record(
                topic=record.topic, partition=partition, offset=record.offset, key=record.key, value=record.value,
                headers=record.headers, reason=rejection.reason, detail=rejection.detail, received_at_ms=now_ms))
        return valid, letters

    def _decoded(self, raw: Sequence[ConsumerRecord]) -> Sequence[Any]:
        try:
            results = self._decode(raw)
        except Exception:  # a decoder bug: isolate the records it cannot take
            log.exception("batch decoder raised; decoding %d records one at a time", len(raw))
            return [self._decode_one(record) for record in raw]
        if len(results) != len(raw):
            raise TransportError(f"decoder returned {len(results)} results for {len(raw)} records: "
                                 "it must return one valid record or rejection per input record")
        return results

    def _decode_one(self, record: ConsumerRecord) -> Any:
        try:
            return self._decode([record])[0]
        except Exception as exc:
            return Rejected("undecodable", f"decoder raised {exc!r}"[:500])

    async def _process_at_least_once(self, valid: dict[int, list[T]], letters: dict[int, list[LetterRecord]]
                                     ) -> None:
        await self._write_at_least_once(self._call(valid), [x for group in letters.values() for x in group])

    async def _write_at_least_once(self, outputs: Outputs, letters: list[LetterRecord]) -> None:
        try:
            await self._write(self._started(self._producer), self._writer, outputs, letters)
        except KafkaError as exc:
            self._children["fail_deliver"].inc()
            log.error("could not queue outputs (%r): rewinding to the committed offsets and reloading state", exc)
            await self._recover(sorted(self._ready), replace_producer=True)

    async def _process_exactly_once(self, partition: int, valid: list[T], letters: list[LetterRecord]) -> None:
        try:
            producer = await self._txn.begin(partition)
        except Exception as exc:
            await self._transaction_failed(partition, exc)
            return
        outputs = self._call({partition: valid})
        try:
            await self._write(producer, self._txn.writers[partition], outputs, letters)
        except Exception as exc:
            await self._transaction_failed(partition, exc)

    async def _run_punctuator(self) -> None:
        """The timer over the ready partitions: all at once, or one per transaction in ``exactly_once``."""
        self._next_punctuate = time.monotonic() + self.config.punctuate_interval_s
        ready = sorted(self._ready - self._lost)
        if not ready or self._punctuate is None:
            return
        if not self.config.exactly_once:
            outputs = _materialized(self._punctuate(frozenset(ready), self._started(self._state)))
            if any(outputs.values()):
                self._progressed.update(ready)  # the next checkpoint awaits these outputs
                await self._write_at_least_once(outputs, [])
            return
        for partition in ready:
            if partition not in self._ready:  # a failed transaction earlier in this round dropped it
                continue
            outputs = _materialized(self._punctuate(frozenset([partition]), self._started(self._state)))
            if not any(outputs.values()):
                continue  # state changes alone go into the next checkpoint's transaction
            try:
                producer = await self._txn.begin(partition)
                await self._write(producer, self._txn.writers[partition], outputs, [])
            except Exception as exc:
                await self._transaction_failed(partition, exc)

    def _call(self, valid: dict[int, list[T]]) -> Outputs:
        if not any(valid.values()):
            return {}
        started = time.perf_counter()
        outputs = self._process(Batch(valid, self._started(self._state)))
        self._children["process_seconds"].observe(time.perf_counter() - started)
        return outputs

    async def _write(self, producer: AIOKafkaProducer, writer: OutputWriter, outputs: Outputs,
                     letters: list[LetterRecord]) -> None:
        for topic, records in outputs.items():
            deliveries = await writer.write(producer, topic, records)
            self._output_counter(topic).inc(sum(d.count for d in deliveries))
        if letters:
            await writer.write_with_headers(producer, self.config.dead_letter_topic, letters)

    # ------------------------------------------------------------------ checkpoint

    async def _checkpoint(self, reason: str) -> bool:
        """Flush state, wait for every send, commit offsets; True when everything committed."""
        self._next_checkpoint = time.monotonic() + self.config.commit_interval_s
        if self._before_checkpoint is not None:
            self._before_checkpoint()
        idle = not self._progressed and not self._txn.in_transaction and not self._dirty_partitions()
        if self._consumer is None or idle:
            return True
        started = time.perf_counter()
        if self.config.exactly_once:
            committed = await self._checkpoint_exactly_once()
        else:
            committed = await self._checkpoint_at_least_once()
        self._children["checkpoint_seconds"].observe(time.perf_counter() - started)
        if committed:
            self.checkpoints += 1
            if reason == "interval" and time.monotonic() >= self._next_snapshot:
                self._next_snapshot = time.monotonic() + self.config.snapshot_interval_s
                await self._snapshot_stores(self._owned_stores(), wait=False)
        log.debug("checkpoint (%s): %s", reason, "committed" if committed else "failed")
        return committed

    async def _checkpoint_at_least_once(self) -> bool:
        partitions = sorted(self._progressed | self._dirty_partitions())
        changelog = await self._flush_changelog(self._producer, self._writer, partitions)
        try:
            await self._writer.acknowledged()
        except Exception as exc:
            self._children["fail_deliver"].inc()
            log.error("checkpoint: a record batch was not delivered (%r); rewinding to the committed offsets "
                      "and reloading state", exc)
            await self._recover(sorted(self._ready), replace_producer=True)
            return False
        self._apply_changelog_ends(changelog)
        offsets = await self._offsets_to_commit(partitions)
        try:
            await self._started(self._consumer).commit(offsets)
        except KafkaError as exc:
            self._children["fail_commit"].inc()
            self._commit_failures += 1
            level = logging.WARNING if self._commit_failures == 1 else logging.DEBUG
            log.log(level, "checkpoint: offset commit failed (%r); outputs and state are flushed, the next "
                    "checkpoint commits again (further failures in a row are counted, not logged)", exc)
            return False
        if self._commit_failures:
            log.warning("offsets committed again after %d failed commits", self._commit_failures)
            self._commit_failures = 0
        self._progressed.difference_update(partitions)
        self._committed_offsets.update({tp.partition: meta.offset for tp, meta in offsets.items()})
        return True

    async def _checkpoint_exactly_once(self) -> bool:
        partitions = sorted((self._progressed | self._txn.in_transaction | self._dirty_partitions()) - self._lost)
        results = await asyncio.gather(*(self._commit_transaction(p) for p in partitions), return_exceptions=True)
        committed = True
        for partition, result in zip(partitions, results, strict=True):
            if isinstance(result, BaseException):
                committed = False
                await self._transaction_failed(partition, result)
            else:
                self._progressed.discard(partition)
        return committed

    async def _transaction_failed(self, partition: int, exc: BaseException) -> None:
        """Fenced: give the partition up. Otherwise: abort, rewind to committed, reload its stores."""
        if isinstance(exc, ProducerFenced) or self._txn.fenced(partition):
            self._children["fail_fenced"].inc()
            await self._fence(partition)
            return
        self._children["fail_deliver"].inc()
        log.error("transaction of partition %d failed (%r): aborting, rewinding, reloading its state", partition, exc)
        await self._recover([partition], abort=True)

    async def _recover(self, partitions: Sequence[int], *, replace_producer: bool = False, abort: bool = False
                       ) -> None:
        """Undo uncommitted work: new producer or aborted transaction, stores reloaded, input rewound.
        Every step needs the broker: while it is unreachable, retry (with backoff) until it answers."""
        delay = 0.5
        while True:
            try:
                if replace_producer:
                    await self._replace_producer()
                    replace_producer = False
                if abort:
                    for partition in partitions:
                        await self._txn.abort(partition)
                    abort = False
                await self._reload(partitions)
                return
            except KafkaError as exc:
                if self._stop_requested.is_set():
                    raise
                log.debug("recovery needs the broker (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _commit_transaction(self, partition: int) -> None:
        producer = await self._txn.begin(partition)
        writer = self._txn.writers[partition]
        changelog = await self._flush_changelog(producer, writer, [partition])
        await writer.acknowledged()
        self._apply_changelog_ends(changelog)
        offsets = await self._offsets_to_commit([partition])
        if offsets:
            await producer.send_offsets_to_transaction(offsets, self.config.group)
        await producer.commit_transaction()
        self._txn.committed(partition)
        self._committed_offsets.update({tp.partition: meta.offset for tp, meta in offsets.items()})

    async def _flush_changelog(self, producer: AIOKafkaProducer, writer: OutputWriter, partitions: Sequence[int]
                               ) -> dict[tuple[str, int], list[Delivery]]:
        queued = {}
        for name, stores in self._stores.items():
            topic = self.config.changelog_topic(name)
            for partition in partitions:
                store = stores.get(partition)
                if store is None or not store.dirty_count:
                    continue
                changes = store.take_changes()
                queued[(name, partition)] = await writer.write(producer, topic, changes, partition=partition)
                self._children["changelog"][name].inc(len(changes))
        return queued

    def _apply_changelog_ends(self, changelog: dict[tuple[str, int], list[Delivery]]) -> None:
        for (name, partition), deliveries in changelog.items():
            store = self._stores[name].get(partition)
            if store is not None:
                store.changelog_end = max(d.future.result().offset + d.count for d in deliveries)

    async def _offsets_to_commit(self, partitions: Sequence[int]) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offset after the last processed record of each partition, with the changelog marks."""
        offsets = {}
        for partition in partitions:
            processed = self._expected.get(partition)
            if partition not in self._ready or processed is None:
                continue
            tp = TopicPartition(self.config.input_topic, partition)
            mark = encode_mark({name: stores[partition].changelog_end for name, stores in self._stores.items()})
            offsets[tp] = OffsetAndMetadata(_past_markers(self._consumer, tp, processed), mark)
        return offsets

    def _dirty_partitions(self) -> set[int]:
        return {p for stores in self._stores.values() for p, store in stores.items() if store.dirty_count}

    # ------------------------------------------------------------------ exactly_once fencing

    async def _fence(self, partition: int) -> None:
        """Another worker took this partition: drop it (its state and producer) until the next rebalance."""
        log.warning("partition %d of %s: this worker was fenced by a newer owner; dropping it until the next "
                    "rebalance", partition, self.config.input_topic)
        self._lost.add(partition)
        self._progressed.discard(partition)
        await self._txn.drop(partition)
        self._drop_stores([partition], keep=False)
        if self._listener is not None:
            self._listener.on_revoked(frozenset([partition]))
        try:
            self._started(self._consumer).pause(TopicPartition(self.config.input_topic, partition))
        except Exception:  # already unassigned
            pass

    async def _replace_producer(self) -> None:
        """A failed delivery may leave an idempotent producer unusable (its sequence broken): start a new one."""
        self._writer.forget()
        fresh = new_producer(self.config)
        try:
            await fresh.start()
        except BaseException:
            await close_quietly(fresh.stop())
            raise
        old, self._producer = self._producer, fresh
        if old is not None:
            await close_quietly(old.stop())

    # ------------------------------------------------------------------ rebalance and restore

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in revoked if tp.topic == self.config.input_topic)
        async with self._lock:
            if self._closed or not partitions:
                return
            committed = await self._checkpoint("revoke")
            owned = [p for p in partitions if p in self._ready]
            self._drop_stores(owned, keep=committed)
            if self._listener is not None:
                self._listener.on_revoked(frozenset(owned))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.config.input_topic)
        async with self._lock:
            if self._closed:
                return
            delay = 0.5
            while True:
                try:
                    await self._assign(partitions)
                    return
                except KafkaError as exc:  # the broker went away mid-restore: try again when it answers
                    log.warning("restoring partitions %s failed (%r); retrying in %.1f s", partitions, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                except Exception as exc:  # aiokafka only logs listener errors: make the loop raise it
                    self._fatal = exc
                    raise

    async def _assign(self, partitions: list[int]) -> None:
        self._lost.clear()
        if self.config.exactly_once:  # fences earlier owners before their committed offsets are read
            await self._txn.keep_only(partitions)
        await self._load(partitions, reuse_standby=True)
        leaving = {name: {p: s for p, s in stores.items() if p not in partitions}
                   for name, stores in self._standby.items()}
        for stores in self._standby.values():
            stores.clear()
        await self._snapshot_stores([s for stores in leaving.values() for s in stores.values()], wait=False)

    async def _reload(self, partitions: Sequence[int]) -> None:
        """After a failed checkpoint: forget uncommitted work, reload stores, rewind to committed."""
        self._drop_stores(partitions, keep=False)
        await self._load(list(partitions), reuse_standby=False)

    async def _load(self, partitions: list[int], *, reuse_standby: bool) -> None:
        """Restore the stores of ``partitions`` to their committed state, then seek the input there."""
        if not partitions:
            return
        started = time.perf_counter()
        committed = await self._committed(partitions)
        plans = []
        for name in self.config.store_names:
            for partition in partitions:
                marks = committed[partition][1]
                mark = None if marks is None else marks.get(name, 0)
                if committed[partition][0] == _NO_OFFSET:
                    mark = 0  # nothing committed yet: everything in the changelog is orphaned
                plans.append(self._plan(name, partition, mark, reuse_standby))
        self.last_restore = await restore(self._started(self._restorer), plans)
        for plan in plans:
            self._stores[plan.store.name][plan.store.partition] = plan.store
            key = (plan.store.name, plan.store.partition)
            self._children["restored_snapshot"][plan.store.name].inc(plan.snapshot_entries)
            self._children["restored_changelog"][plan.store.name].inc(self.last_restore.records_read[key])
        for partition in partitions:
            await self._seek(partition, committed[partition][0])
            self._committed_offsets[partition] = max(0, committed[partition][0])
            self._ready.add(partition)
            self._progressed.discard(partition)
        self.last_restore.seconds = time.perf_counter() - started  # snapshot files and committed offsets too
        self._children["restore_seconds"].observe(self.last_restore.seconds)
        log.info("restored partitions %s of %s: %d snapshot entries, %d changelog records read in %.2f s", partitions,
                 self.config.input_topic, sum(self.last_restore.snapshot_entries.values()),
                 self.last_restore.total_read, self.last_restore.seconds)
        if self._listener is not None:
            self._listener.on_assigned(frozenset(partitions))

    def _plan(self, name: str, partition: int, mark: int | None, reuse_standby: bool) -> RestorePlan:
        """Start from the in-memory standby store or the snapshot file when they are not ahead of the
        committed mark; otherwise from an empty store and the changelog's beginning."""
        changelog = TopicPartition(self.config.changelog_topic(name), partition)
        standby = self._standby[name].pop(partition, None) if reuse_standby else None
        if standby is not None and (mark is None or standby.changelog_end <= mark):
            return RestorePlan(standby, changelog, standby.changelog_end, mark, snapshot_entries=0)
        path = snapshot_path(self.config.store_dir, name, partition)
        try:
            snapshot = read_snapshot(path, store=name, changelog_topic=changelog.topic, partition=partition)
        except SnapshotError as exc:
            log.warning("snapshot %s is unusable (%s): restoring %s[%d] from the whole changelog", path, exc,
                        name, partition)
            snapshot = None
        if snapshot is not None and (mark is None or snapshot.changelog_offset <= mark):
            store = PartitionStore(name, partition, snapshot.data, snapshot.changelog_offset)
            return RestorePlan(store, changelog, snapshot.changelog_offset, mark, snapshot_entries=len(snapshot.data))
        if snapshot is not None:
            log.warning("snapshot %s covers changelog offset %d, past the committed mark %s: ignoring it", path,
                        snapshot.changelog_offset, mark)
        return RestorePlan(PartitionStore(name, partition), changelog, 0, mark)

    async def _committed(self, partitions: Sequence[int]) -> dict[int, tuple[int, dict[str, int] | None]]:
        """Committed input offset (-1: none) and changelog marks of each partition."""
        tps = [TopicPartition(self.config.input_topic, p) for p in partitions]
        found = await self._started(self._admin).list_consumer_group_offsets(self.config.group, partitions=tps)
        result = {}
        for tp in tps:
            entry = found.get(tp)
            offset = entry.offset if entry is not None else _NO_OFFSET
            marks = decode_mark(entry.metadata) if entry is not None else None
            if offset != _NO_OFFSET and marks is None:
                log.warning("committed offset of %s carries no changelog mark: restoring the whole changelog", tp)
            result[tp.partition] = (offset, marks)
        return result

    async def _seek(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.config.input_topic, partition)
        if offset == _NO_OFFSET:
            if self.config.auto_offset_reset == "latest":
                await self._started(self._consumer).seek_to_end(tp)
                self._expected.pop(partition, None)  # unknown until the first record
            else:
                await self._started(self._consumer).seek_to_beginning(tp)
                self._expected[partition] = 0
        else:
            self._started(self._consumer).seek(tp, offset)
            self._expected[partition] = offset

    def _drop_stores(self, partitions: Sequence[int], *, keep: bool) -> None:
        """Give up partitions' stores; ``keep`` holds them (committed, clean) in memory in case they come back."""
        for name, stores in self._stores.items():
            for partition in partitions:
                store = stores.pop(partition, None)
                if keep and store is not None and not store.dirty_count:
                    self._standby[name][partition] = store
        for partition in partitions:
            self._ready.discard(partition)
            self._progressed.discard(partition)
            self._committed_offsets.pop(partition, None)

    def _owned_stores(self) -> list[PartitionStore]:
        return [store for stores in self._stores.values() for store in stores.values()]

    async def _snapshot_stores(self, stores: Sequence[PartitionStore], *, wait: bool) -> None:
        """Write snapshots (data copied now, files written on a thread)."""
        jobs = [(snapshot_path(self.config.store_dir, s.name, s.partition),
                 Snapshot(s.name, self.config.changelog_topic(s.name), s.partition, s.changelog_end, s.copy_data()))
                for s in stores if not s.dirty_count]
        if not jobs:
            return
        task = asyncio.ensure_future(asyncio.to_thread(_write_all, jobs))
        if wait:
            await task
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _started(client: C | None) -> C:
        if client is None:
            raise TransportError("the transport is not started: await start() first")
        return client

    # ------------------------------------------------------------------ metrics

    def _metric_children(self) -> dict[str, Any]:
        m, name = self.metrics, self.config.name
        return {
            "consumed": m.consumed.labels(topic=self.config.input_topic),
            "batch_records": m.batch_records.labels(pipeline=name),
            "process_seconds": m.process_seconds.labels(pipeline=name),
            "checkpoint_seconds": m.checkpoint_seconds.labels(pipeline=name),
            "restore_seconds": m.restore_seconds.labels(pipeline=name),
            "fail_deliver": m.checkpoint_failures.labels(pipeline=name, stage="deliver"),
            "fail_commit": m.checkpoint_failures.labels(pipeline=name, stage="commit"),
            "fail_fenced": m.checkpoint_failures.labels(pipeline=name, stage="fenced"),
            "changelog": {s: m.changelog_records.labels(store=s) for s in self.config.store_names},
            "restored_snapshot": {s: m.restored_records.labels(store=s, source="snapshot")
                                  for s in self.config.store_names},
            "restored_changelog": {s: m.restored_records.labels(store=s, source="changelog")
                                   for s in self.config.store_names},
        }

    def _output_counter(self, topic: str) -> Any:
        """The outputs counter of ``topic``, looked up once (a labels() call takes a lock and hashes)."""
        counters = self._children.setdefault("outputs", {})
        counter = counters.get(topic)
        if counter is None:
            counter = counters[topic] = self.metrics.outputs.labels(topic=topic)
        return counter

    def _count_batch(self, consumed: int, reasons: Counter[str]) -> None:
        self._children["consumed"].inc(consumed)
        self._children["batch_records"].observe(consumed)
        for reason, count in reasons.items():
            self.metrics.dead_letters.labels(topic=self.config.input_topic, reason=reason).inc(count)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, transport: Transport[Any]) -> None:
        self._transport = transport

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._transport._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._transport._on_assigned(assigned)


def _write_all(jobs: list[tuple[Path, Snapshot]]) -> None:
    for path, snapshot in jobs:
        try:
            write_snapshot(path, snapshot)
        except OSError as exc:
            log.warning("could not write snapshot %s (%s): the next restore reads more changelog", path, exc)


def _materialized(outputs: Outputs) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    """Outputs with their records in lists (a punctuator may return iterators), so emptiness is known."""
    return {topic: list(records) for topic, records in outputs.items()}


def _past_markers(consumer: AIOKafkaConsumer, tp: TopicPartition, processed: int) -> int:
    """``processed``, or the consumer's position when it is further: past transaction markers that
    follow the last record (inputs written by an ``exactly_once`` producer), which no record will
    move the commit over. The public ``position()`` waits on a pending reset, so aiokafka's
    partition state is read directly, and only trusted when it holds a valid position."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        position = state.position if state is not None and state.has_valid_position else processed
    except AttributeError:  # another aiokafka layout: the processed position is always right
        return processed
    return max(processed, position)


def _retriable(exc: KafkaError) -> bool:
    """A broker that is down, restarting or still electing (``KafkaConnectionError`` says retriable)."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, (KafkaConnectionError, NodeNotReadyError))
