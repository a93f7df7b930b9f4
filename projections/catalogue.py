"""Certificate catalogue, policies and folders: what admin tooling lists and filters."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb
from projections.statements import Pending

CERT_FIELDS = (
    "certificate_id",
    "org_uid",
    "name",
    "subject",
    "issuer",
    "fingerprint",
    "serial",
    "is_ca",
    "status",
    "not_before",
    "not_after",
    "not_after_epoch",
    "folder",
    "policy_id",
    "run_as_user",
    "registration_template",
    "registration_folder",
    "pinned_host",
    "pinned_component",
    "key_type",
    "key_size",
    "sans",
    "ski",
    "aki",
    "self_signed",
    "pem",
    "version",
    "created_at",
    "updated_at",
    "deleted",
)

# event name -> (column, event attribute or constant)
SIMPLE_UPDATES: dict[str, tuple[tuple[str, str | None, Any], ...]] = {
    "Renamed": (("name", "name", None),),
    "Activated": (("status", None, "ACTIVE"),),
    "Deactivated": (("status", None, "INACTIVE"),),
    "CaIndicatorSet": (("is_ca", "is_ca", None),),
    "PolicyAssigned": (("policy_id", "policy_id", None),),
    "RunAsUserSet": (("run_as_user", "user_id", None),),
    "RegistrationSet": (
        ("registration_template", "template_id", None),
        ("registration_folder", "initial_folder", None),
    ),
    "HostPinned": (("pinned_host", "ip", None),),
    "HostPinCleared": (("pinned_host", None, None),),
    "ComponentPinned": (("pinned_component", "component_id", None),),
    "ComponentPinCleared": (("pinned_component", None, None),),
    "MovedToFolder": (("folder", "folder", None),),
    "Deleted": (("deleted", None, 1),),
}


def _iso(ts: datetime) -> str:
    return ts.isoformat()


class CatalogueProjection(ViewProjection):
    name = "catalogue"
    tables = ("catalogue_certificates", "catalogue_policies", "catalogue_folders")

    def __init__(self) -> None:
        self._pending = Pending()  # policies and folders: few, kept in order
        # certificates: changes coalesced per row (by aggregate id), so a batch costs one
        # statement per shape; `updated_at` stays a datetime until the flush (only the last
        # of a row's changes in a batch is ever written)
        self._inserts: dict[UUID, dict[str, Any]] = {}
        self._updates: dict[UUID, dict[str, Any]] = {}

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS catalogue_certificates ("
            " certificate_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, name TEXT NOT NULL,"
            " subject TEXT NOT NULL, issuer TEXT NOT NULL, fingerprint TEXT NOT NULL,"
            " serial TEXT NOT NULL, is_ca INTEGER NOT NULL, status TEXT NOT NULL,"
            " not_before TEXT NOT NULL, not_after TEXT NOT NULL,"
            " not_after_epoch DOUBLE PRECISION NOT NULL, folder TEXT NOT NULL, policy_id TEXT,"
            " run_as_user TEXT, registration_template TEXT, registration_folder TEXT,"
            " pinned_host TEXT, pinned_component TEXT, key_type TEXT, key_size INTEGER,"
            " sans TEXT, ski TEXT, aki TEXT, self_signed INTEGER, pem TEXT NOT NULL,"
            " version INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
            " deleted INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS catalogue_certificates_org"
            " ON catalogue_certificates (org_uid, deleted, name, certificate_id)",
            "CREATE INDEX IF NOT EXISTS catalogue_certificates_policy"
            " ON catalogue_certificates (org_uid, policy_id)",
            "CREATE TABLE IF NOT EXISTS catalogue_policies ("
            " aggregate_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, policy_id TEXT NOT NULL,"
            " name TEXT NOT NULL, permission_sets TEXT NOT NULL, version INTEGER NOT NULL,"
            " created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS catalogue_folders ("
            " folder_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, path TEXT NOT NULL,"
            " deleted INTEGER NOT NULL)",
        ]

    def handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {"Certificate.Imported": self._imported}
        for name in SIMPLE_UPDATES:
            handlers["Certificate." + name] = self._certificate_update
        handlers.update(
            {
                "Policy.Created": self._policy_created,
                "Policy.Renamed": self._policy_update,
                "Policy.PermissionSetsReplaced": self._policy_update,
                "Policy.Deleted": self._policy_update,
                "Folder.Created": self._folder,
                "Folder.Deleted": self._folder,
                "Folder.Recreated": self._folder,
            }
        )
        return handlers

    def load(self, db: ViewDb) -> None:
        self._pending.clear()
        self._inserts.clear()
        self._updates.clear()

    def flush(self, tx: Tx) -> None:
        for inserted in self._inserts.values():
            inserted["updated_at"] = _iso(inserted["updated_at"])
        tx.bulk_insert(
            "catalogue_certificates",
            CERT_FIELDS,
            [[row[k] for k in CERT_FIELDS] for row in self._inserts.values()],
        )
        shapes: dict[tuple[str, ...], list[list[Any]]] = {}
        for certificate_id, changes in self._updates.items():
            changes["updated_at"] = _iso(changes["updated_at"])
            columns = tuple(sorted(changes))
            values = [changes[c] for c in columns] + [str(certificate_id)]
            shapes.setdefault(columns, []).append(values)
        for columns, rows in shapes.items():
            tx.bulk_update("catalogue_certificates", "certificate_id", columns, rows)
        self._inserts.clear()
        self._updates.clear()
        self._pending.flush(tx)

    def _imported(self, event: Any, position: int) -> None:
        f = event.facts
        values = {
            "certificate_id": str(event.originator_id),
            "org_uid": event.org_uid,
            "name": event.name,
            "subject": f["subject"],
            "issuer": f["issuer"],
            "fingerprint": f["fingerprint"],
            "serial": f["serial"],
            "is_ca": int(event.is_ca),
            "status": "ACTIVE",
            "not_before": f["not_before"],
            "not_after": f["not_after"],
            "not_after_epoch": datetime.fromisoformat(f["not_after"]).timestamp(),
            "folder": event.folder,
            "policy_id": event.policy_id,
            "run_as_user": None,
            "registration_template": None,
            "registration_folder": None,
            "pinned_host": None,
            "pinned_component": None,
            "key_type": f.get("key_type"),
            "key_size": f.get("key_size"),
            "sans": json.dumps(f.get("sans", [])),
            "ski": f.get("ski"),
            "aki": f.get("aki"),
            "self_signed": int(bool(f.get("self_signed"))),
            "pem": f["pem"],
            "version": event.originator_version,
            "created_at": _iso(event.timestamp),
            "updated_at": event.timestamp,
            "deleted": 0,
        }
        self._updates.pop(event.originator_id, None)
        self._inserts[event.originator_id] = values

    def _certificate_update(self, event: Any, position: int) -> None:
        target = self._inserts.get(event.originator_id)
        if target is None:
            target = self._updates.get(event.originator_id)
            if target is None:
                target = self._updates[event.originator_id] = {}
        for column, attr, constant in SIMPLE_UPDATES[type(event).__name__]:
            value = getattr(event, attr) if attr else constant
            target[column] = int(value) if isinstance(value, bool) else value
        target["version"] = event.originator_version
        target["updated_at"] = event.timestamp

    def _policy_created(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO catalogue_policies (aggregate_id, org_uid, policy_id, name,"
            " permission_sets, version, created_at, updated_at, deleted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                event.policy_id,
                event.name,
                json.dumps(event.permission_sets),
                event.originator_version,
                _iso(event.timestamp),
                _iso(event.timestamp),
            ],
        )

    def _policy_update(self, event: Any, position: int) -> None:
        kind = type(event).__name__
        column, value = {
            "Renamed": ("name", getattr(event, "name", None)),
            "PermissionSetsReplaced": (
                "permission_sets",
                json.dumps(getattr(event, "permission_sets", None)),
            ),
            "Deleted": ("deleted", 1),
        }[kind]
        self._pending.add(
            f"UPDATE catalogue_policies SET {column} = ?, version = ?, updated_at = ?"  # noqa: S608
            " WHERE aggregate_id = ?",
            [value, event.originator_version, _iso(event.timestamp), str(event.originator_id)],
        )

    def _folder(self, event: Any, position: int) -> None:
        kind = type(event).__name__
        if kind == "Created":
            self._pending.add(
                "INSERT INTO catalogue_folders (folder_id, org_uid, path, deleted) VALUES (?, ?, ?, 0)",
                [str(event.originator_id), event.org_uid, event.path],
            )
        else:
            self._pending.add(
                "UPDATE catalogue_folders SET deleted = ? WHERE folder_id = ?",
                [int(kind == "Deleted"), str(event.originator_id)],
            )
