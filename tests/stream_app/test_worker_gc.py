"""The worker's garbage collector tuning: the start's objects frozen, young collections less often."""

from __future__ import annotations

import gc

from stream_app.worker import GC_THRESHOLDS, tune_garbage_collector


def test_tune_garbage_collector_freezes_the_heap_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        kept = [object() for _ in range(10)] + [[] for _ in range(10)]  # tracked containers alive now
        tune_garbage_collector()
        assert gc.get_freeze_count() >= len(kept) // 2, "what lives at the start is frozen"
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700, "young collections less often than CPython's default"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
