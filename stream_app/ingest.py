"""Raw records in, valid events out: every rejection goes to the dead-letter topic with its reason."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from faust.types import EventT

from schemas import DeadLetter, Rejection, encode
from stream_app.metrics import METRICS
from stream_app.topics import dead_letters

__all__ = ["dead_letter_for", "validate_batch"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def dead_letter_for(message: Any, rejection: Rejection) -> DeadLetter:
    """The dead letter of a rejected Kafka message (``message`` is a faust Message)."""
    return DeadLetter.from_record(message.value, message.key, source_topic=message.topic,
                                  partition=message.partition, offset=message.offset, reason=rejection.reason,
                                  detail=rejection.detail, received_at=int(time.time() * 1000))


async def validate_batch(events: Iterable[EventT], decode: Callable[[bytes | None], T | Rejection]
                         ) -> list[tuple[EventT, T]]:
    """Decode each record; send rejections to dead letters (and count them); return the valid ones."""
    valid: list[tuple[EventT, T]] = []
    consumed: Counter[str] = Counter()
    for event in events:
        topic = event.message.topic
        consumed[topic] += 1
        decoded = decode(event.message.value)
        if isinstance(decoded, Rejection):
            letter = dead_letter_for(event.message, decoded)
            await dead_letters.send(key=event.message.key, value=encode(letter))
            METRICS.dead_letters.labels(topic=topic, reason=decoded.reason).inc()
            log.debug("dead letter from %s[%d]@%d: %s", topic, letter.partition, letter.offset, decoded.detail)
        else:
            valid.append((event, decoded))
    for topic, count in consumed.items():  # one label lookup per topic and batch, not per record
        METRICS.events_consumed.labels(topic=topic).inc(count)
    return valid
