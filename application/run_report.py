"""The e-mail a run sends its recipients: an HTML summary and a CSV of processed certificates."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterator
from typing import Any

from application.ports import Attachment, CertificateOutcome, OutgoingEmail, RunProgress
from domain.run_plan import Outcome, Skip

CSV_FIELDS = (
    "certificate_id",
    "name",
    "dn",
    "not_after",
    "status",
    "component_id",
    "outcome",
    "reason",
    "topics",
)
HTML_ROWS = 50


def processed(progress: RunProgress, run_id: str, page: int = 1000) -> Iterator[CertificateOutcome]:
    """Outcomes in processing order, page by page. Certificates skipped only because they are
    not expiring are left out: for the *_EXPIRING types they are the uninteresting majority."""
    after = -1
    while True:
        rows = progress.outcomes(run_id, after=after, limit=page)
        for row in rows:
            if not (row.outcome == Outcome.SKIPPED and row.reason == Skip.NOT_EXPIRING):
                yield row
        if len(rows) < page:
            return
        after = rows[-1].seq


def build_report(
    snapshot: dict[str, Any],
    run_id: str,
    counts: dict[str, int],
    recipients: list[str],
    progress: RunProgress,
) -> OutgoingEmail:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    first: list[CertificateOutcome] = []
    total = 0
    for row in processed(progress, run_id):
        total += 1
        if len(first) < HTML_ROWS:
            first.append(row)
        writer.writerow(
            [
                row.certificate_id,
                row.name,
                row.subject,
                row.not_after,
                row.status,
                row.component_id or "",
                row.outcome,
                row.reason,
                " ".join(row.topics),
            ]
        )
    name, op_type = str(snapshot["name"]), str(snapshot["op_type"])
    subject = f"[certwarden] {name}: {op_type} run {run_id[:8]}"
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no certificates"
    text = (
        f"Operation {name} ({op_type}), folder {snapshot['folder']}\n"
        f"Run {run_id}, {snapshot.get('trigger', '')} at {snapshot.get('fire_time', '')}\n"
        f"{summary}\n{total} certificate(s) listed in the attached CSV.\n"
    )
    return OutgoingEmail(
        to=tuple(recipients),
        subject=subject,
        text=text,
        html=_html(snapshot, run_id, counts, first, total),
        attachments=(
            Attachment(f"run-{run_id}.csv", "text/csv", buffer.getvalue().encode("utf-8")),
        ),
    )


def _html(
    snapshot: dict[str, Any],
    run_id: str,
    counts: dict[str, int],
    first: list[CertificateOutcome],
    total: int,
) -> str:
    e = html.escape
    count_rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in sorted(counts.items()))
    cert_rows = "".join(
        f"<tr><td>{e(o.name)}</td><td>{e(o.not_after)}</td><td>{e(o.component_id or '')}</td>"
        f"<td>{e(o.outcome)}</td><td>{e(o.reason)}</td></tr>"
        for o in first
    )
    more = f"<p>{total - len(first)} more in the attached CSV.</p>" if total > len(first) else ""
    return (
        "<html><body>"
        f"<h2>{e(str(snapshot['name']))}: {e(str(snapshot['op_type']))}</h2>"
        f"<p>Run {e(run_id)} &middot; folder {e(str(snapshot['folder']))} &middot; "
        f"{e(str(snapshot.get('trigger', '')))} at {e(str(snapshot.get('fire_time', '')))}</p>"
        f"<table><tr><th>outcome</th><th>certificates</th></tr>{count_rows}</table>"
        "<table><tr><th>certificate</th><th>not after</th><th>component</th>"
        f"<th>outcome</th><th>reason</th></tr>{cert_rows}</table>{more}"
        "</body></html>"
    )
