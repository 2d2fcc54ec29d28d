"""The owner-broadcasting assignor: every member learns the same, complete partition -> URL map."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from stream_app.transport.assignor import OwnerAssignor, build_owner_map, decode_owner_map, encode_owner_map


class FakeCluster:
    def __init__(self, partitions: dict[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self._partitions[topic])) if topic in self._partitions else None


def _members(urls: dict[str, str], topics: list[str]):
    return {member: OwnerAssignor(url).metadata(topics) for member, url in urls.items()}


def test_every_member_receives_the_full_map_of_who_owns_what() -> None:
    urls = {"m-a": "http://10.0.0.1:6066", "m-b": "http://10.0.0.2:6066", "m-c": "http://10.0.0.3:6066"}
    leader = OwnerAssignor(urls["m-a"])

    assignments = leader.assign(FakeCluster({"events": 8}), _members(urls, ["events"]))

    maps = []
    for member, assignment in assignments.items():
        follower = OwnerAssignor(urls[member])
        follower.on_assignment(ConsumerProtocolMemberAssignment.decode(assignment.encode()))
        maps.append(follower.owners)
        for partition in range(8):
            assert follower.is_local("events", partition) == (follower.owner_of("events", partition) == urls[member])
    assert all(m == maps[0] for m in maps), "every member must see the same map"
    assert sorted(maps[0]["events"]) == list(range(8)), "every partition has an owner"
    assert set(maps[0]["events"].values()) == set(urls.values())


def test_the_actual_assignment_is_the_delegates() -> None:
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    urls = {"m-a": "http://a", "m-b": "http://b"}
    cluster, members = FakeCluster({"events": 5}), _members(urls, ["events"])

    ours = OwnerAssignor("http://a").assign(cluster, members)
    plain = RoundRobinPartitionAssignor.assign(cluster, members)

    assert {m: a.assignment for m, a in ours.items()} == {m: a.assignment for m, a in plain.items()}


def test_metadata_carries_the_url_and_the_protocol_name_is_distinct() -> None:
    assignor = OwnerAssignor("http://w1:6066")
    metadata = assignor.metadata(["b", "a"])

    assert b"http://w1:6066" in metadata.user_data
    assert metadata.subscription == ["a", "b"]
    assert assignor.name != "roundrobin"


def test_owner_map_round_trip_and_garbage() -> None:
    owners = {"t": {0: "http://a", 3: "http://b"}, "u": {1: ""}}
    assert decode_owner_map(encode_owner_map(owners)) == owners
    assert decode_owner_map(b"") == {}
    assert decode_owner_map(b"\xff not json") == {}


def test_build_owner_map_leaves_unknown_urls_empty() -> None:
    assignment = ConsumerProtocolMemberAssignment(0, [("t", [0, 2])], b"")
    assert build_owner_map({"m": assignment}, {}) == {"t": {0: "", 2: ""}}


def test_before_any_rebalance_nothing_is_known() -> None:
    assignor = OwnerAssignor("http://a")
    assert assignor.owner_of("t", 0) is None
    assert not assignor.is_local("t", 0)
