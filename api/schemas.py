"""Request and response bodies (<Verb><Noun>Request, <Noun>Public)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateOrganizationRequest(Strict):
    name: str = Field(min_length=1, max_length=200)


class OrganizationPublic(BaseModel):
    uid: str
    name: str


class CreateUserRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin"]


class UserPublic(BaseModel):
    user_id: str
    org_uid: str
    name: str
    role: str


class IssueKeyRequest(Strict):
    label: str = Field(default="api key", max_length=200)


class ApiKeyPublic(BaseModel):
    key_id: str
    api_key: str = Field(description="shown once; only its hash is stored")


class ImportCertificateRequest(Strict):
    pem: str = Field(description="one PEM certificate or a PEM bundle (chain)", max_length=1 << 20)
    name: str | None = Field(default=None, max_length=200)
    policy_id: str | None = None
    folder: str = "/"
    is_ca: bool | None = Field(default=None, description="override CA auto-detection")
    status: Literal["ACTIVE", "INACTIVE"] | None = None


class ImportedPublic(BaseModel):
    certificate_id: str
    fingerprint: str
    subject: str
    is_ca: bool
    created: bool


class ImportResultPublic(BaseModel):
    certificates: list[ImportedPublic]


class RegistrationBody(Strict):
    template_id: str | None = Field(default=None, max_length=64)
    initial_folder: str | None = None


class UpdateCertificateRequest(Strict):
    name: str | None = None
    status: Literal["ACTIVE", "INACTIVE"] | None = None
    is_ca: bool | None = None
    policy_id: str | None = None
    run_as_user: str | None = None
    registration: RegistrationBody | None = None
    pinned_host: str | None = Field(
        default=None, description="'' or null clears; next connect pins"
    )
    pinned_component: str | None = None
    folder: str | None = None


class CertificatePublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    certificate_id: str
    org_uid: str
    name: str
    subject: str
    issuer: str
    fingerprint: str
    status: str
    is_ca: bool
    version: int
    effective_status: dict[str, Any]


class CertificatePagePublic(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class PermissionSetBody(Strict):
    topics: list[str] = Field(min_length=1, max_length=100)
    actions: list[Literal["PUBLISH", "PUBLISH_RETAIN_MESSAGE", "SUBSCRIBE"]] = Field(min_length=1)


class CreatePolicyRequest(Strict):
    policy_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    permission_sets: list[PermissionSetBody] = Field(default_factory=list, max_length=100)


class UpdatePolicyRequest(Strict):
    name: str | None = Field(default=None, max_length=200)
    permission_sets: list[PermissionSetBody] | None = Field(default=None, max_length=100)


class PolicyPublic(BaseModel):
    policy_id: str
    name: str
    permission_sets: list[dict[str, list[str]]]
    version: int


class CreateFolderRequest(Strict):
    path: str = Field(min_length=1, max_length=2000)


class ExplainRequest(Strict):
    certificate_id: str | None = None
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    client_id: str = Field(default="explain", max_length=256)
    peer_ip: str | None = None
    action: Literal["CONNECT", "PUBLISH", "SUBSCRIBE", "RECEIVE"]
    topic: str | None = Field(default=None, max_length=65535)
    retain: bool = False


class DecisionPublic(BaseModel):
    allowed: bool
    reason: str
    detail: str
    certificate_id: str | None
    matched: dict[str, Any]


class CreateComponentTemplateRequest(Strict):
    template_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    name_pattern: str = Field(default="[component.id]", max_length=200)


class UpdateComponentTemplateRequest(Strict):
    name: str | None = Field(default=None, max_length=200)
    name_pattern: str | None = Field(default=None, max_length=200)


class ComponentTemplatePublic(BaseModel):
    template_id: str
    name: str
    name_pattern: str
    version: int
