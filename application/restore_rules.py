"""Rules a backup's events must follow before restore writes them: known event types with
their fields, and where a --until / --until-position cut may fall."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic, resolve_topic

from application.backup_format import EventLine
from domain.reservation import Reservation

RESERVATION = get_topic(Reservation)


@lru_cache(maxsize=1024)
def event_class(topic: str) -> type[Any] | None:
    """The aggregate event class of a topic, or None. Only `domain.` modules are imported:
    a topic names a module, and a file must not make this process import arbitrary code."""
    module = topic.partition(":")[0]
    if not module.startswith("domain."):
        return None
    try:
        cls = resolve_topic(topic)
    except Exception:  # noqa: BLE001 - any failure means "not an event type we know"
        return None
    if not isinstance(cls, type) or not issubclass(cls, CanMutateAggregate):
        return None
    return cls


@dataclass(frozen=True, slots=True)
class TopicInfo:
    cls: type[Any]
    aggregate: str  # "domain.certificate:Certificate"
    reservation: bool
    fields: frozenset[str] | None  # the state members it must carry (None: upcast, unchecked)


@lru_cache(maxsize=1024)
def topic_info(topic: str) -> TopicInfo | None:
    cls = event_class(topic)
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)} - {"originator_id", "originator_version"}
    aggregate = topic.rsplit(".", 1)[0]
    upcast = getattr(cls, "class_version", 1) != 1
    return TopicInfo(cls, aggregate, aggregate == RESERVATION, None if upcast else frozenset(names))


class Cut:
    """Prefix of the file up to --until / --until-position, snapped forward to the end of the
    command in flight: events of one save() carry one request id, and a uniqueness claim is
    saved right after the aggregate that needs it, so neither is ever cut off its command."""

    def __init__(self, until: datetime | None, until_position: int | None) -> None:
        self.until, self.until_position = until, until_position
        self.open, self.snapping, self.request_id = True, False, ""

    def admits(self, event: EventLine, reservation: bool) -> bool:
        if not self.open:
            return False
        meta = event.state.get("meta")
        request_id = str(meta.get("request_id") or "") if isinstance(meta, dict) else ""
        if not self.snapping:
            within = (self.until_position is None or event.position <= self.until_position) and (
                self.until is None or event.state["timestamp"] <= self.until
            )
            if within:
                self.request_id = request_id
                return True
            self.snapping = True
        if reservation or (self.request_id and request_id == self.request_id):
            return True
        self.open = False
        return False
