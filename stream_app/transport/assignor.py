"""A partition assignor that tells every worker who owns which partition, for query routing.

Kafka Streams answers interactive queries for any key from any instance this way: each member's
subscription metadata carries its ``application.server`` (host:port), the group leader computes the
assignment and puts the full partition -> host map into every member's assignment ``user_data``.
Here the actual assignment is delegated (round-robin by default); this class adds the URLs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

__all__ = ["OwnerAssignor", "OwnerMap", "build_owner_map", "encode_owner_map", "decode_owner_map"]

log = logging.getLogger(__name__)

#: topic -> partition -> URL of the worker that owns it.
OwnerMap = dict[str, dict[int, str]]

_VERSION = 1


def build_owner_map(assignments: Mapping[str, ConsumerProtocolMemberAssignment],
                    urls: Mapping[str, str]) -> OwnerMap:
    """Who owns each partition: member assignments joined with member URLs (empty URL if unknown)."""
    owners: OwnerMap = {}
    for member, assignment in assignments.items():
        for topic, partitions in assignment.assignment:
            for partition in partitions:
                owners.setdefault(topic, {})[partition] = urls.get(member, "")
    return owners


def encode_owner_map(owners: OwnerMap) -> bytes:
    return json.dumps({"v": _VERSION, "owners": {t: {str(p): u for p, u in ps.items()} for t, ps in owners.items()}},
                      separators=(",", ":"), sort_keys=True).encode()


def decode_owner_map(raw: bytes) -> OwnerMap:
    """The map a leader broadcast; empty when ``raw`` is empty or not ours (never raises)."""
    try:
        payload = json.loads(raw) if raw else {}
        return {t: {int(p): str(u) for p, u in ps.items()} for t, ps in payload.get("owners", {}).items()}
    except (ValueError, AttributeError, TypeError):
        log.warning("ignoring an assignment user_data that is not a partition-owner map")
        return {}


def _url_of(metadata: ConsumerProtocolMemberMetadata) -> str:
    try:
        return str(json.loads(metadata.user_data).get("url", "")) if metadata.user_data else ""
    except (ValueError, AttributeError):
        return ""


class OwnerAssignor(AbstractPartitionAssignor):
    """Delegates the assignment, broadcasts partition -> worker URL to every member.

    Pass an instance in ``partition_assignment_strategy``; after each rebalance ``owner_of`` and
    ``is_local`` answer from the map the leader sent. Every member of the group must use it (the
    protocol ``name`` differs from the delegate's, so a group cannot mix them by accident).
    """

    version = 0

    def __init__(self, url: str, delegate: type[AbstractPartitionAssignor] = RoundRobinPartitionAssignor) -> None:
        self.url = url
        self.delegate = delegate
        self.owners: OwnerMap = {}
        self.assigned: frozenset[tuple[str, int]] = frozenset()

    @property
    def name(self) -> str:
        return f"stream-app-owners-{self.delegate.name}"

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        user_data = json.dumps({"v": _VERSION, "url": self.url}, separators=(",", ":")).encode()
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        plain = {member: ConsumerProtocolMemberMetadata(m.version, m.subscription, b"")
                 for member, m in members.items()}
        assignments = self.delegate.assign(cluster, plain)
        owners = encode_owner_map(build_owner_map(assignments, {m: _url_of(md) for m, md in members.items()}))
        return {member: ConsumerProtocolMemberAssignment(self.version, a.assignment, owners)
                for member, a in assignments.items()}

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.owners = decode_owner_map(assignment.user_data)
        self.assigned = frozenset((tp.topic, tp.partition) for tp in assignment.partitions())

    def owner_of(self, topic: str, partition: int) -> str | None:
        """URL of the worker that owns ``topic``'s ``partition`` since the last rebalance (None: nobody)."""
        return self.owners.get(topic, {}).get(partition)

    def is_local(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.assigned
