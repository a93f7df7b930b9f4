"""Folder commands: create a path (with its parents), delete an empty folder."""

from __future__ import annotations

from application.certificates import CertificateCommands
from domain.errors import Conflict, NotFound
from domain.folder import Folder, folder_id, normalise_folder
from domain.meta import Actor


class FolderCommands(CertificateCommands):
    def create_folder(self, org_uid: str, path: str, actor: Actor) -> str:
        """Emits Folder.Created for the path and any missing parent. Idempotent."""
        self.organization(org_uid)
        path = normalise_folder(path)
        created = self._ensure_folders(org_uid, path, actor.meta())
        if created:
            self.commit(*created)
        return path

    def folder_exists(self, org_uid: str, path: str) -> bool:
        folder = self.find(Folder, folder_id(org_uid, normalise_folder(path)))
        return folder is not None and not folder.deleted

    def delete_folder(self, org_uid: str, path: str, actor: Actor, in_use: int) -> None:
        """Emits Folder.Deleted. Raises Conflict for the root or a folder still holding certificates."""
        path = normalise_folder(path)
        if path == "/":
            raise Conflict("the root folder cannot be deleted")
        folder = self.find(Folder, folder_id(org_uid, path))
        if folder is None or folder.deleted:
            raise NotFound("folder not found")
        if in_use:
            raise Conflict(f"folder holds {in_use} certificate(s); move them first")
        folder.delete(actor.meta())
        self.commit(folder)
        self.known_folders.discard(folder.id)
