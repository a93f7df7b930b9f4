"""Settings from the environment (CERTWARDEN_*), refusing unsafe combinations."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded default: SQLite under ./var. Set CERTWARDEN_STORE=postgres for production."""

    model_config = SettingsConfigDict(env_prefix="CERTWARDEN_", env_file=".env", extra="ignore")

    store: Literal["sqlite", "postgres", "memory"] = "sqlite"
    data_dir: Path = Path("var")
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "certwarden"
    postgres_user: str = "postgres"
    postgres_password: str = ""
    postgres_schema: str = "public"
    postgres_lock_timeout: int = 5

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    projection_poll_seconds: float = 0.2

    broker_enabled: bool = Field(default=True, description="serve starts Mosquitto + plugin")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 8883
    mqtt_hostnames: list[str] = Field(default_factory=lambda: ["localhost"])
    mosquitto_binary: str = "mosquitto"
    plugin_path: Path = Path("var/build/certwarden_plugin.so")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.http_host not in ("127.0.0.1", "::1", "localhost") and self.store == "memory":
            raise ValueError("an in-memory store must not be exposed beyond loopback")
        return self

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "certwarden.sqlite"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def authz_socket(self) -> Path:
        return self.data_dir / "authz.sock"

    @property
    def views_path(self) -> Path:
        return self.data_dir / "views.sqlite"

    def eventsourcing_env(self) -> dict[str, str]:
        """Environment for the eventsourcing Application (persistence module and its options)."""
        if self.store == "memory":
            return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if self.store == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.sqlite_path),
                "SQLITE_LOCK_TIMEOUT": "10",
            }
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.postgres_db,
            "POSTGRES_HOST": self.postgres_host,
            "POSTGRES_PORT": str(self.postgres_port),
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password,
            "POSTGRES_SCHEMA": self.postgres_schema,
            "POSTGRES_LOCK_TIMEOUT": str(self.postgres_lock_timeout),
            "CREATE_TABLE": "true",
        }

    def postgres_conninfo(self) -> str:
        return (
            f"host={self.postgres_host} port={self.postgres_port} dbname={self.postgres_db} "
            f"user={self.postgres_user} password={self.postgres_password}"
        )
