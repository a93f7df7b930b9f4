"""Component templates (CRUD) and component registration on a device's first feed publish."""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from application.folders import FolderCommands
from domain.certificate import Certificate
from domain.component import (
    Component,
    ComponentTemplate,
    check_component_id,
    component_uuid,
    template_key,
)
from domain.errors import Conflict, InvalidInput, NotFound
from domain.folder import normalise_folder
from domain.meta import Actor, ActorKind


class ComponentCommands(FolderCommands):
    def create_template(
        self, org_uid: str, template_id: str, name: str, name_pattern: str, actor: Actor
    ) -> ComponentTemplate:
        """Emits ComponentTemplate.Created. Raises Conflict when the id is taken."""
        self.organization(org_uid)
        template = ComponentTemplate.create(org_uid, template_id, name, name_pattern, actor.meta())
        try:
            reservation = self.claim(
                template_key(org_uid, template_id), str(template.id), org_uid, {}
            )
        except Conflict:
            raise Conflict(f"component template {template_id!r} already exists") from None
        self.commit(template, reservation)
        return template

    def template(self, org_uid: str, template_id: str) -> ComponentTemplate:
        owner = self.owner_of(template_key(org_uid, template_id))
        if owner is None:
            raise NotFound(f"component template {template_id!r} not found")
        return self.in_org(ComponentTemplate, org_uid, owner, "component template")

    def update_template(
        self,
        org_uid: str,
        template_id: str,
        actor: Actor,
        name: str | None = None,
        name_pattern: str | None = None,
    ) -> ComponentTemplate:
        template = self.template(org_uid, template_id)
        template.update(name, name_pattern, actor.meta())
        self.commit(template)
        return template

    def delete_template(self, org_uid: str, template_id: str, actor: Actor) -> None:
        """Emits ComponentTemplate.Deleted and frees the id (certificates keep the dangling id:
        registration then fails closed and is reported, it never invents a template)."""
        template = self.template(org_uid, template_id)
        template.delete(actor.meta())
        self.commit(template, self.release(template_key(org_uid, template_id), str(template.id)))

    def require_template(self, org_uid: str, template_id: str | None) -> None:
        if template_id is None:
            return
        try:
            self.template(org_uid, template_id)
        except NotFound:
            raise InvalidInput(f"component template {template_id!r} does not exist") from None

    def component(self, org_uid: str, component_id: str) -> Component | None:
        found = self.find(Component, component_uuid(org_uid, check_component_id(component_id)))
        return found if found is not None and found.org_uid == org_uid else None

    def register_on_feed(
        self, certificate_id: str, component_id: str, source_ip: str = "", request_id: str = ""
    ) -> str:
        """A device's first publish to {org}/feed/cid/{component}: register the component from
        the certificate's template (in its initial folder, created on demand) and pin the
        certificate to it when it has no pin. Actor = the certificate.

        Returns what happened: "exists", "registered", "pinned", "no-template", "template-missing".
        Emits Component.Registered, Folder.Created, Certificate.ComponentPinned.
        """
        return self.retrying(
            lambda: self._register_once(certificate_id, component_id, source_ip, request_id)
        )

    def _register_once(
        self, certificate_id: str, component_id: str, source_ip: str, request_id: str
    ) -> str:
        cert = self.get_typed(Certificate, certificate_id, "certificate")
        org_uid = cert.org_uid
        actor = Actor(ActorKind.CERTIFICATE, certificate_id, org_uid, request_id, source_ip)
        meta = actor.meta()
        to_save: list[Aggregate] = []
        outcome = "exists"
        if self.component(org_uid, component_id) is None:
            if cert.registration_template is None:
                return "no-template"
            try:
                template = self.template(org_uid, cert.registration_template)
            except NotFound:
                return "template-missing"
            folder = normalise_folder(cert.registration_folder or "/")
            to_save.append(
                Component(
                    org_uid=org_uid,
                    component_id=component_id,
                    name=template.component_name(component_id),
                    template_id=template.template_id,
                    folder=folder,
                    meta=meta,
                )
            )
            to_save.extend(self._ensure_folders(org_uid, folder, meta))
            outcome = "registered"
        if cert.pinned_component is None and not cert.deleted:
            cert.pin_component(component_id, meta)
            to_save.append(cert)
            outcome = "pinned" if outcome == "exists" else outcome
        if to_save:
            self.commit(*to_save)  # a concurrent first publish: ConcurrentChange, retried
        return outcome
