"""Remembered decisions never outlive the index they were made from (refresh is concurrent)."""

from __future__ import annotations

import pytest

from application import authorization as authorization_module
from application.authorization import Authorization, AuthzIndex
from application.lookup import CertRow, LookupChanges, PolicyRow
from application.ports import AccessRequest, Action

ORG = "org-1"
OPEN = [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}]
CLOSED = [{"topics": ["${org.uid}/other/#"], "actions": ["PUBLISH"]}]


def cert(policy_id: str) -> CertRow:
    return CertRow("c1", ORG, "fp1", "cn", True, "", 0.0, 4e9, policy_id, None, None, False)


class Source:
    """Lookup changes handed out one refresh at a time."""

    def __init__(self) -> None:
        self.pending: list[tuple[list[CertRow], list[PolicyRow]]] = []
        self.position = 0

    def lookup_changes(self, after: int) -> LookupChanges:
        if not self.pending:
            return LookupChanges([], [], self.position)
        certificates, policies = self.pending.pop(0)
        self.position += 1
        return LookupChanges(certificates, policies, self.position)


def test_a_decision_made_across_a_policy_change_is_not_served_again() -> None:
    source = Source()
    policies = [PolicyRow(ORG, "open", OPEN, False), PolicyRow(ORG, "closed", CLOSED, False)]
    source.pending.append(([cert("open")], policies))
    race = {"armed": False}

    def clock() -> float:
        # authorize reads the clock right after the row: the projection thread's refresh,
        # moving the certificate to the closed policy, lands exactly there
        if race["armed"]:
            race["armed"] = False
            source.pending.append(([cert("closed")], []))
            index.refresh()
        return 1000.0

    index = AuthzIndex(source, clock=clock)
    index.refresh()
    authorization = Authorization(index)
    request = AccessRequest("fp1", "client-a", "1.2.3.4", Action.PUBLISH, f"{ORG}/feed/x")
    race["armed"] = True
    authorization.authorize(request)  # decided on the row read before the refresh
    later = authorization.authorize(request)
    assert (later.allowed, later.reason) == (False, "no-matching-permission")


def test_remembered_decisions_stay_within_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authorization_module, "TOPIC_ENTRIES", 1_000)
    source = Source()
    source.pending.append(([cert("open")], [PolicyRow(ORG, "open", OPEN, False)]))
    index = AuthzIndex(source, clock=lambda: 1000.0)
    index.refresh()
    authorization = Authorization(index)
    for i in range(3_000):  # a device spraying client ids and topics
        authorization.authorize(
            AccessRequest("fp1", f"c{i % 500}", "1.2.3.4", Action.PUBLISH, f"{ORG}/feed/{i}")
        )
    remembered = sum(len(cache) for cache in index.topic_cache.values())
    assert 0 < remembered <= 1_000 + authorization_module.TOPICS_PER_SESSION
    long_topic = f"{ORG}/feed/" + "x" * 300
    authorization.authorize(AccessRequest("fp1", "c0", "1.2.3.4", Action.PUBLISH, long_topic))
    assert all(seen[2] != long_topic for cache in index.topic_cache.values() for seen in cache)
