"""``stream-app dead-letters``: summarize the dead-letter topic, and replay selected dead letters.

A dead letter written by the transport holds the original key, the original headers and, in its
``dlq.payload`` header, the original value byte for byte (``stream_app/transport/dead_letters.py``);
its value is the ``schemas.DeadLetter`` JSON (source topic, partition, offset, reason, detail).
Replay sends key, ``dlq.payload`` and the non-``dlq.`` headers back onto ``source_topic``.
Dead letters without that header (written by the Faust hot path, or whose payload was too large to
copy) cannot be replayed byte-exact and are listed as skipped, never sent altered.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import msgspec

from schemas import DeadLetter
from stream_app.cli.common import broker_option
from stream_app.settings import Settings
from stream_app.transport.dead_letters import OMITTED_HEADER, PAYLOAD_HEADER

__all__ = ["dead_letters", "Letter", "OffsetRange", "parse_offsets", "read_letters", "summarize", "replay_letters"]

TOPIC = "dead-letters"
SAMPLE_CHARS = 120


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic, decoded: where it sits, why it is there, what to replay."""

    partition: int  # of the dead-letter topic
    offset: int  # of the dead-letter topic
    reason: str
    source_topic: str
    detail: str
    key: bytes | None
    payload: bytes | None  # the exact original value (from ``dlq.payload``); None when not kept
    headers: list[tuple[str, bytes]]  # the original headers (``dlq.*`` removed)
    unreplayable: str | None  # why it cannot be replayed byte-exact, or None

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``first``..``last`` (inclusive) of the dead-letter topic, in one partition or in all."""

    first: int
    last: int
    partition: int | None = None

    def __contains__(self, letter: object) -> bool:
        return (isinstance(letter, Letter) and (self.partition is None or self.partition == letter.partition)
                and self.first <= letter.offset <= self.last)


_RANGE = re.compile(r"^(?:(\d+):)?(\d+)(?:-(\d+))?$")


def parse_offsets(spec: str) -> OffsetRange:
    """``A-B``, ``A``, ``P:A-B`` or ``P:A`` (P a partition of the dead-letter topic) -> OffsetRange."""
    match = _RANGE.match(spec.strip())
    if not match:
        raise click.BadParameter(f"{spec!r} is not an offset range: write A-B, A, P:A-B or P:A "
                                 "(offsets of the dead-letters topic, P its partition)")
    partition, first, last = match.groups()
    first_offset, last_offset = int(first), int(last if last is not None else first)
    if last_offset < first_offset:
        raise click.BadParameter(f"{spec!r}: the range ends before it starts")
    return OffsetRange(first_offset, last_offset, None if partition is None else int(partition))


def _ranges_from_file(path: Path) -> list[OffsetRange]:
    """One range per line (as --offsets), blank lines and ``#`` comments ignored."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [parse_offsets(line) for line in lines if line]


def decode_letter(partition: int, offset: int, key: bytes | None, value: bytes | None,
                  headers: Iterable[tuple[str, bytes]]) -> Letter:
    """A dead-letter record -> Letter (a value that is not DeadLetter JSON gives reason ``unreadable``)."""
    headers = [(name, bytes(data)) for name, data in headers or ()]
    named = dict(headers)
    try:
        letter = msgspec.json.decode(value or b"", type=DeadLetter)
        reason, source, detail = letter.reason, letter.source_topic, letter.detail
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        reason, source, detail = "unreadable", "?", f"not a DeadLetter record: {exc}"
    payload = named.get(PAYLOAD_HEADER)
    unreplayable = None
    if source == "?":
        unreplayable = "the dead letter is not DeadLetter JSON"
    elif OMITTED_HEADER in named:
        unreplayable = f"payload not kept ({named[OMITTED_HEADER].decode(errors='replace')})"
    elif payload is None and letter.payload_size > 0:
        unreplayable = f"no {PAYLOAD_HEADER} header (written by a worker that did not keep payloads byte-exact)"
    return Letter(partition=partition, offset=offset, reason=reason, source_topic=source, detail=detail, key=key,
                  payload=payload, headers=[(n, d) for n, d in headers if not n.startswith("dlq.")],
                  unreplayable=unreplayable)


async def read_letters(settings: Settings, topic: str) -> list[Letter]:
    """Every record of ``topic`` up to its end offsets at the time of the call (no consumer group)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_app.kafka_io import client_options, partition_counts

    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_options(settings))
    await consumer.start()
    try:
        partitions = range((await partition_counts(settings, [topic])).get(topic, 0))
        if not partitions:
            raise click.ClickException(f"topic {topic!r} does not exist on {settings.broker} (no dead letters yet, "
                                       "or another STREAM_APP_TOPIC_PREFIX)")
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        letters: list[Letter] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                letters.extend(decode_letter(tp.partition, r.offset, r.key, r.value, r.headers)
                               for r in records if r.offset < ends[tp])
        return sorted(letters, key=lambda letter: (letter.partition, letter.offset))
    finally:
        await consumer.stop()


@dataclass
class Group:
    """The dead letters of one (reason, source topic)."""

    reason: str
    source_topic: str
    count: int = 0
    replayable: int = 0
    first: str = ""
    last: str = ""
    sample: dict[str, Any] = field(default_factory=dict)


def summarize(letters: Iterable[Letter]) -> list[Group]:
    """Counts, first/last ``partition:offset`` and the first letter as a sample, per (reason, source topic)."""
    groups: dict[tuple[str, str], Group] = {}
    for letter in letters:
        group = groups.get((letter.reason, letter.source_topic))
        if group is None:
            group = groups[(letter.reason, letter.source_topic)] = Group(
                letter.reason, letter.source_topic, first=letter.where, sample=_describe(letter))
        group.count += 1
        group.replayable += letter.unreplayable is None
        group.last = letter.where
    return sorted(groups.values(), key=lambda g: (-g.count, g.reason, g.source_topic))


def _describe(letter: Letter) -> dict[str, Any]:
    payload = letter.payload
    return {"at": letter.where, "key": None if letter.key is None else letter.key.decode("utf-8", "replace"),
            "detail": letter.detail[:SAMPLE_CHARS],
            "payload": None if payload is None else payload[:SAMPLE_CHARS].decode("utf-8", "backslashreplace"),
            "payload_bytes": None if payload is None else len(payload)}


async def replay_letters(settings: Settings, letters: list[Letter]) -> None:
    """Send each letter's key, exact payload and original headers onto its source topic; flush."""
    from aiokafka import AIOKafkaProducer

    from stream_app.kafka_io import client_options

    producer = AIOKafkaProducer(linger_ms=5, **client_options(settings))
    await producer.start()
    try:
        for letter in letters:
            await producer.send(letter.source_topic, value=letter.payload, key=letter.key,
                                headers=letter.headers or None)
        await producer.flush()
    finally:
        await producer.stop()


def _settings(broker: str | None) -> Settings:
    if not broker:
        raise click.UsageError("dead-letters needs --broker (or STREAM_APP_BROKER): the broker the workers use")
    return Settings.from_env(broker=broker)


@click.group(invoke_without_command=True)
@broker_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document (for scripts).")
@click.pass_context
def dead_letters(ctx: click.Context, broker: str | None, as_json: bool) -> None:
    """Summarize the dead-letters topic: per reason and source topic, the count, how many can be
    replayed byte-exact, the first and last position (partition:offset of the dead-letters topic)
    and a sample. `stream-app dead-letters replay --help` re-sends selected ones.

    The topic is read from its start to its current end; STREAM_APP_TOPIC_PREFIX applies.
    """
    ctx.ensure_object(dict)
    ctx.obj["broker"] = broker
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(broker)
    letters = asyncio.run(read_letters(settings, settings.topic(TOPIC)))
    groups = summarize(letters)
    if as_json:
        click.echo(json.dumps({"topic": settings.topic(TOPIC), "total": len(letters),
                               "groups": [vars(g) for g in groups]}, indent=2))
        return
    click.echo(f"{len(letters)} dead letters in {settings.topic(TOPIC)}")
    for group in groups:
        click.echo(f"\n{group.reason}  from {group.source_topic}: {group.count} "
                   f"({group.replayable} replayable), first {group.first}, last {group.last}")
        sample = group.sample
        click.echo(f"  sample {sample['at']} key={sample['key']!r}: {sample['detail']}")
        if sample["payload"] is not None:
            click.echo(f"  payload ({sample['payload_bytes']} bytes): {sample['payload']}")


@dead_letters.command()
@broker_option
@click.option("--reason", default=None, help="Replay the dead letters with this reason (see the summary).")
@click.option("--offsets", "offset_specs", multiple=True, metavar="[P:]A[-B]",
              help="Replay these offsets of the dead-letters topic (inclusive; P a partition, else every "
                   "partition). Repeatable.")
@click.option("--offsets-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File of offset ranges, one per line as --offsets ('#' starts a comment).")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.pass_context
def replay(ctx: click.Context, broker: str | None, reason: str | None, offset_specs: tuple[str, ...],
           offsets_file: Path | None, dry_run: bool) -> None:
    """Re-send selected dead letters onto their original input topic, byte-exact: the original key,
    value (from the dlq.payload header) and headers. Selectors combine (a letter must match all
    given); at least one is needed. Prints one line per letter sent, and the ones skipped.

    Replayed records are new records: a worker processes them again, and one still invalid is
    dead-lettered again. Fix what rejected them first (a schema or a producer), then replay.
    """
    broker = broker or ctx.obj.get("broker")
    ranges = [parse_offsets(spec) for spec in offset_specs]
    if offsets_file is not None:
        ranges.extend(_ranges_from_file(offsets_file))
    if reason is None and not ranges:
        raise click.UsageError("choose what to replay: --reason R, --offsets A-B or --offsets-file FILE")
    settings = _settings(broker)
    letters = asyncio.run(read_letters(settings, settings.topic(TOPIC)))
    chosen = [letter for letter in letters if (reason is None or letter.reason == reason)
              and (not ranges or any(letter in r for r in ranges))]
    sendable = [letter for letter in chosen if letter.unreplayable is None]
    for letter in chosen:
        if letter.unreplayable is not None:
            click.echo(f"skipped {letter.where} ({letter.reason}): {letter.unreplayable}")
    verb = "would send" if dry_run else "sent"
    if sendable and not dry_run:
        asyncio.run(replay_letters(settings, sendable))
    for letter in sendable:
        size = "null" if letter.payload is None else f"{len(letter.payload)} bytes"
        key = None if letter.key is None else letter.key.decode("utf-8", "replace")
        click.echo(f"{verb} {letter.where} ({letter.reason}) -> {letter.source_topic} key={key!r} value={size} "
                   f"headers={len(letter.headers)}")
    click.echo(f"{verb} {len(sendable)} of {len(chosen)} selected dead letters"
               + (f" ({len(chosen) - len(sendable)} skipped)" if len(chosen) > len(sendable) else ""))
