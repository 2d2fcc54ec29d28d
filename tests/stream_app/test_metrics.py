"""observe_many: a batch's values in one update per bucket, the same series as one observe per value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from stream_app.metrics import LATENCY_BUCKETS, observe_many


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for family in histogram.collect() for s in family.samples
            if not s.name.endswith("_created")}


def test_observe_many_gives_the_buckets_sum_and_count_of_one_observe_per_value() -> None:
    values = [0.0, 0.0005, 0.0006, 0.05, 0.05000001, 0.3, 9.99, 10.0, 42.0]  # bounds, between, above the last
    one_by_one = Histogram("one", "x", ["pipeline"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    batched = Histogram("one", "x", ["pipeline"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for value in values:
        one_by_one.labels(pipeline="p").observe(value)
    observe_many(batched.labels(pipeline="p"), values)
    observe_many(batched.labels(pipeline="p"), [])
    assert _samples(batched) == _samples(one_by_one)
    assert _samples(batched)[("one_count", "")] == len(values)


def test_observe_many_falls_back_to_observe_for_other_histograms() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    observe_many(plain, [1.0, 2.0])
    assert plain.seen == [1.0, 2.0]
