"""Connection errors during an outage: the first is logged, the rest counted, the end reported once."""

from __future__ import annotations

import logging

from stream_app.transport.noise import OutageLogFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, level: int = logging.ERROR, args: tuple = ("127.0.0.1", 9092, "refused")) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.client", level, __file__, 1, msg, args, None)


def test_one_line_per_outage_then_a_summary(caplog) -> None:
    clock = Clock()
    noise = OutageLogFilter(quiet_s=5.0, clock=clock)
    passed = []
    for i in range(200):
        clock.now = i * 0.1
        passed.append(noise.filter(_record('Unable connect to "%s:%s": %s')))

    assert passed.count(True) == 1 and passed[0]
    assert noise.suppressed == 199
    clock.now = 30.0  # more than quiet_s after the last error
    with caplog.at_level(logging.WARNING, logger="stream_app.transport.noise"):
        noise.tick()
    assert "199 more were not logged" in caplog.text
    assert not noise.in_outage

    clock.now = 100.0
    assert noise.filter(_record("Unable to update metadata from %s")), "a new outage logs its first error again"
    assert noise.outages == 2


def test_other_records_pass_untouched() -> None:
    noise = OutageLogFilter(quiet_s=5.0, clock=Clock())
    assert noise.filter(_record("Topic %s not found in cluster metadata"))
    assert noise.filter(_record('Unable connect to "%s:%s": %s', level=logging.DEBUG))
    assert not noise.in_outage


def test_a_quiet_outage_with_nothing_suppressed_ends_silently(caplog) -> None:
    clock = Clock()
    noise = OutageLogFilter(quiet_s=1.0, clock=clock)
    noise.filter(_record("Failed fetch messages from %s: %s"))
    clock.now = 2.0
    with caplog.at_level(logging.WARNING, logger="stream_app.transport.noise"):
        noise.tick()
    assert caplog.text == ""
    assert not noise.in_outage


def test_request_errors_count_only_when_the_broker_cannot_be_reached() -> None:
    from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError

    noise = OutageLogFilter(quiet_s=5.0, clock=Clock())
    starting_group = _record("Group Coordinator Request failed: %s", args=(GroupCoordinatorNotAvailableError(),))
    assert noise.filter(starting_group) and not noise.in_outage, "a coordinator still loading is no outage"
    unreachable = _record("Group Coordinator Request failed: %s", args=(KafkaConnectionError("refused"),))
    assert noise.filter(unreachable) and noise.in_outage
    assert not noise.filter(_record("Failed fetch messages from %s: %s", args=(1, KafkaConnectionError("refused"))))
