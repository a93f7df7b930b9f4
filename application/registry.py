"""Registry: the certwarden application (organizations, users, keys, certificates, policies,
folders, component templates and components)."""

from __future__ import annotations

from application.history import HistoryQueries
from application.operations import OperationCommands
from application.organizations import OrganizationCommands
from application.rolling import RollingCommands


class Registry(OperationCommands, RollingCommands, OrganizationCommands, HistoryQueries):
    """Commands mutate aggregates and save once; queries by id load aggregates.

    Persistence comes from the environment (eventsourcing): PERSISTENCE_MODULE
    eventsourcing.popo | eventsourcing.sqlite (SQLITE_DBNAME) | eventsourcing.postgres
    (POSTGRES_DBNAME, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD).
    """
