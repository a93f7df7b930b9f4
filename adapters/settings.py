"""Settings from the environment (CERTWARDEN_*), refusing unsafe combinations."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
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
    max_restore_bytes: int = Field(default=16 << 30, ge=1024)  # POST /api/v1/restore (to disk)
    projection_poll_seconds: float = 0.2
    backup_helper: bool = Field(
        default=True,
        description="hash-chain and gzip a backup's lines in a helper process beside the one"
        " reading the event log (the same file, ~1.6x the events/s on two cores)",
    )
    projection_helper: bool = Field(
        default=True,
        description="PostgreSQL: fill the audit trail in a helper process when every read model"
        " starts from zero over a long log (restore into a new store, rebuild, first start)",
    )

    roll_timeout_seconds: float = Field(
        default=86400, gt=0, description="a roll not retired within this raises a notification"
    )
    broker_enabled: bool = Field(default=True, description="serve starts Mosquitto + plugin")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 8883
    mqtt_hostnames: list[str] = Field(default_factory=lambda: ["localhost"])
    mosquitto_binary: str = "mosquitto"
    plugin_path: Path = Path("var/build/certwarden_plugin.so")

    # certificate operations: workers (dramatiq), scheduler, command publisher, SMTP
    ops_broker: Literal["stub", "redis"] = "stub"  # stub: in-process worker (embedded)
    redis_url: str = "redis://127.0.0.1:6379/0"
    ops_namespace: str = "certwarden"
    ops_queue: str = "certwarden-runs"
    ops_in_process_worker: bool = True  # with redis, set false and run `certwarden worker`
    ops_worker_threads: int = Field(default=2, ge=1, le=64)
    ops_time_limit_seconds: float = 3600.0
    ops_lease_seconds: float = Field(default=120.0, gt=0)
    ops_page_size: int = Field(default=1000, ge=1, le=10000)
    ops_ack_timeout_seconds: float = 30.0
    ops_sweep_seconds: float = 60.0
    scheduler_in_process: bool = True  # `certwarden serve` runs the scheduler thread
    scheduler_tick_seconds: float = 5.0
    ops_mqtt_host: str | None = None  # default: mqtt_host / mqtt_port, TLS, service identity
    ops_mqtt_port: int | None = None
    ops_mqtt_tls: bool = True
    ops_mqtt_ca_file: Path | None = None  # default <data_dir>/pki/server-ca.pem
    ops_mqtt_cert_file: Path | None = None  # default <data_dir>/pki/service.pem
    ops_mqtt_key_file: Path | None = None  # default <data_dir>/pki/service.key
    ops_mqtt_protocol: Literal["5", "3.1.1"] = "5"
    ops_mqtt_window: int = Field(default=100, ge=1, le=1000)
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_sender: str = "certwarden@localhost"
    smtp_timeout_seconds: float = 30.0
    smtp_ca_file: Path | None = None  # CA of the SMTP server's certificate (default: system)

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
