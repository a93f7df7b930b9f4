"""What a run does with one certificate: the rules every operation type shares (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.operation import OperationType


class Outcome(StrEnum):
    PUBLISHED = "published"  # every MQTT command of this certificate was acknowledged (QoS>0)
    EMAILED = "emailed"  # TAKE_ACTION package of e-mail actions only
    REPORTED = "reported"  # REPORT_EXPIRING: listed in the report
    SKIPPED = "skipped"
    FAILED = "failed"


class Skip(StrEnum):
    NOT_EXPIRING = "not-expiring"
    INACTIVE = "inactive"
    NO_COMPONENT = "no-pinned-component"


@dataclass(frozen=True, slots=True)
class CertificateRow:
    """The catalogue fields a run needs about one certificate."""

    certificate_id: str
    name: str
    subject: str
    not_after: str  # ISO 8601, aware
    status: str
    is_ca: bool
    pinned_component: str | None

    @classmethod
    def from_catalogue(cls, row: dict[str, Any]) -> CertificateRow:
        return cls(
            row["certificate_id"],
            row["name"],
            row["subject"],
            row["not_after"],
            row["status"],
            bool(row["is_ca"]),
            row.get("pinned_component") or None,
        )


def is_expiring(cert: CertificateRow, expires_before: datetime) -> bool:
    """Expiring = not_after before the end of the window; already expired counts."""
    return datetime.fromisoformat(cert.not_after) <= expires_before


def skip_reason(
    op_type: OperationType, cert: CertificateRow, expires_before: datetime
) -> Skip | None:
    """None when the run acts on the certificate, else why it is skipped.

    Only components pinned to a certificate take part in operations (GroveStreams rule);
    an INACTIVE certificate is never sent commands. A report lists every expiring
    certificate, pinned or not, active or not."""
    expiring_only = op_type in (OperationType.REPORT_EXPIRING, OperationType.ROLL_EXPIRING)
    if expiring_only and not is_expiring(cert, expires_before):
        return Skip.NOT_EXPIRING
    if op_type is OperationType.REPORT_EXPIRING:
        return None
    if cert.status != "ACTIVE":
        return Skip.INACTIVE
    if not cert.pinned_component:
        return Skip.NO_COMPONENT
    return None


def roll_topic(org_uid: str, component_id: str) -> str:
    return f"{org_uid}/manage/cert/roll/cid/{component_id}"


def truststore_topic(org_uid: str, component_id: str) -> str:
    return f"{org_uid}/manage/cert/update_truststore/cid/{component_id}"


def roll_payload(cert: CertificateRow, reason: str, run_id: str) -> bytes:
    """JSON the device acts on: certificate_id, dn, not_after, reason, run_id (lets a device
    ignore a redelivered command). Built by hand: it runs once per certificate."""
    # ids are UUIDs and not_after an ISO timestamp: only the DN needs JSON escaping
    return (
        f'{{"certificate_id":"{cert.certificate_id}","dn":{json.dumps(cert.subject)},'
        f'"not_after":"{cert.not_after}","reason":"{reason}","run_id":"{run_id}"}}'
    ).encode()


def template_values(org_uid: str, operation_name: str, cert: CertificateRow) -> dict[str, str]:
    """Values of the action package variables for one certificate. Components have no name
    of their own yet, so [component.name] is the component id."""
    component = cert.pinned_component or ""
    return {
        "component.id": component,
        "component.name": component,
        "cert.id": cert.certificate_id,
        "cert.name": cert.name,
        "cert.dn": cert.subject,
        "cert.not_after": cert.not_after,
        "org.uid": org_uid,
        "operation.name": operation_name,
    }
