"""Workers SIGKILLed mid-stream on the real broker: nothing lost, duplicates identical (or none in
``exactly_once`` for a ``read_committed`` reader), state equal to an uninterrupted run's, and the
committed offsets at the end within seconds after the input stops."""

from __future__ import annotations

import random
import time

import pytest

from stream_app.transport.testing import check_outputs, expected_state, keyed, make_events

pytestmark = pytest.mark.integration

EVENTS, USERS, RATE = 3000, 150, 1000.0  # three seconds of input
# After the input stops: a killed member's session expiry (6 s) and the rebalance (3 s) may still be ahead.
DRAIN_S = 30.0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_b_sigkill_mid_stream_then_restart_loses_nothing(kafka_topics, workers, tmp_path, seed: int):
    events = make_events(EVENTS, USERS, seed=seed)
    first = workers.start("w")
    first.wait_for_log("restored partitions")
    producer = kafka_topics.produce_in_background(keyed(events), rate=RATE)
    time.sleep(random.Random(seed).uniform(0.5, 2.5))  # a seeded moment mid-stream
    first.kill()
    restarted = workers.start("w")  # same state folder: a restart in place
    producer.join()

    drained_s = kafka_topics.wait_committed_to_end(kafka_topics.config(tmp_path).group, DRAIN_S)
    assert restarted.stop() == 0

    check = check_outputs(kafka_topics.outputs(), events)
    assert check.missing == [] and check.wrong == [], f"missing {check.missing[:10]}, differing {check.wrong[:3]}"
    assert kafka_topics.changelog_state() == expected_state(events)
    print(f"seed {seed}: {check.duplicates} duplicates (all identical), offsets at the end {drained_s:.1f} s "
          "after the input stopped")


def test_c_scale_one_two_one_with_a_sigkill_loses_nothing(kafka_topics, workers, tmp_path):
    events = make_events(EVENTS * 2, USERS, seed=21)
    first = workers.start("w1")
    first.wait_for_log("restored partitions")
    producer = kafka_topics.produce_in_background(keyed(events), rate=RATE)
    time.sleep(1.0)
    second = workers.start("w2")
    second.wait_for_log("restored partitions")  # it took partitions over (first checkpointed on revoke)
    time.sleep(1.0)
    second.kill()  # its partitions go back to the first after its session expires
    producer.join()

    drained_s = kafka_topics.wait_committed_to_end(kafka_topics.config(tmp_path).group, DRAIN_S)
    assert first.stop() == 0

    check = check_outputs(kafka_topics.outputs(), events)
    assert check.missing == [] and check.wrong == [], f"missing {check.missing[:10]}, differing {check.wrong[:3]}"
    assert kafka_topics.changelog_state() == expected_state(events)
    print(f"scale 1-2-1: {check.duplicates} duplicates (all identical), offsets at the end {drained_s:.1f} s "
          "after the input stopped")


@pytest.mark.parametrize("seed", [31, 32])
def test_d_exactly_once_sigkill_shows_a_read_committed_reader_no_duplicate(kafka_topics, workers, tmp_path,
                                                                            seed: int):
    events = make_events(EVENTS, USERS, seed=seed)
    first = workers.start("w", guarantee="exactly_once")
    first.wait_for_log("restored partitions")
    producer = kafka_topics.produce_in_background(keyed(events), rate=RATE)
    time.sleep(random.Random(seed).uniform(0.5, 2.5))
    first.kill()
    restarted = workers.start("w", guarantee="exactly_once")
    producer.join()

    kafka_topics.wait_committed_to_end(kafka_topics.config(tmp_path).group, DRAIN_S)
    assert restarted.stop() == 0

    check = check_outputs(kafka_topics.outputs(isolation_level="read_committed"), events)
    assert (check.missing, check.wrong, check.duplicates) == ([], [], 0)
    uncommitted = check_outputs(kafka_topics.outputs(), events)
    print(f"seed {seed}: a read_uncommitted reader saw {uncommitted.duplicates} aborted duplicates")
    assert kafka_topics.changelog_state(isolation_level="read_committed") == expected_state(events)
