"""Raw records in, valid events out: every rejection goes to the dead-letter topic with its reason."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from faust.types import EventT, TopicT

from schemas import DeadLetter, Rejection, encode
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received

__all__ = ["dead_letter_for", "decode_batch", "validate_batch"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A dead letter ready to send: (the rejected record's key, the encoded letter).
Letter = tuple[bytes | None, bytes]


def dead_letter_for(message: Any, rejection: Rejection) -> DeadLetter:
    """The dead letter of a rejected Kafka message (``message``: a faust Message)."""
    return DeadLetter.from_record(message.value, message.key, source_topic=message.topic,
                                  partition=message.partition, offset=message.offset, reason=rejection.reason,
                                  detail=rejection.detail, received_at=int(time.time() * 1000))


def decode_batch(messages: Iterable[Any], decode: Callable[[bytes | None], T | Rejection],
                 metrics: Metrics) -> tuple[list[Received[T]], list[Letter]]:
    """Decode each message (faust Messages); the valid ones, and a dead letter per rejection (counted)."""
    valid: list[Received[T]] = []
    letters: list[Letter] = []
    consumed: Counter[str] = Counter()
    for message in messages:
        topic = message.topic
        consumed[topic] += 1
        decoded = decode(message.value)
        if isinstance(decoded, Rejection):
            letter = dead_letter_for(message, decoded)
            letters.append((message.key, encode(letter)))
            metrics.dead_letters.labels(topic=topic, reason=decoded.reason).inc()
            log.debug("dead letter from %s[%d]@%d: %s", topic, letter.partition, letter.offset, decoded.detail)
        else:
            valid.append(Received(decoded, message.timestamp, message.partition, message.offset))
    for topic, count in consumed.items():  # one label lookup per topic and batch, not per record
        metrics.events_consumed.labels(topic=topic).inc(count)
    return valid, letters


async def validate_batch(events: Iterable[EventT[Any]], decode: Callable[[bytes | None], T | Rejection],
                         metrics: Metrics, dead_letters: TopicT) -> list[Received[T]]:
    """Decode a batch of Faust events; send the rejections to ``dead_letters``; the valid ones."""
    valid, letters = decode_batch((event.message for event in events), decode, metrics)
    for key, value in letters:
        await dead_letters.send(key=key, value=value)
    return valid
