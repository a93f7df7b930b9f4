"""Domain errors: what went wrong, in the words an operator would use."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(DomainError):
    """The request is well-formed but its content breaks a rule (HTTP 422)."""


class BadCertificateInput(InvalidInput):
    """The certificate bytes cannot be accepted (not PEM/DER, key material, too big...)."""


class InvalidTopicPattern(InvalidInput):
    """A policy topic pattern is not a valid MQTT/GroveStreams topic filter."""


class NotFound(DomainError):
    """The entity does not exist (or is not visible to the caller)."""


class Conflict(DomainError):
    """The command conflicts with existing state (uniqueness, still in use)."""


class ConcurrentChange(Conflict):
    """Another writer saved the same entity first; the command may simply be retried."""


class PreconditionFailed(DomainError):
    """The caller's view of the entity is stale (If-Match did not match)."""


class Forbidden(DomainError):
    """The caller's role does not allow the command."""
