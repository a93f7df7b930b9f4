"""Folders: the tree certificates and components live in (paths like /plant-1/line-2)."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidInput

MAX_DEPTH = 16
MAX_SEGMENT = 100


_NAMESPACE = uuid5(NAMESPACE_URL, "https://certwarden.invalid/folders")


def folder_id(org_uid: str, path: str) -> UUID:
    return uuid5(_NAMESPACE, f"{org_uid}:{path}")


def normalise_folder(path: str | None) -> str:
    """'/a/b' form; '' or '/' is the root. Raises InvalidInput on bad segments."""
    text = (path or "").strip()
    parts = [p.strip() for p in text.split("/") if p.strip()]
    if len(parts) > MAX_DEPTH:
        raise InvalidInput(f"folder path is deeper than {MAX_DEPTH} levels")
    for part in parts:
        if len(part) > MAX_SEGMENT:
            raise InvalidInput(f"folder name longer than {MAX_SEGMENT} characters")
        if part in (".", "..") or any(ord(c) < 32 for c in part):
            raise InvalidInput(f"invalid folder name {part[:40]!r}")
    return "/" + "/".join(parts)


def ancestors(path: str) -> list[str]:
    """'/a/b' -> ['/', '/a', '/a/b']."""
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def is_within(path: str, folder: str, recursive: bool = True) -> bool:
    if path == folder:
        return True
    if not recursive:
        return False
    return folder == "/" or path.startswith(folder.rstrip("/") + "/")


class Folder(Aggregate):
    """Emits Created, Deleted, Recreated. Id is uuid5 of (org, path): one aggregate per folder."""

    @staticmethod
    def create_id(org_uid: str, path: str) -> UUID:
        return folder_id(org_uid, path)

    @event("Created")
    def __init__(self, org_uid: str, path: str, meta: dict[str, str]) -> None:
        self.org_uid = org_uid
        self.path = path
        self.deleted = False

    def delete(self, meta: dict[str, str]) -> None:
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True

    def restore(self, meta: dict[str, str]) -> None:
        if self.deleted:
            self._recreated(meta=meta)

    @event("Recreated")
    def _recreated(self, meta: dict[str, str]) -> None:
        self.deleted = False
