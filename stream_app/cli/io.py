"""CLI commands that move records: generate, replay, tail."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.syntax import Syntax

from stream_app.cli.common import broker_option, broker_url, console
from stream_app.kafka_io import Record, consume, produce
from stream_app.settings import Settings

__all__ = ["generate", "replay", "tail", "to_records", "corrupt", "generated_events", "HISTORY_MS"]


def to_records(events: Iterable[dict], prefix: str = "") -> Iterator[Record]:
    """Event dicts -> (topic, key, value): user events keyed by user, readings by sensor."""
    for event in events:
        if "sensor_id" in event:
            yield f"{prefix}traffic-readings", event["sensor_id"].encode(), json.dumps(event).encode()
        else:
            yield f"{prefix}user-events", event["user_id"].encode(), json.dumps(event).encode()


def corrupt(records: Iterable[Record], fraction: float, seed: int) -> Iterator[Record]:
    """Replace a fraction of records with malformed ones, to exercise the dead-letter path."""
    rng = random.Random(seed)
    breakers = (lambda v: v[: len(v) // 2], lambda v: b"\xff\xfe" + v,
                lambda v: v.replace(b'"ts": ', b'"ts": -'), lambda v: b"[]")
    for topic, key, value in records:
        yield (topic, key, rng.choice(breakers)(value)) if rng.random() < fraction else (topic, key, value)


# Synthetic event time runs a few hundred times faster than the wall clock at demo rates; starting
# a month back keeps it in the past (inputs more than a day ahead are rejected) for hours.
HISTORY_MS = 30 * 86_400_000


def generated_events(users: int, sensors: int, seed: int, start_ms: int | None = None) -> Iterator[dict]:
    """Endless synthetic user events and road readings, merged in event-time order."""
    from simulation.city import TrafficConfig, iter_traffic_readings
    from simulation.users import BehaviorConfig, iter_user_events

    start_ms = int(time.time() * 1000) - HISTORY_MS if start_ms is None else start_ms
    streams = []
    if users:
        streams.append(iter_user_events(BehaviorConfig(n_users=users, n_events=None, seed=seed, start_ms=start_ms)))
    if sensors:
        streams.append(iter_traffic_readings(TrafficConfig(n_sensors=sensors, seed=seed, start_ms=start_ms,
                                                         duration_hours=None)))
    return heapq.merge(*streams, key=lambda e: e["ts"])


@click.command()
@broker_option
@click.option("--users", default=200, show_default=True, help="Simulated users (0 = no user events).")
@click.option("--sensors", default=50, show_default=True, help="Simulated road sensors (0 = no readings).")
@click.option("--rate", default=200.0, show_default=True, help="Records per second (0 = as fast as possible).")
@click.option("--count", type=int, default=None, help="Stop after this many records (default: endless).")
@click.option("--bad-fraction", default=0.0, show_default=True,
              help="Fraction of records sent malformed, to see the dead-letter path work.")
@click.option("--seed", default=0, show_default=True, help="Random seed: the same seed gives the same workload.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write JSON lines to this file instead of sending to Kafka (needs --count).")
def generate(broker: str | None, users: int, sensors: int, rate: float, count: int | None,
             bad_fraction: float, seed: int, out: Path | None) -> None:
    """Produce a realistic synthetic workload: users with sessions and intents, a road network."""
    events = generated_events(users, sensors, seed)
    if count is not None:
        events = itertools.islice(events, count)
    if out is not None:
        if count is None:
            raise click.UsageError("--out needs --count (an endless file is not useful)")
        with out.open("w") as handle:
            for event in events:
                handle.write(json.dumps(event) + "\n")
        console.print(f"wrote {count} events to {out}")
        return
    records = corrupt(to_records(events, Settings.from_env().topic_prefix), bad_fraction, seed)
    _send(broker, records, rate, count)


@click.command()
@broker_option
@click.argument("source")
@click.option("--speedup", default=0.0, show_default=True,
              help="Event-time speed-up factor (3600 = one hour of data per second; 0 = as fast as possible).")
@click.option("--limit", type=int, default=None, help="Stop after this many records.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the named set (or the set's folder itself), searched first; then the cache, "
                   "$STREAM_APP_DATA_DIR and ../shared/data (see `stream-app datasets`).")
def replay(broker: str | None, source: str, speedup: float, limit: int | None, data_dir: Path | None) -> None:
    """Replay real data onto the input topics in event-time order.

    SOURCE is foursquare (NYC check-ins), diginetica (click sessions), los-loop (road speeds),
    or a JSON-lines file of events in the wire format. A named set that is not found locally can be
    fetched with `stream-app datasets fetch SOURCE`.
    """
    from stream_app import replay as readers
    from stream_app.datasets import DatasetError

    named = {"foursquare": readers.read_foursquare, "diginetica": readers.read_diginetica,
             "los-loop": readers.read_los_loop}
    if source in named:
        try:
            events = named[source](data_dir)  # looks the set up now, before any broker is started
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from exc
    elif Path(source).is_file():
        events = (json.loads(line) for line in Path(source).open() if line.strip())
    else:
        raise click.BadParameter(f"{source!r} is neither {', '.join(named)} nor an existing file", param_hint="SOURCE")
    events = readers.replay_schedule(events, speedup)
    if limit is not None:
        events = itertools.islice(events, limit)
    _send(broker, to_records(events, Settings.from_env().topic_prefix), 0.0, limit)


def _send(broker: str | None, records: Iterable[Record], rate: float, total: int | None) -> None:
    from rich.progress import Progress

    with broker_url(broker) as endpoint, Progress(console=console, transient=False) as progress:
        task = progress.add_task("sending", total=total)
        sent = asyncio.run(produce(Settings.from_env(broker=endpoint.url), records, rate=rate,
                                   on_sent=lambda n: progress.update(task, completed=n)))
    console.print(f"sent {sent} records")


@click.command()
@broker_option
@click.argument("topic")
@click.option("--key", default=None, help="Show only records with this key (a user or sensor id).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record instead of new ones.")
@click.option("--max", "max_records", type=int, default=None, help="Exit after this many records.")
@click.option("--raw", is_flag=True, help="One JSON document per line, no colour (for pipes).")
def tail(broker: str | None, topic: str, key: str | None, from_beginning: bool, max_records: int | None,
         raw: bool) -> None:
    """Live pretty-print of a topic, e.g. `stream-app tail next-action-predictions --key u42`."""
    if not broker:
        raise click.UsageError("tail needs --broker (or STREAM_APP_BROKER): the broker that the worker uses")
    out = Console()
    asyncio.run(_tail(Settings.from_env(broker=broker), topic, key, from_beginning, max_records, raw, out))


async def _tail(settings: Settings, topic: str, key: str | None, from_beginning: bool, max_records: int | None,
                raw: bool, out: Console) -> None:
    shown = 0
    async for record in consume(settings, [settings.topic(topic)], from_beginning=from_beginning):
        record_key = record.key.decode("utf-8", "replace") if record.key is not None else None
        if key is not None and record_key != key:
            continue
        text = record.value.decode("utf-8", "replace")
        if raw:
            print(text, flush=True)
        else:
            out.rule(f"{topic}[{record.partition}]@{record.offset} key={record_key}")
            out.print(Syntax(_pretty(text), "json", theme="ansi_dark", word_wrap=True))
        shown += 1
        if max_records is not None and shown >= max_records:
            return


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text
