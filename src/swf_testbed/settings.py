"""The one settings object, fed by the environment.

Variable names are the ones the existing ePIC testbed uses, so its users'
environments carry over. Every program of the testbed reads its settings
through :func:`get_settings`; nothing else reads ``os.environ`` for them.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import tzinfo
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal
from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from swf_testbed.errors import Problem, describe


class Profile(StrEnum):
    """``SWF_PROFILE``: ``dev`` (the default, embedded and forgiving) or ``production``.

    In production every program refuses unsafe broker credentials, and the
    monitor also refuses DEBUG, a missing or short secret key and open hosts
    (see :meth:`Settings.production_problems`).
    """

    DEV = "dev"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """The environment does not make valid settings; the message names each variable and what is
    wrong.
    """


class ProductionConfigError(SettingsError):
    """The production profile is on and the configuration is
    unsafe; ``problems`` names each issue.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "SWF_PROFILE=production refuses this configuration:\n  - " + "\n  - ".join(problems)
        )


class DestinationStyle(StrEnum):
    """How destinations are spelled for the broker.

    ``prefixed``: ``/topic/NAME`` and ``/queue/NAME`` (ActiveMQ Classic, the
    embedded broker, Artemis with anycast/multicast prefixes set).
    ``artemis``: bare address ``NAME`` plus a ``destination-type`` header on
    SEND and a ``subscription-type`` header on SUBSCRIBE (plain Artemis).
    ``rabbitmq``: RabbitMQ's STOMP plugin: ``/topic/`` and ``/queue/`` names,
    ``#`` for the trailing wildcard, ``prefetch-count``, durable subscriptions
    as named durable queues, virtual host ``/`` by default, and queues that the
    broker does not mirror (the sender copies them, see ``queue_mirror``).
    """

    PREFIXED = "prefixed"
    ARTEMIS = "artemis"
    RABBITMQ = "rabbitmq"


class QueueMirror(StrEnum):
    """Who copies each queue message to its mirror topic ``VirtualTopic.Mirror.<queue>``.

    ``broker``: the broker does (the embedded broker; ActiveMQ Classic with
    ``useMirroredQueues``). ``client``: the sender sends the copy itself, for
    brokers that have no mirrored queues (RabbitMQ). ``off``: nobody; the
    monitor then sees no queue traffic.
    """

    BROKER = "broker"
    CLIENT = "client"
    OFF = "off"


SECRET_VARIABLES = ("ACTIVEMQ_PASSWORD", "SWF_SECRET_KEY", "SWF_API_TOKEN", "DATABASE_URL")
"""Each can instead be given as ``<NAME>_FILE``: the path of a file holding it (see
:class:`SecretFiles`).
"""


class SecretFileError(SettingsError):
    """A ``<NAME>_FILE`` secret that cannot be used; the message names the variable and the file."""


def read_secret_file(variable: str, path: str) -> str:
    """The secret in ``path`` (surrounding whitespace stripped), refusing a file others can read or
    write.
    """
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        if mode & 0o077:
            raise SecretFileError(
                f"{variable}={path}: the file is open to group or others (mode "
                f"{mode & 0o777:03o}); `chmod 600 {path}` so that only its owner can read it"
            )
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"{variable}={path}: cannot read it: {exc.strerror}") from None


def secret_file_variables() -> dict[str, str]:
    """The ``<NAME>_FILE`` variables set in this environment, to hand on to child programs as they
    are.
    """
    return {
        f"{name}_FILE": os.environ[f"{name}_FILE"]
        for name in SECRET_VARIABLES
        if os.environ.get(f"{name}_FILE")
    }


def env_variable(model: type[BaseSettings], field_name: str) -> str:
    """The environment variable a settings field is read from: its alias, else the model's prefix +
    its name.
    """
    field = model.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        return alias.upper()
    return f"{model.model_config.get('env_prefix', '')}{field_name}".upper()


class SecretFiles(PydanticBaseSettingsSource):
    """Secrets from files: ``ACTIVEMQ_PASSWORD_FILE=/run/secrets/broker`` and the like.

    Keeps secrets out of the environment of every process (and of
    ``ps e``, supervisord's config, crash reports). Giving both ``NAME`` and
    ``NAME_FILE`` is an error, as is a file that group or others can read.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = env_variable(self.settings_cls, field_name)
        if variable not in SECRET_VARIABLES or not os.environ.get(f"{variable}_FILE"):
            return None, field_name, False
        if os.environ.get(variable):
            raise SecretFileError(f"both {variable} and {variable}_FILE are set; give one of them")
        return (
            read_secret_file(f"{variable}_FILE", os.environ[f"{variable}_FILE"]),
            field_name,
            False,
        )

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _key, _complex = self.get_field_value(field, name)
            if value is not None:  # keyed as the model reads its input: by alias where it has one
                values[
                    field.validation_alias if isinstance(field.validation_alias, str) else name
                ] = value
        return values


class _Settings(BaseSettings):
    """Environment variables first, then ``<NAME>_FILE`` secrets, then defaults."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, SecretFiles(settings_cls)


def default_home() -> Path:
    """Runtime directory: supervisord socket, logs, SQLite file."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "swf-testbed"


class BrokerSettings(_Settings):
    """Where and how to reach the STOMP broker (``ACTIVEMQ_*``)."""

    model_config = SettingsConfigDict(env_prefix="ACTIVEMQ_", extra="ignore")

    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(61613, ge=1, le=65535, description="broker STOMP port")
    user: str = Field("", description="STOMP login; required with SWF_PROFILE=production")
    password: str = Field(
        "", repr=False, description="STOMP passcode; required with SWF_PROFILE=production"
    )
    vhost: str = Field(
        "", description="STOMP `host` header (virtual host); empty = the broker host"
    )
    use_ssl: bool = Field(False, description="connect over TLS")
    ssl_ca_certs: Path | None = Field(
        None, description="CA bundle (PEM) to verify the broker; empty = the system's"
    )
    ssl_cert_file: Path | None = Field(
        None, description="client certificate (PEM), for brokers that require one"
    )
    ssl_key_file: Path | None = Field(
        None, description="the client certificate's private key (PEM)"
    )
    destination_style: DestinationStyle = Field(
        DestinationStyle.PREFIXED,
        description="prefixed: /topic/x and /queue/x (ActiveMQ Classic, the embedded broker); "
        "artemis: bare names with destination-type / subscription-type headers; "
        "rabbitmq: RabbitMQ's STOMP plugin (docs/interfaces.md)",
    )
    queue_mirror: QueueMirror | None = Field(
        None,
        description="who copies queue messages to VirtualTopic.Mirror.<queue> for the monitor: "
        "broker, client (the sender) or off; empty = client for the rabbitmq style, else broker",
        examples=["client"],
    )
    heartbeat_ms: int = Field(
        10_000, ge=0, description="STOMP heart-beat, both directions; 0 = off"
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="seconds to wait for CONNECTED (and receipts)"
    )
    reconnect_initial_s: float = Field(
        0.2, gt=0, description="first delay before reconnecting; doubles per try"
    )
    reconnect_max_s: float = Field(
        10.0, gt=0, description="longest delay between reconnection tries"
    )

    @field_validator("ssl_ca_certs", "ssl_cert_file", "ssl_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def mirror(self) -> QueueMirror:
        """``queue_mirror``, or the style's default when it is not set."""
        if self.queue_mirror is not None:
            return self.queue_mirror
        if self.destination_style is DestinationStyle.RABBITMQ:
            return QueueMirror.CLIENT
        return QueueMirror.BROKER

    @property
    def virtual_host(self) -> str:
        """The STOMP ``host`` header: ``vhost``, else ``/`` for RabbitMQ, else the broker host."""
        if self.vhost:
            return self.vhost
        return "/" if self.destination_style is DestinationStyle.RABBITMQ else self.host


class MonitorSettings(_Settings):
    """How programs reach the monitor (``SWF_MONITOR_URL``, ``SWF_API_TOKEN``)."""

    model_config = SettingsConfigDict(env_prefix="SWF_", extra="ignore")

    monitor_url: str = Field(
        "http://127.0.0.1:8002", description="base URL of the monitor, for programs that call it"
    )
    api_token: str = Field(
        "", repr=False, description="REST API token (`swf-testbed monitor token USER`) for writes"
    )

    # --- the monitor service itself (web + ingest) -------------------------------------------
    secret_key: str = Field(
        "", repr=False, description="Django SECRET_KEY; empty = generated once and kept in SWF_HOME"
    )
    debug: bool = Field(False, description="Django DEBUG (never in production)")
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,[::1]", description="comma-separated host names the web serves"
    )
    csrf_trusted_origins: str = Field(
        "", description="comma-separated origins, e.g. https://monitor.example.org"
    )
    secure_cookies: bool | None = Field(
        None,
        description="mark the session and CSRF cookies Secure (sent over HTTPS only); "
        "empty = on with SWF_PROFILE=production, off otherwise",
    )
    api_open_reads: bool = Field(
        True, description="anonymous GET on the API and UI; writes always need a login"
    )
    api_anonymous_logs: bool = Field(
        True,
        description="accept POST /api/logs/ without a token (agents that log without one) from the "
        "clients of SWF_API_ANONYMOUS_LOGS_FROM; false = never. No other write is ever anonymous",
    )
    api_anonymous_logs_from: str = Field(
        "",
        examples=["127.0.0.0/8,10.1.0.0/16"],
        description="comma-separated networks (e.g. 127.0.0.0/8,10.1.0.0/16) whose clients may "
        "post logs without a token; empty = loopback only (127.0.0.0/8, ::1), and nobody with "
        "SWF_PROFILE=production",
    )
    api_anonymous_logs_rate: str = Field(
        "20000/min",
        examples=["20/s"],
        description="anonymous log posts accepted per client address, as N/s, N/min or N/h; past "
        "it a 429 (counted on the Logs page). The default takes bursts of a busy v28 run (~40 "
        "records per STF) and bounds a flood to ~330 rows/s",
    )
    sqlite_busy_timeout_s: float = Field(
        20.0, gt=0, description="SQLite busy timeout (web and ingest write together)"
    )
    db_timeout_s: float = Field(
        30.0,
        gt=0,
        description="PostgreSQL: connect timeout; the longest the ingest waits on one database "
        "call before it drops the connection and retries; twice this, how long the server keeps a "
        "transaction left idle",
    )
    ingest_batch_size: int = Field(
        500, ge=1, le=10_000, description="messages per ingest transaction at most"
    )
    ingest_flush_ms: int = Field(
        5, ge=1, le=10_000, description="longest wait before a partial batch is written"
    )
    ingest_durable: bool = Field(
        True, description="durable topic subscriptions, so nothing is lost while it is down"
    )
    ingest_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the ingest serves its Prometheus metrics "
        "(batch commit time, lag) on this port; 0 = not at all",
    )
    ingest_metrics_host: str = Field(
        "127.0.0.1", description="address of the ingest's metrics port"
    )
    stream_poll_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="message stream: how often each web process "
        "looks for new messages (one query per process, whatever the number of clients)",
    )
    stream_heartbeat_s: float = Field(
        30.0, gt=0, description="message stream: a heartbeat event after this long idle"
    )
    stream_client_buffer: int = Field(
        1000,
        ge=1,
        description="message stream: events queued per client; "
        "a slower client loses the oldest and gets a 'dropped' event",
    )
    stream_replay_max: int = Field(
        1000,
        ge=0,
        description="message stream: most events replayed to a client "
        "reconnecting with Last-Event-ID",
    )

    @field_validator("api_anonymous_logs_from")
    @classmethod
    def _networks(cls, value: str) -> str:
        anonymous_log_networks(value)  # raises, naming the entry that is not a network
        return value

    @field_validator("api_anonymous_logs_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    def anonymous_log_networks(self, profile: Profile) -> list[str]:
        """The networks whose clients may post logs without a token (empty: nobody).

        The listed networks when given; else loopback, except in production,
        where a reverse proxy on the same host would make every client look local.
        """
        if not self.api_anonymous_logs:
            return []
        listed = anonymous_log_networks(self.api_anonymous_logs_from)
        if listed or profile == Profile.PRODUCTION:
            return [str(net) for net in listed]
        return list(LOOPBACK_NETWORKS)


LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")

_RATE_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


def anonymous_log_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``127.0.0.0/8,10.1.0.0/16`` as networks; a bare address is a one-address network."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                f"{part!r} is not a network or an address (e.g. 10.1.0.0/16 or 127.0.0.1)"
            ) from None
    return networks


def parse_rate(text: str) -> tuple[int, int]:
    """``300/s`` → (300, 1): requests allowed per window, and the window in seconds."""
    count, _, period = text.strip().partition("/")
    window = _RATE_PERIODS.get(period.strip().lower())
    if not count.strip().isdigit() or int(count) < 1 or window is None:
        raise ValueError(f"{text!r} is not a rate: write N/s, N/min or N/h with N ≥ 1 (e.g. 300/s)")
    return int(count), window


class Settings(_Settings):
    """All settings of one testbed program."""

    model_config = SettingsConfigDict(env_prefix="SWF_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="runtime directory: supervisord files and logs, SQLite database, secret key",
    )
    profile: Profile = Field(
        Profile.DEV, description="dev (default) or production (refuses unsafe settings)"
    )
    database_url: str = Field(
        "",
        validation_alias="DATABASE_URL",
        description="the monitor's database: sqlite:///path or postgres://user:pw@host:port/db; "
        "empty = SQLite in SWF_HOME",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    legacy_timezone: str = Field(
        "",
        description="time zone (IANA name, e.g. Europe/Berlin) in which naive timestamps of ePIC "
        "v28 agents are read; empty = this host's local zone",
        examples=["Europe/Berlin"],
    )
    agent_gone_after_s: float = Field(
        600.0,
        gt=0,
        description="an agent silent this long without having sent EXITED is shown as gone (ended: "
        "a run-once runner, a killed process), not down, and leaves the needs-attention list",
    )
    _legacy_zone: tzinfo = PrivateAttr()

    @field_validator("legacy_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r}; give an IANA name such as UTC or "
                    "America/New_York"
                ) from None
        return value

    def model_post_init(self, context: Any, /) -> None:
        # Resolved now: the monitor's Django later sets TZ=UTC in its own environment.
        self._legacy_zone = ZoneInfo(self.legacy_timezone) if self.legacy_timezone else host_zone()

    @property
    def legacy_zone(self) -> tzinfo:
        """The zone naive v28 timestamps are read in (``SWF_LEGACY_TIMEZONE``, else the host's)."""
        return self._legacy_zone

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
            problems.append(
                "ACTIVEMQ_USER and ACTIVEMQ_PASSWORD must both be set (empty broker credentials)"
            )
        elif broker.user == "admin" and broker.password == "admin":
            problems.append(
                "broker credentials admin/admin are the well-known default; set "
                "ACTIVEMQ_USER/PASSWORD"
            )
        if monitor:
            mon = self.monitor
            if mon.debug:
                problems.append("SWF_DEBUG is on; DEBUG must be off in production")
            if not mon.secret_key:
                problems.append(
                    "SWF_SECRET_KEY is not set (a key generated into SWF_HOME is for dev only)"
                )
            elif len(mon.secret_key) < MIN_SECRET_KEY_LENGTH:
                problems.append(
                    f"SWF_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters"
                )
            hosts = [h.strip() for h in mon.allowed_hosts.split(",") if h.strip()]
            if not hosts:
                problems.append(
                    "SWF_ALLOWED_HOSTS is empty; name the host names the monitor serves"
                )
            elif "*" in hosts:
                problems.append(
                    "SWF_ALLOWED_HOSTS contains '*'; name the host names the monitor serves"
                )
        return problems

    def check_production(self, *, monitor: bool = False) -> None:
        """Raise :class:`ProductionConfigError` naming every problem
        of :meth:`production_problems`.
        """
        problems = self.production_problems(monitor=monitor)
        if problems:
            raise ProductionConfigError(problems)


MIN_SECRET_KEY_LENGTH = 32


def host_zone() -> tzinfo:
    """This host's local time zone (``TZ``, else the system's setting), read now (tzlocal would
    cache it).
    """
    return tzlocal.reload_localzone()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    This is the single place the production checks common to every program run
    (every program reads its settings here): with ``SWF_PROFILE=production``
    unsafe broker credentials raise :class:`ProductionConfigError`.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None
    settings.check_production()
    return settings


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad variable, by its environment name; a secret's value is never repeated."""
    model = {cls.__name__: cls for cls in (BrokerSettings, MonitorSettings, Settings)}.get(
        exc.title, Settings
    )

    def word(problem: Problem) -> str:
        variable = env_variable(model, problem.loc[0] if problem.loc else "")
        shown = "" if variable in SECRET_VARIABLES else f" (got {problem.input!r})"
        return f"{variable}: {problem.msg}{shown}"

    return "invalid settings in the environment:\n  - " + describe(exc, word=word, sep="\n  - ")
