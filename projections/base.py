"""Projection contract: apply a batch of events in memory, then write rows + tracking at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from projections.db import Tx, ViewDb

Handler = Callable[[Any, int], None]


def event_name(event: Any) -> str:
    """'Certificate.Imported' style name: aggregate class + past-tense event class."""
    return type(event).__qualname__


class ViewProjection:
    """Base for read models. Subclasses map event names to handlers in `handlers()`.

    Invariant: rows are written in the same transaction as the tracking position
    (exactly once); in-memory state is reloaded from the tables if a commit fails.
    """

    name: str = ""
    group: str = ""  # read models that share tables are reset and rebuilt together
    tables: tuple[str, ...] = ()
    version: int = 1  # bump when the tables change shape: the runner rebuilds the read model
    live_indexes: tuple[str, ...] = ()  # read while catching up: kept during bulk loads

    def schema(self) -> list[str]:
        raise NotImplementedError

    def handlers(self) -> dict[str, Handler]:
        raise NotImplementedError

    def load(self, db: ViewDb) -> None:
        """Load whatever in-memory state the projection keeps (after start or failed commit)."""

    def apply(self, event: Any, position: int) -> None:
        handler = self._handlers.get(event_name(event))
        if handler is not None:
            handler(event, position)

    def wants(self, entity_id: UUID) -> bool:
        """Whether events of this entity can matter here at all. A runner whose read models
        all override this asks it before decoding an event (see AuditProjection's shares)."""
        return True

    def split_for_helper(self, tx: Tx, per_bucket: Callable[[int], Sequence[int] | None]) -> None:
        """Filling from zero beside a helper process (tables empty): a read model kept in
        shares of entities may re-deal them. `per_bucket(n)` counts the log's events per
        entity bucket (low 32 bits of the id mod n), or None if the store cannot say."""

    def handler_for(self, event_class: type[Any]) -> Handler | None:
        """What `apply` calls for events of this class (None: they are ignored)."""
        if type(self).apply is not ViewProjection.apply:
            return self.apply  # a projection with its own `apply` sees every event
        return self._handlers.get(event_class.__qualname__)

    def prefetch(self, batch: Sequence[tuple[int, Any]]) -> None:
        """Work on the next batch, run on the reader thread while the current one is applied.

        Only pure computations whose results are hints (a cache the apply thread may use):
        never read or change what `apply` reads or changes.
        """

    def fed_by_restore(self) -> None:
        """From now on this read model is given a restore's events (see RestoreFeedRun): they are
        not in the event store yet, so one that would read something back from it must raise
        instead."""

    def fed_by_restore_end(self) -> None:
        """The restore's events are committed, or gone: back to normal."""

    def flush(self, tx: Tx) -> None:
        """Write pending rows inside the batch transaction."""

    def after_commit(self) -> None:
        """Hook run after the batch committed (e.g. wake the authorization index)."""

    def reset(self, tx: Tx) -> None:
        for table in self.tables:
            tx.clear(table)

    def prepare(self) -> None:
        self._handlers = self.handlers()
