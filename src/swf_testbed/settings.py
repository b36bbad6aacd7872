"""The one settings object, fed by the environment.

Variable names are the ones the existing ePIC testbed uses, so its users'
environments carry over. Every program of the testbed reads its settings
through :func:`get_settings`; nothing else reads ``os.environ`` for them.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(StrEnum):
    """``SWF_PROFILE``: ``dev`` (the default, embedded and forgiving) or ``production``.

    In production every program refuses unsafe broker credentials, and the
    monitor also refuses DEBUG, a missing or short secret key and open hosts
    (see :meth:`Settings.production_problems`).
    """

    DEV = "dev"
    PRODUCTION = "production"


class ProductionConfigError(ValueError):
    """The production profile is on and the configuration is unsafe; ``problems`` names each issue."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("SWF_PROFILE=production refuses this configuration:\n  - " + "\n  - ".join(problems))


class DestinationStyle(StrEnum):
    """How destinations are spelled for the broker.

    ``prefixed``: ``/topic/NAME`` and ``/queue/NAME`` (ActiveMQ Classic, the
    embedded broker, RabbitMQ, Artemis with anycast/multicast prefixes set).
    ``artemis``: bare address ``NAME`` plus a ``destination-type`` header on
    SEND and a ``subscription-type`` header on SUBSCRIBE (plain Artemis).
    """

    PREFIXED = "prefixed"
    ARTEMIS = "artemis"


def default_home() -> Path:
    """Runtime directory: supervisord socket, logs, SQLite file."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "swf-testbed"


class BrokerSettings(BaseSettings):
    """Where and how to reach the STOMP broker (``ACTIVEMQ_*``)."""

    model_config = SettingsConfigDict(env_prefix="ACTIVEMQ_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(61613, ge=1, le=65535)
    user: str = ""
    password: str = Field("", repr=False)
    vhost: str = ""
    use_ssl: bool = False
    ssl_ca_certs: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    destination_style: DestinationStyle = DestinationStyle.PREFIXED
    heartbeat_ms: int = Field(10_000, ge=0, description="STOMP heart-beat, both directions; 0 = off")
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_initial_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)

    @field_validator("ssl_ca_certs", "ssl_cert_file", "ssl_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class MonitorSettings(BaseSettings):
    """How programs reach the monitor (``SWF_MONITOR_URL``, ``SWF_API_TOKEN``)."""

    model_config = SettingsConfigDict(env_prefix="SWF_", extra="ignore")

    monitor_url: str = "http://127.0.0.1:8002"
    api_token: str = Field("", repr=False)

    # --- the monitor service itself (web + ingest) -------------------------------------------
    secret_key: str = Field(
        "", repr=False, description="Django SECRET_KEY; empty = generated once and kept in SWF_HOME"
    )
    debug: bool = Field(False, description="Django DEBUG (never in production)")
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,[::1]", description="comma-separated host names the web serves"
    )
    csrf_trusted_origins: str = Field("", description="comma-separated origins, e.g. https://monitor.example.org")
    api_open_reads: bool = Field(True, description="anonymous GET on the API and UI; writes always need a login")
    sqlite_busy_timeout_s: float = Field(20.0, gt=0, description="SQLite busy timeout (web and ingest write together)")
    ingest_batch_size: int = Field(500, ge=1, le=10_000, description="messages per ingest transaction at most")
    ingest_flush_ms: int = Field(100, ge=1, le=10_000, description="longest wait before a partial batch is written")
    ingest_durable: bool = Field(True, description="durable topic subscriptions, so nothing is lost while it is down")


class Settings(BaseSettings):
    """All settings of one testbed program."""

    model_config = SettingsConfigDict(env_prefix="SWF_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    profile: Profile = Field(Profile.DEV, description="dev (default) or production (refuses unsafe settings)")
    database_url: str = Field("", validation_alias="DATABASE_URL")
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)


    def production_problems(self, *, monitor: bool = False) -> list[str]:
        """What the production profile refuses here (empty in the dev profile or when all is well).

        Every program: broker user or password empty, or admin/admin.
        ``monitor=True`` adds the monitor service's own: DEBUG on, no
        SWF_SECRET_KEY or one shorter than 32 characters, ALLOWED_HOSTS empty or ``*``.
        Messages never contain a secret's value.
        """
        if self.profile != Profile.PRODUCTION:
            return []
        problems: list[str] = []
        broker = self.broker
        if not broker.user or not broker.password:
            problems.append("ACTIVEMQ_USER and ACTIVEMQ_PASSWORD must both be set (empty broker credentials)")
        elif broker.user == "admin" and broker.password == "admin":
            problems.append("broker credentials admin/admin are the well-known default; set ACTIVEMQ_USER/PASSWORD")
        if monitor:
            mon = self.monitor
            if mon.debug:
                problems.append("SWF_DEBUG is on; DEBUG must be off in production")
            if not mon.secret_key:
                problems.append("SWF_SECRET_KEY is not set (a key generated into SWF_HOME is for dev only)")
            elif len(mon.secret_key) < MIN_SECRET_KEY_LENGTH:
                problems.append(f"SWF_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters")
            hosts = [h.strip() for h in mon.allowed_hosts.split(",") if h.strip()]
            if not hosts:
                problems.append("SWF_ALLOWED_HOSTS is empty; name the host names the monitor serves")
            elif "*" in hosts:
                problems.append("SWF_ALLOWED_HOSTS contains '*'; name the host names the monitor serves")
        return problems

    def check_production(self, *, monitor: bool = False) -> None:
        """Raise :class:`ProductionConfigError` naming every problem of :meth:`production_problems`."""
        problems = self.production_problems(monitor=monitor)
        if problems:
            raise ProductionConfigError(problems)


MIN_SECRET_KEY_LENGTH = 32


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    This is the single place the production checks common to every program run
    (every program reads its settings here): with ``SWF_PROFILE=production``
    unsafe broker credentials raise :class:`ProductionConfigError`.
    """
    settings = Settings()
    settings.check_production()
    return settings
