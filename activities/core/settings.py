"""The one settings class of shipflow, read from `SHIPFLOW_*` environment variables.

The worker, the API and the CLI all read it, so a value means the same thing everywhere.
Secrets are `SecretStr`: their repr is masked, so they cannot leak through logs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPFLOW_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False
    temporal_compression: Literal["auto", "gzip", "none"] = Field(
        "auto",
        description="gRPC compression to Temporal; auto: none to a loopback address (the"
        " embedded stack: gzip there costs worker CPU and saves nothing), gzip to any other",
    )
    task_queue: str = "shipflow"
    search_attributes: bool = Field(
        True, description="set ShipflowFlow/Stage/Commit search attributes (must be registered)"
    )
    ui_url: str = Field(
        "http://127.0.0.1:8233", description="Temporal Web UI base URL for deep links"
    )

    data_dir: Path = Path(".shipflow")
    database_url: SecretStr | None = Field(
        None, description="sqlmodel URL; default sqlite:///<data_dir>/shipflow.db"
    )

    api_url: str = "http://127.0.0.1:8000"
    api_token: SecretStr | None = None
    tokens: SecretStr | None = Field(
        None,
        description="JSON list of {name, role, sha256}: API tokens, hashed at rest",
    )
    open_dev_instance: bool = Field(
        False,
        description="serve the API with no tokens configured: everyone is an anonymous admin"
        " (a laptop only; without it an API with no tokens refuses to start)",
    )
    metrics_role: Literal["open", "viewer", "operator", "admin"] = Field(
        "open", description="the role /metrics needs (open: anyone, e.g. a scraper without a token)"
    )
    github_secret: SecretStr | None = None
    gitlab_token: SecretStr | None = None

    runtime_url: str = Field("http://127.0.0.1:7300", description="the local target's runtime")
    runtime_key: SecretStr | None = Field(
        None, description="the local runtime's key; default: read from runtime_key_file"
    )
    runtime_key_file: Path | None = Field(
        None, description="the runtime's key file; default <data_dir>/runtime/runtime.key"
    )
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"

    heartbeat_timeout_s: float = Field(
        20.0, description="how long a silent activity may run before its worker counts as lost"
    )
    workflow_sandbox: bool = Field(
        False,
        description="run the workflows in Temporal's Python sandbox (1.1-1.5x the worker CPU"
        " per step; the replay tests and the test suite always run them there)",
    )
    sticky_timeout_s: float = Field(
        10.0, description="how soon a run's next task may go to another worker if its own is gone"
    )
    worker_activity_slots: int = Field(
        32,
        ge=1,
        le=1024,
        description="how many regular activities (rollouts, jobs, backups) one worker runs at"
        " once; its local activities have slots and threads of their own",
    )
    worker_lost_retries: int = Field(
        10, description="how often a step is resumed after its worker was lost (not a retry)"
    )
    pending_grace_s: float = Field(
        60.0, description="how long a run may stay `pending` before the API reconciles it"
    )
    pending_reconcile_interval_s: float = Field(
        60.0, description="how often the API looks for runs left `pending` (also at its start)"
    )

    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines: JSON, readable text, or auto (text on a terminal only)"
    )
    worker_metrics_address: str | None = Field(
        None,
        description="host:port where the worker serves Prometheus metrics (release metrics and "
        "the Temporal SDK's own); unset: no endpoint",
    )

    payload_keys: SecretStr | None = Field(
        None,
        description="Temporal payload encryption keys, 'id:base64key,...' (32-byte keys); "
        "the first encrypts, every one decrypts (rotation)",
    )
    payload_key_file: Path | None = Field(
        None,
        description="file of 'id:base64key' lines; default <data_dir>/payload-keys if it exists",
    )
    groups_key_file: Path | None = Field(
        None,
        description="key file ('id:base64key' lines) sealing secret group values; default "
        "<data_dir>/groups-keys (the embedded stack generates it); the first key seals, all open",
    )
    codec_loopback_open: bool = Field(
        False,
        description="serve /codec/* without a token to loopback callers from the Web UI origin "
        "(the embedded stack, whose Web UI cannot send a shipflow token)",
    )

    def sqlalchemy_url(self) -> str:
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            # Accept the libpq-style URL users already have; sqlalchemy needs a driver.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'shipflow.db').resolve()}"


def secret_env_names() -> frozenset[str]:
    """The environment variables that carry shipflow's own secrets (every `SecretStr`
    setting: tokens, keys, the database URL): what a command a flow runs must not inherit."""
    prefix = Settings.model_config.get("env_prefix", "")
    return frozenset(
        f"{prefix}{name}".upper()
        for name, field in Settings.model_fields.items()
        if "SecretStr" in repr(field.annotation)
    )


def inherited_environ() -> dict[str, str]:
    """This process's environment less shipflow's own secrets: what a command a flow runs
    (a job, a local service's instance, an exec probe) starts from, so that it sees PATH,
    HOME, the locale and what the operator exported, but never the tool's tokens and keys."""
    hidden = secret_env_names()
    return {k: v for k, v in os.environ.items() if k not in hidden}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
