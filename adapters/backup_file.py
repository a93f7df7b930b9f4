"""Backup files on disk and on the terminal: `certwarden backup` / `certwarden restore`.

The format itself is application/backup_format.py (pure); this module wires the services to
the event store's bulk writer, writes files atomically (FILE.partial, renamed when complete),
and shows rich progress bars and a summary on a terminal (silent otherwise).
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from adapters.bulk_events import bulk_store_for
from adapters.chain_helper import ProcessChains
from adapters.settings import Settings
from application.backup import Backups, Summary
from application.restore import Restorer
from domain.errors import DomainError

if TYPE_CHECKING:
    from application.bootstrap import Certwarden

console = Console(stderr=True)


def services(cw: Certwarden) -> tuple[Backups, Restorer]:
    """Backup and restore services over this container's event store."""
    chains = ProcessChains() if cw.settings.backup_helper else None
    backups = Backups(cw.registry, bulk_store_for(cw.registry.recorder), chains=chains)
    return backups, Restorer(backups)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>9,.0f}/s")


class RichProgress(AbstractContextManager["RichProgress"]):
    """Progress port on a terminal: one bar per phase; does nothing when not a terminal."""

    def __init__(self, out: Console = console) -> None:
        self.enabled = out.is_terminal
        self._bars = Progress(
            TextColumn("[bold]{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=out,
            disable=not self.enabled,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:  # a failed run keeps its bar where it stopped
            self._finish()
        self._bars.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._bars.tasks[self._task]
            if task.total is not None:
                self._bars.update(self._task, completed=task.total)
            else:
                self._bars.update(self._task, total=1, completed=1)

    def phase(self, title: str, total: int | None) -> None:
        self._finish()
        self._task = self._bars.add_task(title, total=total)

    def advance(self, count: int) -> None:
        if self._task is not None and count:
            self._bars.advance(self._task, count)


def summary_line(verb: str, summary: Summary, where: str) -> None:
    if console.is_terminal:
        console.print(
            f"{verb} {summary.events:,} events in {summary.seconds:.1f} s "
            f"({summary.rate:,.0f} events/s) {where}"
        )


def parse_until(value: str | None) -> datetime | None:
    """ISO 8601; no offset means UTC. Raises InvalidInput."""
    if value is None:
        return None
    from projections.audit_view import parse_instant

    return parse_instant(value, "--until")


def _container(start: bool) -> Certwarden:
    from application.bootstrap import bootstrap

    cw = bootstrap(Settings())
    if start:
        cw.start(background=False)
    return cw


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def backup(
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write ('-': stdout)")],
    org: Annotated[str | None, typer.Option("--org", help="organization uid")] = None,
    all_: Annotated[bool, typer.Option("--all", help="the whole system (every event)")] = False,
) -> None:
    """Write a backup (gzip'd JSON Lines, hash-chained) of one organization or of everything."""
    if (org is None) == (not all_):
        _fail("give --org UID or --all")
    cw = _container(start=False)
    partial = output.with_name(output.name + ".partial")
    try:
        sink_cm: AbstractContextManager[BinaryIO] = (
            nullcontext(sys.stdout.buffer) if str(output) == "-" else partial.open("wb")
        )
        with sink_cm as sink, RichProgress() as progress:
            manifest, summary = services(cw)[0].backup(sink, org, progress)
        if str(output) != "-":
            os.replace(partial, output)
        summary_line("backed up", summary, f"to {output} (last position {manifest.last_position})")
    except DomainError as exc:
        partial.unlink(missing_ok=True)
        _fail(exc.detail)
    finally:
        cw.close()


def restore(
    file: Annotated[Path, typer.Argument(help="a file written by `certwarden backup`")],
    until: Annotated[
        str | None, typer.Option(help="restore events up to this ISO 8601 time")
    ] = None,
    until_position: Annotated[
        int | None, typer.Option(help="restore events up to this source position")
    ] = None,
) -> None:
    """Verify a backup completely, then restore it in one transaction (or refuse, writing nothing)."""
    if until is not None and until_position is not None:
        _fail("give --until or --until-position, not both")
    try:
        source = file.open("rb")
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
        return
    cw = _container(start=True)
    try:
        with source, RichProgress() as progress:
            plan, summary = services(cw)[1].restore(
                source, parse_until(until), until_position, progress
            )
        scope = plan.manifest.org_uid or "the system"
        summary_line("restored", summary, f"of {scope} (cut at position {plan.cut_position})")
    except DomainError as exc:
        _fail(exc.detail)
    finally:
        cw.close()


def register(app: typer.Typer) -> None:
    """Add the backup and restore commands to the certwarden CLI."""
    app.command("backup")(backup)
    app.command("restore")(restore)
