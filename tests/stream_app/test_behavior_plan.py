"""Per-user batch plans: a batch's events of one user are decided as if they came one by one."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec

from models.next_action.serving import EventPrediction
from schemas import NextActionPrediction
from stream_app.agents.behavior import _Plan, _Quality, _User
from stream_app.app import settings
from stream_app.state import StoredUser

T0 = 1_700_000_000_000
GRACE_MS = int(settings.grace_s * 1000)


def _event(event_id: str, ts: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    kafka_event = SimpleNamespace(message=SimpleNamespace(timestamp=ts / 1000))
    return kafka_event, SimpleNamespace(event_id=event_id, user_id="u1", ts=ts, action="view", item_id=None,
                                        category=None, poi_id=None, lat=None, lon=None)


def _plan(batch: list[tuple[str, int]], stored: StoredUser | None = None) -> tuple[_Plan, list[NextActionPrediction]]:
    plan = _Plan("u1", _User(stored or StoredUser()))
    for event_id, ts in batch:
        plan.add(*_event(event_id, ts))
    plan.predicted([EventPrediction([(f"next-{e.event_id}", 0.5)], 1, 0.0) for e, _ in plan.applied],
                   "v1", processed_at=T0, quality=_Quality())
    decoded = [msgspec.json.decode(value, type=NextActionPrediction) for _, value in plan.outputs()]
    return plan, decoded


def test_redelivery_late_and_duplicates_inside_one_batch() -> None:
    plan, out = _plan([("a", T0), ("b", T0 + 1000), ("b", T0 + 1000), ("late", T0 - GRACE_MS - 2000),
                       ("a", T0), ("c", T0 + 2000)])
    assert [e.event_id for e, _ in plan.applied] == ["a", "b", "c"]
    # a, b, b again (identical), late (b's prediction marked late), the old duplicate a: nothing, c.
    assert [(p.event_id, p.late) for p in out] == [("a", False), ("b", False), ("b", False), ("late", True),
                                                   ("c", False)]
    assert plan.outputs()[1] == plan.outputs()[2]
    assert out[3].top_k == out[1].top_k and out[3].as_of == T0 - GRACE_MS - 2000
    plan.update_stored()
    stored = plan.user.stored
    assert stored.recent_ids[-3:] == ["a", "b", "c"] and stored.last_ts_ms == T0 + 2000
    assert stored.last_prediction == plan.outputs()[-1][1]


def test_first_event_of_a_batch_checks_the_stored_state() -> None:
    _, before = _plan([("x", T0)])
    stored = StoredUser(last_prediction=msgspec.json.encode(before[0]), recent_ids=["x"], last_ts_ms=T0)
    plan, out = _plan([("x", T0), ("early", T0 - GRACE_MS - 1)], stored=stored)
    assert plan.applied == []
    assert [(p.event_id, p.late) for p in out] == [("x", False), ("early", True)]
    assert plan.outputs()[0][1] == stored.last_prediction
