"""The transport's wall-clock punctuator on the real broker: called on an interval with the ready
partitions also while no record comes, one partition per call in ``exactly_once``, its outputs
written and its state changes flushed with the checkpoints."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from stream_app.transport import State, Transport
from stream_app.transport.testing import count_processor, decode_events, keyed, make_events, wait_until

pytestmark = pytest.mark.integration

TICKS_STORE = "ticks"
INTERVAL_S = 0.3


class TickCounter:
    """A punctuator: per partition, a tick counter in the ``ticks`` store and one output per tick."""

    def __init__(self, output_topic: str) -> None:
        self.output_topic = output_topic
        self.calls: list[tuple[float, frozenset[int]]] = []

    def __call__(self, partitions: frozenset[int], state: State) -> dict[str, list[tuple[bytes, bytes]]]:
        self.calls.append((time.monotonic(), partitions))
        out = []
        for partition in sorted(partitions):
            store = state.store(partition, TICKS_STORE)
            tick = int(store.get(b"ticks", b"0")) + 1
            store[b"ticks"] = str(tick).encode()
            out.append((f"tick-{partition}".encode(), json.dumps({"partition": partition, "tick": tick}).encode()))
        return {self.output_topic: out}

    def ticks(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for _, partitions in self.calls:
            for partition in partitions:
                counts[partition] += 1
        return dict(counts)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_punctuator_runs_on_its_interval_without_input_and_its_outputs_and_state_are_committed(
        kafka_topics, tmp_path: Path, guarantee: str):
    kafka = kafka_topics
    kafka.produce(keyed(make_events(300, users=30, seed=11)))
    config = kafka.config(tmp_path / "state", stores=("count", TICKS_STORE), guarantee=guarantee,
                          punctuate_interval_s=INTERVAL_S)
    timer = TickCounter(kafka.topic("out"))
    after_input: dict[int, int] = {}

    async def main() -> None:
        transport: Transport = Transport(config, decode=decode_events, process=count_processor(kafka.topic("out")),
                                         punctuate=timer)
        await transport.start()
        task = asyncio.create_task(transport.run())
        ends = await asyncio.to_thread(kafka.end_offsets, kafka.topic("in"))

        async def at_end() -> bool:
            committed = await asyncio.to_thread(kafka.committed, config.group)
            return all(committed.get(p, -1) >= end for p, end in ends.items())

        async def ticked_without_input() -> bool:
            return all(timer.ticks().get(p, 0) >= after_input[p] + 3 for p in range(kafka.partitions))

        try:
            await wait_until(at_end, 40.0, "committed offsets at the end of the input")
            after_input.update({p: timer.ticks().get(p, 0) for p in range(kafka.partitions)})
            await wait_until(ticked_without_input, 20.0, "three more ticks per partition with no input")
        finally:
            transport.stop()
            await task

    asyncio.run(main())

    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    emitted: dict[int, list[int]] = defaultdict(list)
    for record in kafka.read("out", isolation_level=isolation):
        if record.key.startswith(b"tick-"):
            value = json.loads(record.value)
            emitted[value["partition"]].append(value["tick"])
    ticks = timer.ticks()
    assert sorted(ticks) == list(range(kafka.partitions)), "every ready partition is punctuated"
    for partition, seen in emitted.items():
        assert sorted(set(seen)) == list(range(1, ticks[partition] + 1)), f"partition {partition}: every tick written"
    stored = {}
    for record in kafka.read(f"app-{TICKS_STORE}-changelog", isolation_level=isolation):
        stored[record.partition] = int(record.value)
    assert stored == ticks, "the last tick of each partition is in its changelog: state flushed by the checkpoints"
    if guarantee == "exactly_once":
        assert all(len(partitions) == 1 for _, partitions in timer.calls), "one partition per transaction"
    first_of_rounds = [at for at, partitions in timer.calls if 0 in partitions]  # partition 0 comes first
    gaps = [b - a for a, b in zip(first_of_rounds, first_of_rounds[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S * 0.99, "at most one round per interval"
