"""Django settings of the monitor, all taken from :func:`swf_testbed.settings.get_settings`.

Environment (documented defaults in ``docs/monitor.md``):

* ``DATABASE_URL`` — ``sqlite:///path`` or ``postgres://user@host:port/db``;
  empty = SQLite at ``$SWF_HOME/monitor.sqlite3`` (WAL mode, busy timeout).
* ``SWF_SECRET_KEY`` — empty = a random key generated once into ``$SWF_HOME``.
* ``SWF_DEBUG``, ``SWF_ALLOWED_HOSTS``, ``SWF_CSRF_TRUSTED_ORIGINS``,
  ``SWF_API_OPEN_READS``, ``SWF_API_ANONYMOUS_LOGS`` (with ``_FROM`` and ``_RATE``),
  ``SWF_SQLITE_BUSY_TIMEOUT_S``,
  ``SWF_DB_TIMEOUT_S`` (PostgreSQL connect and idle-transaction timeouts).
* ``SWF_PROFILE=production`` — refuse to start (``ImproperlyConfigured``) on
  DEBUG, a missing or short ``SWF_SECRET_KEY``, empty or ``*`` hosts, unsafe
  broker credentials.
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from swf_testbed.settings import ProductionConfigError, Profile, Settings, get_settings


def _checked_settings() -> Settings:
    """The settings, refused (naming every problem at once) when the production profile finds them
    unsafe.
    """
    try:
        settings = get_settings()
    except ProductionConfigError:
        settings = (
            Settings()
        )  # unchecked, only to list the monitor's problems along with the broker's
    try:
        settings.check_production(monitor=True)
    except ProductionConfigError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return settings


_swf = _checked_settings()
_mon = _swf.monitor

BASE_DIR = Path(__file__).resolve().parent
HOME: Path = _swf.home


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _secret_key() -> str:
    if _mon.secret_key:
        return _mon.secret_key
    path = HOME / "monitor-secret-key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    HOME.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key)
    return key


def _database() -> dict[str, Any]:
    url = _swf.database_url
    if not url:
        HOME.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{HOME / 'monitor.sqlite3'}"
    db: dict[str, Any] = dict(dj_database_url.parse(url))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # The web and the ingest write side by side: WAL lets readers run during a
        # write, the busy timeout makes a writer wait for the other instead of
        # failing, and IMMEDIATE transactions take the write lock up front so a
        # transaction never fails half-way upgrading a read lock.
        # synchronous=NORMAL in WAL mode: a commit has written its pages to the
        # WAL file before it returns, without waiting for fsync. The ingest acks
        # only after its commit returns, so a crash of the ingest (or of any
        # process) after the ack loses nothing; only a crash of the operating
        # system or a power cut before the next WAL sync could drop the last
        # commits, messages already acked. That is the trade for not paying an
        # fsync per batch; use PostgreSQL where that case matters.
        db["OPTIONS"] = {
            "timeout": _mon.sqlite_busy_timeout_s,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA "
            "cache_size=-65536",
        }
        name = Path(db["NAME"])
        # The test database must be a file: the ingest under test is another process.
        db["TEST"] = {"NAME": str(name.with_name(name.stem + "-test.sqlite3"))}
    # Persistent connections, one per thread (the web's fixed pool, see asgi.py; the ingest's one):
    # a request does not open a connection and run its setup (SQLite's PRAGMAs) again. The health
    # check replaces a connection that broke (a database restarted) before a request uses it.
    db["CONN_MAX_AGE"] = 60
    db["CONN_HEALTH_CHECKS"] = True
    if "postgresql" in db["ENGINE"]:
        # A server that stops answering (frozen, or the connection half-open) must not
        # hang a program forever: connects are bounded, and the server ends a transaction
        # its client abandoned, whose locks would block the retry on a new connection.
        timeout_s = max(1, math.ceil(_mon.db_timeout_s))
        options = db.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", timeout_s)
        idle = f"-c idle_in_transaction_session_timeout={timeout_s * 2000}"
        options["options"] = f"{options['options']} {idle}" if options.get("options") else idle
    return db


SECRET_KEY = _secret_key()
DEBUG = _mon.debug
ALLOWED_HOSTS = _csv(_mon.allowed_hosts)
CSRF_TRUSTED_ORIGINS = _csv(_mon.csrf_trusted_origins)
# Secure cookies in production unless said otherwise: a session cookie must not travel in clear
# text.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = (
    _swf.profile == Profile.PRODUCTION if _mon.secure_cookies is None else _mon.secure_cookies
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "swf_testbed.monitor.api",
    "swf_testbed.monitor.front",
]
# Swagger UI / Redoc served from the package, never from a CDN (optional dependency).
HAS_SIDECAR = importlib.util.find_spec("drf_spectacular_sidecar") is not None
if HAS_SIDECAR:
    INSTALLED_APPS.append("drf_spectacular_sidecar")

MIDDLEWARE = [
    "swf_testbed.monitor.metrics.request_latency",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "swf_testbed.monitor.urls"
WSGI_APPLICATION = "swf_testbed.monitor.wsgi.application"
ASGI_APPLICATION = "swf_testbed.monitor.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "swf_testbed.monitor.front.views.site_context",
            ],
        },
    },
]

DATABASES = {"default": _database()}
# One web process (uvicorn): its memory holds the anonymous log posts' rate-limit windows and
# refusal count.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "swf-monitor",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "front:login"  # the monitor's own page (the admin has its own for staff)
LOGIN_REDIRECT_URL = "front:dashboard"
LOGOUT_REDIRECT_URL = "front:dashboard"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = None  # static files are served from the package by WhiteNoise
# Serve straight from the apps' static folders: no collectstatic step needed.
WHITENOISE_USE_FINDERS = True
# Files served at the site's root, without a redirect: favicon.ico (a vendored icon, no CDN).
WHITENOISE_ROOT = BASE_DIR / "front" / "root"
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "swf_testbed.monitor.api.permissions.ReadOpenWriteAuthenticated"
    ],
    "DEFAULT_PAGINATION_CLASS": "swf_testbed.monitor.api.pagination.OptionalLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "swf_testbed.monitor.api.filters.StrictOrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "swf_testbed.monitor.api.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "swf-testbed monitor API",
    "DESCRIPTION": "Every message of the streaming workflow testbed, and its bookkeeping.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # several models have a ``status`` field, each with its own choices: name each set
    "ENUM_NAME_OVERRIDES": {
        "AgentStatusEnum": "swf_testbed.monitor.api.models.AGENT_STATUS_CHOICES",
        "ExecutionStatusEnum": "swf_testbed.monitor.api.models.ExecutionStatus",
        "FileStatusEnum": "swf_testbed.monitor.api.models.FileStatus",
        "SliceStatusEnum": "swf_testbed.monitor.api.models.SliceStatus",
    },
}

SWF_API_OPEN_READS = _mon.api_open_reads
SWF_API_ANONYMOUS_LOGS = _mon.api_anonymous_logs
SWF_API_ANONYMOUS_LOGS_FROM: list[str] = _mon.anonymous_log_networks(_swf.profile)
"""Networks whose clients may ``POST /api/logs/`` without a token (see ``permissions.py``); empty =
nobody.
"""
SWF_API_ANONYMOUS_LOGS_RATE = _mon.api_anonymous_logs_rate
"""Anonymous log posts accepted per client address and window (``N/s``, ``N/min``, ``N/h``); past it
a 429.
"""
SWF_API_MAX_UNPAGED = 10_000
"""A list request without paging parameters returns at most this many rows (header X-Truncated)."""

# Logging is set up by the program that runs Django (the swf-testbed CLI); keep its handlers.
LOGGING = {"version": 1, "disable_existing_loggers": False}
