"""Garbage-collector settings for bulk work over the event log."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 100_000


@contextlib.contextmanager
def fewer_young_collections() -> Iterator[None]:
    """For bulk work over many events (a read-model catch-up, a backup, a restore), which
    allocates millions of short-lived containers: at Python's default threshold (700) the
    collector runs thousands of times per 100,000 events and its older generations re-scan
    the process's long-lived state (read models, indexes). Measured on a catch-up, that was a
    fifth of its time. Young collections every 100,000 allocations instead, for the duration
    only (the threshold is process-wide and is put back after)."""
    first, *older = gc.get_threshold()
    if first >= YOUNG_THRESHOLD or first == 0:  # already raised, or collection disabled
        yield
        return
    gc.set_threshold(YOUNG_THRESHOLD, *older)
    try:
        yield
    finally:
        if gc.get_threshold()[0] == YOUNG_THRESHOLD:  # nobody changed it meanwhile
            gc.set_threshold(first, *older)
