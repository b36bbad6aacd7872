"""Hostile input on the REST API and the UI: who may write what, CSRF on sessions, no SQL from
request text.

* The auth matrix covers every write endpoint (POST/PUT/PATCH/DELETE) that the
  URL conf routes to a DRF view, discovered the way the schema generator finds
  them: a new write endpoint fails :func:`test_every_write_endpoint_is_in_the_matrix`
  until its expectation is written down in :data:`EXPECTED`. Each endpoint is
  called with a valid request as anonymous, user A (on A's own objects), user
  B (on A's objects) and staff; refused calls must leave the database as it was.
* Policy (``permissions.py``): writes need a login; DELETE needs staff; records
  have no owner, so B may update what A's agents created (the agents of a
  testbed update each other's runs, files and slices); the one anonymous write,
  ``POST /api/logs/``, only from clients in ``SWF_API_ANONYMOUS_LOGS_FROM``
  (loopback by default; the test client's address is 127.0.0.1).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

T0 = "2026-03-01T12:00:00Z"
T1 = "2026-03-01T13:00:00Z"
WORLD_NS = "world-ns"
WORLD_RUN = 5000

# -------------------------------------------------------------------- the objects the matrix writes

_numbers = itertools.count(1)


@dataclass(frozen=True)
class Resource:
    """How to create one (as agents do), which field names it in its URL, and a valid partial
    update.
    """

    create: Callable[[int, dict[str, Any]], dict[str, Any]]
    key: str = ""
    patch: dict[str, Any] = field(default_factory=dict)


RESOURCES: dict[str, Resource] = {
    "/api/namespaces/": Resource(
        lambda n, w: {"name": f"ns-{n}", "owner": "alice", "description": "d"},
        "name",
        {"description": "changed"},
    ),
    "/api/systemagents/": Resource(
        lambda n, w: {"instance_name": f"agent-{n}", "namespace": WORLD_NS, "agent_type": "DATA"},
        "id",
        {"status": "WARNING"},
    ),
    "/api/subscribers/": Resource(
        lambda n, w: {"subscriber_name": f"sub-{n}", "fraction": 0.5, "description": "d"},
        "subscriber_id",
        {"is_active": False},
    ),
    "/api/logs/": Resource(
        lambda n, w: {
            "app_name": "agent",
            "instance_name": f"agent-{n}",
            "timestamp": T0,
            "level": 20,
            "levelname": "INFO",
            "message": f"log {n}",
        }
    ),
    "/api/runs/": Resource(
        lambda n, w: {"run_number": 10_000 + n, "start_time": T0, "namespace": WORLD_NS},
        "run_id",
        {"end_time": T1},
    ),
    "/api/stf-files/": Resource(
        lambda n, w: {
            "run": w["run_id"],
            "stf_filename": f"swf.{n:06d}.stf",
            "status": "registered",
        },
        "file_id",
        {"status": "processed"},
    ),
    "/api/fastmon-files/": Resource(
        lambda n, w: {
            "stf_file": w["file_id"],
            "tf_filename": f"swf.{n:06d}.tf",
            "status": "registered",
        },
        "tf_file_id",
        {"status": "processed"},
    ),
    "/api/tf-slices/": Resource(
        lambda n, w: {
            "slice_id": n,
            "tf_first": 0,
            "tf_last": 9,
            "tf_count": 10,
            "tf_filename": f"swf.{n:06d}.tf",
            "run_number": WORLD_RUN,
            "status": "queued",
        },
        "id",
        {"status": "completed"},
    ),
    "/api/workers/": Resource(
        lambda n, w: {
            "worker_id": f"worker-{n}",
            "run_number": WORLD_RUN,
            "status": "active",
            "started_at": T0,
        },
        "worker_id",
        {"slices_completed": 3},
    ),
    "/api/run-states/": Resource(
        lambda n, w: {"run_number": 20_000 + n, "phase": "running", "state": "run"},
        "run_number",
        {"target_worker_count": 3},  # the slice counters are counted, not written
    ),
    "/api/system-state-events/": Resource(
        lambda n, w: {
            "timestamp": T0,
            "run_number": WORLD_RUN,
            "event_type": "start_run",
            "state": "run",
            "event_data": {"n": n},
        }
    ),
    "/api/workflow-definitions/": Resource(
        lambda n, w: {"workflow_name": f"wf-{n}", "version": "1"}
    ),
    "/api/workflow-stages/": Resource(
        lambda n, w: {
            "agent_name": f"processing-agent-{n}",
            "agent_type": "processing",
            "status": "processing",
            "started_at": T0,
            "metadata": {"n": n},
        },
        "stage_id",
        {"status": "completed"},
    ),
    "/api/workflow-executions/": Resource(
        lambda n, w: {
            "execution_id": f"exec-{n}",
            "workflow_definition": w["definition_id"],
            "namespace": WORLD_NS,
            "status": "running",
            "start_time": T0,
        },
        "execution_id",
        {"status": "completed"},
    ),
}
"""Collections by list path. A detail path is the list path plus ``{…}/``."""

ACTIONS: dict[tuple[str, str], Callable[[int], dict[str, Any]]] = {
    ("POST", "/api/namespaces/ensure/"): lambda n: {"name": f"ensured-{n}", "owner": "alice"},
    ("POST", "/api/systemagents/heartbeat/"): lambda n: {
        "instance_name": f"hb-{n}",
        "namespace": WORLD_NS,
    },
    ("POST", "/api/run-states/{run_number}/"): lambda n: {
        "phase": "ended"
    },  # upsert of an existing state
    ("POST", "/api/state/next-run-number/"): lambda n: {},
    ("POST", "/api/state/next-agent-id/"): lambda n: {},
    ("POST", "/api/state/next-workflow-execution-id/"): lambda n: {"workflow_name": "wf"},
}

# ------------------------------------------------------------------------ the matrix's expectations

WRITE = "any authenticated user"
STAFF = "staff only"
LOGS = "any authenticated user; anyone from the networks of SWF_API_ANONYMOUS_LOGS_FROM"

EXPECTED: dict[tuple[str, str], str] = {
    ("POST", "/api/logs/"): LOGS,
    ("POST", "/api/namespaces/"): WRITE,
    ("POST", "/api/systemagents/"): WRITE,
    ("POST", "/api/subscribers/"): WRITE,
    ("POST", "/api/runs/"): WRITE,
    ("POST", "/api/stf-files/"): WRITE,
    ("POST", "/api/fastmon-files/"): WRITE,
    ("POST", "/api/tf-slices/"): WRITE,
    ("POST", "/api/workers/"): WRITE,
    ("POST", "/api/run-states/"): WRITE,
    ("POST", "/api/system-state-events/"): WRITE,
    ("POST", "/api/workflow-definitions/"): WRITE,
    ("POST", "/api/workflow-executions/"): WRITE,
    ("POST", "/api/workflow-stages/"): WRITE,
    ("POST", "/api/namespaces/ensure/"): WRITE,
    ("POST", "/api/systemagents/heartbeat/"): WRITE,
    ("POST", "/api/run-states/{run_number}/"): WRITE,
    ("POST", "/api/state/next-run-number/"): WRITE,
    ("POST", "/api/state/next-agent-id/"): WRITE,
    ("POST", "/api/state/next-workflow-execution-id/"): WRITE,
    ("PUT", "/api/namespaces/{name}/"): WRITE,
    ("PATCH", "/api/namespaces/{name}/"): WRITE,
    ("DELETE", "/api/namespaces/{name}/"): STAFF,
    ("PUT", "/api/systemagents/{id}/"): WRITE,
    ("PATCH", "/api/systemagents/{id}/"): WRITE,
    ("DELETE", "/api/systemagents/{id}/"): STAFF,
    ("PUT", "/api/subscribers/{subscriber_id}/"): WRITE,
    ("PATCH", "/api/subscribers/{subscriber_id}/"): WRITE,
    ("DELETE", "/api/subscribers/{subscriber_id}/"): STAFF,
    ("PUT", "/api/runs/{run_id}/"): WRITE,
    ("PATCH", "/api/runs/{run_id}/"): WRITE,
    ("DELETE", "/api/runs/{run_id}/"): STAFF,
    ("PUT", "/api/stf-files/{file_id}/"): WRITE,
    ("PATCH", "/api/stf-files/{file_id}/"): WRITE,
    ("DELETE", "/api/stf-files/{file_id}/"): STAFF,
    ("PUT", "/api/fastmon-files/{tf_file_id}/"): WRITE,
    ("PATCH", "/api/fastmon-files/{tf_file_id}/"): WRITE,
    ("DELETE", "/api/fastmon-files/{tf_file_id}/"): STAFF,
    ("PUT", "/api/tf-slices/{id}/"): WRITE,
    ("PATCH", "/api/tf-slices/{id}/"): WRITE,
    ("DELETE", "/api/tf-slices/{id}/"): STAFF,
    ("PUT", "/api/workers/{worker_id}/"): WRITE,
    ("PATCH", "/api/workers/{worker_id}/"): WRITE,
    ("DELETE", "/api/workers/{worker_id}/"): STAFF,
    ("PUT", "/api/run-states/{run_number}/"): WRITE,
    ("PATCH", "/api/run-states/{run_number}/"): WRITE,
    ("DELETE", "/api/run-states/{run_number}/"): STAFF,
    ("PUT", "/api/workflow-executions/{execution_id}/"): WRITE,
    ("PATCH", "/api/workflow-executions/{execution_id}/"): WRITE,
    ("DELETE", "/api/workflow-executions/{execution_id}/"): STAFF,
    ("PUT", "/api/workflow-stages/{stage_id}/"): WRITE,
    ("PATCH", "/api/workflow-stages/{stage_id}/"): WRITE,
    ("DELETE", "/api/workflow-stages/{stage_id}/"): STAFF,
}
"""Every write endpoint and who may call it (written out: a new endpoint needs a decision here)."""

# The schema generator names a primary-key lookup {pk}; the table above names the field.
_PK_NAMES = {
    "/api/systemagents/{id}/",
    "/api/subscribers/{subscriber_id}/",
    "/api/runs/{run_id}/",
    "/api/stf-files/{file_id}/",
    "/api/fastmon-files/{tf_file_id}/",
    "/api/tf-slices/{id}/",
    "/api/workers/{worker_id}/",
    "/api/workflow-executions/{execution_id}/",
    "/api/workflow-stages/{stage_id}/",
}


def _generator_path(path: str) -> str:
    return path.split("{", 1)[0] + "{pk}/" if path in _PK_NAMES else path


def discovered_write_endpoints() -> set[tuple[str, str]]:
    """(method, path) of every write the URL conf routes to a DRF view (viewsets, @api_view, custom
    routes).
    """
    from drf_spectacular.generators import EndpointEnumerator

    return {
        (method, path)
        for path, _regex, method, _view in EndpointEnumerator().get_api_endpoints()
        if method in ("POST", "PUT", "PATCH", "DELETE")
    }


def test_every_write_endpoint_is_in_the_matrix() -> None:
    discovered = discovered_write_endpoints()
    expected = {(method, _generator_path(path)) for method, path in EXPECTED}
    assert len(discovered) >= 45  # the enumeration itself works
    assert not discovered - expected, (
        f"write endpoints without an expectation in EXPECTED: {discovered - expected}"
    )
    assert not expected - discovered, (
        f"EXPECTED names endpoints that no longer exist: {expected - discovered}"
    )


# --------------------------------------------------------------- identities and a world to write in


def _client(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@dataclass
class World:
    clients: dict[str, APIClient]
    ids: dict[str, Any]

    def create_as_alice(self, list_path: str) -> tuple[str, dict[str, Any]]:
        """A new object created by user A; returns its detail URL
        and the payload that created it.
        """
        resource = RESOURCES[list_path]
        payload = resource.create(next(_numbers), self.ids)
        response = self.clients["alice"].post(list_path, payload, format="json")
        assert response.status_code == 201, (list_path, response.content)
        return f"{list_path}{response.json()[resource.key]}/", payload


def _snapshot() -> dict[str, int]:
    """Row counts of every table of the monitor and of the tokens (what a refused write must not
    change).
    """
    from django.apps import apps

    models = [
        *apps.get_app_config("monitor").get_models(),
        *apps.get_app_config("authtoken").get_models(),
    ]
    return {model.__name__: model.objects.count() for model in models}


@pytest.fixture
def world(db: None) -> World:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    tokens = {}
    for name, staff in (("alice", False), ("bob", False), ("root", True)):
        user = User.objects.create_user(
            name, is_staff=staff
        )  # token users: no password (no slow hashing)
        tokens[name] = Token.objects.create(user=user).key
    clients = {"anonymous": _client(), **{name: _client(token) for name, token in tokens.items()}}
    alice = clients["alice"]

    def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = alice.post(path, payload, format="json")
        assert response.status_code in (200, 201), (path, response.content)
        return response.json()

    post("/api/namespaces/ensure/", {"name": WORLD_NS, "owner": "alice"})
    definition = post("/api/workflow-definitions/", {"workflow_name": "world", "version": "1"})
    run = post("/api/runs/", {"run_number": WORLD_RUN, "start_time": T0, "namespace": WORLD_NS})
    stf = post(
        "/api/stf-files/",
        {"run": run["run_id"], "stf_filename": "world.stf", "status": "registered"},
    )
    return World(
        clients,
        {"definition_id": definition["id"], "run_id": run["run_id"], "file_id": stf["file_id"]},
    )


def _call(world: World, who: str, method: str, path: str) -> tuple[Any, str]:
    """Make the valid request for (method, path) as ``who``; returns the response and the URL
    called.
    """
    n = next(_numbers)
    if "{" in path:
        list_path = path.split("{", 1)[0]
        url, created_with = world.create_as_alice(list_path)
        if method == "PUT":
            payload: dict[str, Any] | None = created_with
        elif method == "PATCH":
            payload = RESOURCES[list_path].patch
        elif method == "POST":
            payload = ACTIONS[(method, path)](n)
        else:
            payload = None
    else:
        url = path
        payload = (
            ACTIONS[(method, path)](n)
            if (method, path) in ACTIONS
            else RESOURCES[path].create(n, world.ids)
        )
    client = world.clients[who]
    response = (
        getattr(client, method.lower())(url, payload, format="json")
        if payload is not None
        else getattr(client, method.lower())(url)
    )
    return response, url


def _allowed(policy: str, who: str) -> bool:
    """The expectation of the matrix with the default settings (anonymous logs from loopback, the
    client's address).
    """
    if who == "anonymous":
        return policy == LOGS
    return who == "root" if policy == STAFF else True


@pytest.mark.parametrize("who", ["anonymous", "alice", "bob", "root"])
@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED))
@pytest.mark.slow
def test_auth_matrix(world: World, who: str, method: str, path: str) -> None:
    """alice writes on her own objects, bob on alice's; a refusal (401/403) changes nothing."""
    before = _snapshot()
    staff = world.clients["root"]
    response, url = _call(world, who, method, path)
    if _allowed(EXPECTED[(method, path)], who):
        assert 200 <= response.status_code < 300, (
            who,
            method,
            url,
            response.status_code,
            response.content,
        )
        if method == "DELETE":
            assert staff.get(url).status_code == 404
        elif method == "PATCH":
            body = response.json()
            patch = RESOURCES[path.split("{", 1)[0]].patch
            assert all(str(body[k]).startswith(str(v)) for k, v in patch.items()), body
        return
    expected = 401 if who == "anonymous" else 403
    assert response.status_code == expected, (
        who,
        method,
        url,
        response.status_code,
        response.content,
    )
    after = _snapshot()
    # nothing changed but the target that alice created for the call (detail paths)
    created = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert sum(created.values()) == (1 if "{" in path else 0), created
    if "{" in path:
        target = staff.get(url)
        assert target.status_code == 200  # not deleted
        if method == "PATCH":
            patch = RESOURCES[path.split("{", 1)[0]].patch
            assert all(target.json()[k] != v for k, v in patch.items()), target.json()


OUTSIDE = "192.0.2.7"
"""An address in no network of the defaults (TEST-NET-1)."""


def test_anonymous_logs_only_from_allowed_networks(world: World) -> None:
    """Default: from loopback recorded, from elsewhere a 401; off: a 401 from anywhere; nothing else
    opens.
    """
    anon = world.clients["anonymous"]
    from swf_testbed.monitor.api import models as m

    payload = RESOURCES["/api/logs/"].create(1, world.ids)
    refused = anon.post("/api/logs/", payload, format="json", REMOTE_ADDR=OUTSIDE)
    assert refused.status_code == 401, refused.content
    assert not m.AppLog.objects.exists()
    for local in ("127.0.0.1", "127.0.0.2", "::1"):
        created = anon.post("/api/logs/", payload, format="json", REMOTE_ADDR=local)
        assert created.status_code == 201, (local, created.content)
    assert m.AppLog.objects.count() == 3
    log_id = created.json()["id"]
    # still read-only and still the only anonymous write, also from loopback
    for method in ("put", "patch", "delete"):
        assert getattr(anon, method)(
            f"/api/logs/{log_id}/", payload, format="json"
        ).status_code in (401, 405)
    for (method, path), policy in EXPECTED.items():
        if policy == LOGS:
            continue
        response, url = _call(world, "anonymous", method, path)
        assert response.status_code == 401, (method, url, response.status_code)
    # bad input from an allowed client is still a 400
    assert anon.post("/api/logs/", {**payload, "level": "loud"}, format="json").status_code == 400
    with override_settings(SWF_API_ANONYMOUS_LOGS_FROM=["10.1.0.0/16"]):
        assert (
            anon.post("/api/logs/", payload, format="json", REMOTE_ADDR="10.1.200.3").status_code
            == 201
        )
        assert (
            anon.post("/api/logs/", payload, format="json", REMOTE_ADDR="10.2.0.1").status_code
            == 401
        )
        assert (
            anon.post("/api/logs/", payload, format="json").status_code == 401
        )  # loopback is not listed
    with override_settings(SWF_API_ANONYMOUS_LOGS=False):
        assert anon.post("/api/logs/", payload, format="json").status_code == 401
    assert m.AppLog.objects.count() == 4


def test_anonymous_log_networks_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default loopback; a list replaces it; production takes the list explicitly; a bad entry is
    named.
    """
    from swf_testbed.settings import MonitorSettings, Profile, SettingsError, get_settings

    for name in ("SWF_API_ANONYMOUS_LOGS", "SWF_API_ANONYMOUS_LOGS_FROM"):
        monkeypatch.delenv(name, raising=False)
    assert MonitorSettings().api_anonymous_logs is True
    assert MonitorSettings().anonymous_log_networks(Profile.DEV) == ["127.0.0.0/8", "::1/128"]
    assert MonitorSettings().anonymous_log_networks(Profile.PRODUCTION) == []
    monkeypatch.setenv("SWF_API_ANONYMOUS_LOGS_FROM", "127.0.0.1, 10.1.0.0/16")
    for profile in Profile:
        assert MonitorSettings().anonymous_log_networks(profile) == ["127.0.0.1/32", "10.1.0.0/16"]
    monkeypatch.setenv("SWF_API_ANONYMOUS_LOGS", "false")
    assert MonitorSettings().anonymous_log_networks(Profile.DEV) == []
    monkeypatch.setenv("SWF_API_ANONYMOUS_LOGS_FROM", "10.1.0.0/16,intranet")
    get_settings.cache_clear()
    try:
        with pytest.raises(
            SettingsError, match=r"SWF_API_ANONYMOUS_LOGS_FROM.*'intranet' is not a network"
        ):
            get_settings()
        monkeypatch.setenv("SWF_API_ANONYMOUS_LOGS_FROM", "")
        monkeypatch.setenv("SWF_API_ANONYMOUS_LOGS_RATE", "fast")
        with pytest.raises(
            SettingsError, match=r"SWF_API_ANONYMOUS_LOGS_RATE.*'fast' is not a rate"
        ):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_a_bad_token_is_refused_even_where_anonymous_logs_are_open(world: World) -> None:
    """A wrong token is an error, not a fall-back to anonymous (the client is on loopback)."""
    client = _client("0" * 40)
    payload = RESOURCES["/api/logs/"].create(2, world.ids)
    assert client.post("/api/logs/", payload, format="json").status_code == 401
    assert client.get("/api/logs/").status_code == 401


def test_reads_closed_means_closed_for_anonymous_only(world: World) -> None:
    with override_settings(SWF_API_OPEN_READS=False):
        assert world.clients["anonymous"].get("/api/runs/").status_code == 401
        assert world.clients["bob"].get("/api/runs/").status_code == 200
        ui = Client()
        assert ui.get("/runs/").status_code == 302  # to the login page


# --------------------------------------------------------------------------- CSRF on session writes


def _session(username: str, staff: bool = False) -> Client:
    """A browser-like client that enforces CSRF, with a session of a new user.

    Staff log in through the admin's login form (the way people get a session;
    the form itself needs the CSRF token); other users get their session directly.
    """
    from django.contrib.auth.models import User

    client = Client(enforce_csrf_checks=True)
    if not staff:
        client.force_login(User.objects.create_user(username))
        return client
    User.objects.create_user(username, password="session-pass-123", is_staff=True)
    token = client.get("/admin/login/").cookies["csrftoken"].value
    form = {"username": username, "password": "session-pass-123", "next": "/"}
    refused = client.post("/admin/login/", form)
    assert refused.status_code == 403 and "_auth_user_id" not in client.session
    logged_in = client.post("/admin/login/", {**form, "csrfmiddlewaretoken": token})
    assert logged_in.status_code == 302, logged_in.content[:500]
    return client


def _csrf(client: Client) -> str:
    client.get("/admin/login/")  # (re)sets the cookie
    return client.cookies["csrftoken"].value


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("post", "/api/state/next-agent-id/", {}),
        ("post", "/api/namespaces/ensure/", {"name": "csrf-ns", "owner": "carol"}),
        ("post", "/api/systemagents/heartbeat/", {"instance_name": "csrf-agent"}),
        (
            "post",
            "/api/logs/",
            {
                "app_name": "a",
                "instance_name": "i",
                "timestamp": T0,
                "level": 20,
                "levelname": "INFO",
                "message": "m",
            },
        ),
    ],
)
def test_session_api_writes_need_the_csrf_token(
    method: str, path: str, payload: dict[str, Any]
) -> None:
    client = _session("carol")
    before = _snapshot()
    refused = getattr(client, method)(path, payload, content_type="application/json")
    assert refused.status_code == 403, refused.content
    assert "csrf" in refused.content.decode().lower()
    assert _snapshot() == before
    accepted = getattr(client, method)(
        path, payload, content_type="application/json", HTTP_X_CSRFTOKEN=_csrf(client)
    )
    assert accepted.status_code in (200, 201), accepted.content


def test_session_patch_and_delete_need_the_csrf_token() -> None:
    from swf_testbed.monitor.api import models as m

    client = _session("dave", staff=True)
    token = _csrf(client)
    created = client.post(
        "/api/runs/",
        {"run_number": 77, "start_time": T0},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert created.status_code == 201, created.content
    url = f"/api/runs/{created.json()['run_id']}/"
    assert client.patch(url, {"end_time": T1}, content_type="application/json").status_code == 403
    assert m.Run.objects.get().end_time is None
    assert client.delete(url).status_code == 403
    assert m.Run.objects.exists()
    assert (
        client.patch(
            url, {"end_time": T1}, content_type="application/json", HTTP_X_CSRFTOKEN=token
        ).status_code
        == 200
    )
    assert client.delete(url, HTTP_X_CSRFTOKEN=token).status_code == 204
    assert not m.Run.objects.exists()


def test_token_writes_need_no_csrf_token(world: World) -> None:
    """Agents authenticate with a token header: no cookie, so no CSRF check (and no CSRF risk)."""
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {_token_of('alice')}")
    assert client.post("/api/state/next-agent-id/", {}, format="json").status_code == 200


def _token_of(username: str) -> str:
    from rest_framework.authtoken.models import Token

    return str(Token.objects.get(user__username=username).key)


def test_admin_form_posts_need_the_csrf_token() -> None:
    """The UI's only forms that write are the admin's (the monitor's own pages only GET)."""
    from django.contrib.auth.models import Permission, User

    from swf_testbed.monitor.api import models as m

    client = _session("erin", staff=True)
    erin = User.objects.get(username="erin")
    erin.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_namespace", "view_namespace"])
    )
    form = {"name": "admin-ns", "owner": "erin", "description": ""}
    refused = client.post("/admin/monitor/namespace/add/", form)
    assert refused.status_code == 403 and not m.Namespace.objects.filter(name="admin-ns").exists()
    accepted = client.post(
        "/admin/monitor/namespace/add/", {**form, "csrfmiddlewaretoken": _csrf(client)}
    )
    assert accepted.status_code == 302, accepted.content[:2000]
    assert m.Namespace.objects.filter(name="admin-ns").exists()
    # logging out is a POST too
    assert client.post("/admin/logout/").status_code == 403


def test_ui_pages_refuse_a_post_without_the_csrf_token() -> None:
    client = _session("frank")
    for path in ("/", "/messages/", "/agents/", "/logs/"):
        assert client.post(path, {"x": "1"}).status_code == 403, path


def test_every_template_form_that_writes_carries_the_csrf_token() -> None:
    """A form or htmx call that POSTs from the monitor's templates must include {% csrf_token %} /
    the header.
    """
    import re

    import swf_testbed.monitor as monitor

    templates = list(Path(monitor.__file__).parent.rglob("templates/**/*.html"))
    assert templates
    for template in templates:
        text = template.read_text()
        for form in re.findall(r"<form\b[^>]*>.*?</form>", text, flags=re.S | re.I):
            method = re.search(r"method\s*=\s*[\"']?(\w+)", form, flags=re.I)
            if method and method.group(1).lower() != "get":
                assert "{% csrf_token %}" in form, (
                    f"{template.name}: a {method.group(1)} form without csrf_token"
                )
        if re.search(r"hx-(post|put|patch|delete)\s*=", text, flags=re.I):
            assert "X-CSRFToken" in text or "csrf" in text.lower(), (
                f"{template.name}: htmx write without CSRF"
            )


# ------------------------------------------------------------------- no SQL built from request text

SRC = Path(__import__("swf_testbed").__file__).parent

RAW_SQL_ALLOWED: dict[tuple[str, str, str], str] = {
    (
        "monitor/api/management/commands/prune_messages.py",
        "_delete_messages",
        "execute",
    ): "f-string of the quoted table and column names (model metadata) and %s placeholders; the "
    "ids are bound",
    (
        "monitor/api/fastinsert.py",
        "insert_rows",
        "executemany",
    ): "INSERT built by insert_sql() from model metadata (quote_name) and %s placeholders; values "
    "are bound",
    (
        "monitor/api/fastinsert.py",
        "update_rows",
        "executemany",
    ): "UPDATE built by update_sql() from model metadata (quote_name) and %s placeholders; values "
    "are bound",
    (
        "monitor/api/ingest.py",
        "end_abandoned",
        "execute",
    ): "constant SELECT pg_terminate_backend over pg_stat_activity; the pids (from the driver) are "
    "bound",
    (
        "monitor/db.py",
        "_migration_lock",
        "execute",
    ): "constant 'SELECT pg_advisory_lock/unlock(%s)' with a bound constant key",
    (
        "testing/databases.py",
        "create_postgres_database",
        "execute",
    ): "psycopg sql.SQL + sql.Identifier (quoted) for a generated database name; test/benchmark "
    "helper",
    (
        "testing/databases.py",
        "drop",
        "execute",
    ): "psycopg sql.SQL + sql.Identifier (quoted) for a generated database name; test/benchmark "
    "helper",
}
"""Every place that hands SQL text to the database, reviewed. Key: (file, enclosing function, call).
"""

_SQL_CALLS = {"raw", "extra", "execute", "executemany", "executescript"}


def _sql_calls() -> list[tuple[tuple[str, str, str], ast.Call]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(SRC).as_posix()

        def visit(node: ast.AST, function: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                name = function
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = child.name
                if isinstance(child, ast.Call):
                    func = child.func
                    called = (
                        func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    )
                    if called in _SQL_CALLS or called == "RawSQL":
                        found.append(((rel, function, called), child))
                visit(child, name)

        visit(tree, "<module>")
        if "RawSQL" in path.read_text():
            found.append(
                (
                    (rel, "<module>", "RawSQL import"),
                    ast.Call(func=ast.Name("RawSQL"), args=[], keywords=[]),
                )
            )
    return found


def _composed(node: ast.AST) -> bool:
    """SQL text built at run time: an f-string, ``%`` / ``+`` formatting, or ``.format()``."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and not (
            isinstance(node.func.value, ast.Call)
            and getattr(node.func.value.func, "attr", "") == "SQL"
        )
    )


def test_no_sql_text_outside_the_reviewed_places() -> None:
    calls = _sql_calls()
    keys = {key for key, _ in calls}
    unreviewed = sorted(key for key in keys if key not in RAW_SQL_ALLOWED)
    assert not unreviewed, (
        f"SQL handed to the database outside the reviewed list (use the ORM, or review it): "
        f"{unreviewed}"
    )
    stale = sorted(set(RAW_SQL_ALLOWED) - keys)
    assert not stale, f"reviewed entries that no longer exist (remove them): {stale}"


def test_composed_sql_is_only_where_reviewed_as_composed() -> None:
    """A reviewed place that starts building its SQL from values must say so in its reason."""
    for key, call in _sql_calls():
        if call.args and _composed(call.args[0]):
            assert "f-string" in RAW_SQL_ALLOWED[key] or "quote" in RAW_SQL_ALLOWED[key], key
        if key[2] in ("raw", "extra", "RawSQL"):
            pytest.fail(f"{key}: .raw()/.extra()/RawSQL — use the ORM")


def test_the_sql_scanner_finds_what_it_should(tmp_path: Path) -> None:
    """The scanner's own check: it sees every form of raw SQL, and the composed ones as composed."""
    code = (
        "def view(request, cursor, qs):\n"
        "    cursor.execute(f\"SELECT * FROM t WHERE a = '{request.GET['a']}'\")\n"
        "    cursor.execute('SELECT %s' % request.GET['b'])\n"
        "    cursor.execute('SELECT ' + request.GET['c'])\n"
        "    cursor.execute('SELECT {}'.format(request.GET['d']))\n"
        "    cursor.execute('SELECT 1 WHERE a = %s', [request.GET['e']])\n"
        "    qs.raw('SELECT 1')\n"
        "    qs.extra(where=['1=1'])\n"
        "    RawSQL('1', [])\n"
    )
    tree = ast.parse(code)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            getattr(node.func, "attr", "") in _SQL_CALLS or getattr(node.func, "id", "") == "RawSQL"
        )
    ]
    assert len(calls) == 8
    assert [_composed(c.args[0]) for c in calls[:5]] == [True, True, True, True, False]


# --------------------------------------------------------------- SQL-looking values in every filter

INJECTIONS = [
    "' OR 1=1 --",
    "1; DROP TABLE monitor_run; --",
    "1' UNION SELECT username, password FROM auth_user --",
    '" OR ""="',
    "%",
    "_",
    "\\",
    "1 OR 1=1",
    "') OR ('1'='1",
    "*/ SELECT 1 /*",
    "a\x00b",
]


def seed_everything(
    api: APIClient, record: Callable[..., Any], make_message: Callable[..., bytes]
) -> None:
    """One row in every table, created as the agents create them
    (REST calls and recorded messages).
    """

    def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = api.post(path, payload, format="json")
        assert response.status_code in (200, 201), (path, response.content)
        return response.json()

    post("/api/namespaces/ensure/", {"name": "seed-ns", "owner": "staff"})
    post(
        "/api/systemagents/heartbeat/",
        {
            "instance_name": "seed-agent",
            "namespace": "seed-ns",
            "agent_type": "DATA",
            "status": "OK",
            "counters": {"stf": 1},
        },
    )
    definition = post(
        "/api/workflow-definitions/",
        {
            "workflow_name": "seed_wf",
            "version": "1",
            "definition": "def workflow(env): ...",
            "parameter_values": {"stf_count": 1},
        },
    )
    post(
        "/api/workflow-executions/",
        {
            "execution_id": "seed-exec-1",
            "workflow_definition": definition["id"],
            "namespace": "seed-ns",
            "status": "running",
            "start_time": T0,
        },
    )
    run = post(
        "/api/runs/",
        {"run_number": 4242, "namespace": "seed-ns", "execution": "seed-exec-1", "start_time": T0},
    )
    stf = post(
        "/api/stf-files/",
        {
            "run": run["run_id"],
            "stf_filename": "swf.004242.000001.stf",
            "status": "registered",
            "metadata": {"sequence": 1},
        },
    )
    post(
        "/api/fastmon-files/",
        {
            "stf_file": stf["file_id"],
            "tf_filename": "swf.004242.000001.tf.0001",
            "status": "registered",
        },
    )
    post(
        "/api/tf-slices/",
        {
            "slice_id": 1,
            "tf_first": 0,
            "tf_last": 9,
            "tf_count": 10,
            "tf_filename": "swf.004242.000001.tf.0001",
            "stf_filename": "swf.004242.000001.stf",
            "run_number": 4242,
            "status": "queued",
        },
    )
    post(
        "/api/workers/",
        {"worker_id": "seed-worker", "run_number": 4242, "status": "active", "started_at": T0},
    )
    post("/api/run-states/4242/", {"phase": "running", "state": "run", "substate": "physics"})
    post(
        "/api/system-state-events/",
        {
            "timestamp": T0,
            "run_number": 4242,
            "event_type": "start_run",
            "state": "run",
            "event_data": {"by": "daq"},
        },
    )
    post("/api/subscribers/", {"subscriber_name": "seed-sub", "fraction": 0.5})
    post(
        "/api/workflow-stages/",
        {
            "agent_name": "seed-agent",
            "agent_type": "processing",
            "status": "processing",
            "run_number": 4242,
            "stf_filename": "swf.004242.000001.stf",
            "started_at": T0,
        },
    )
    post(
        "/api/logs/",
        {
            "app_name": "seed",
            "instance_name": "seed-agent",
            "timestamp": T0,
            "level": 20,
            "levelname": "INFO",
            "message": "seeded",
        },
    )
    record(
        make_message("workflow_started", execution_id="seed-exec-1", workflow_name="seed_wf"),
        make_message("heartbeat"),
    )


def _list_filters() -> dict[str, list[dict[str, Any]]]:
    """Query parameters of every list operation of the schema (what clients may filter on)."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        path: ops["get"].get("parameters", [])
        for path, ops in schema["paths"].items()
        if "get" in ops and "{" not in path and ops["get"].get("parameters")
    }


@pytest.mark.slow
def test_sql_looking_values_in_every_filter_are_plain_values(
    api: APIClient, record: Any, make_message: Any
) -> None:
    seed_everything(api, record, make_message)
    before = _snapshot()
    assert all(
        before[name]
        for name in ("Namespace", "Run", "StfFile", "WorkflowMessage", "AppLog", "SystemAgent")
    )
    lists = _list_filters()
    assert len(lists) >= 12
    tried = 0
    for path, parameters in lists.items():
        for parameter in parameters:
            name, kind = parameter["name"], parameter.get("schema", {})
            for value in INJECTIONS:
                response = api.get(path, {name: value})
                tried += 1
                assert response.status_code in (200, 400), (path, name, value, response.status_code)
                plain_text = (
                    kind.get("type") == "string" and "enum" not in kind and "format" not in kind
                )
                if response.status_code == 200 and plain_text and name != "ordering":
                    # no row has this value: a filter that matched anything was not a plain
                    # comparison
                    assert response.json() == [], (path, name, value, response.json()[:2])
    assert _snapshot() == before
    assert tried > 500


@pytest.mark.parametrize(
    "page",
    [
        "/messages/",
        "/agents/",
        "/executions/",
        "/runs/",
        "/stf-files/",
        "/samples/",
        "/slices/",
        "/logs/",
    ],
)
@pytest.mark.slow
def test_sql_looking_values_in_ui_filters(
    page: str, api: APIClient, record: Any, make_message: Any
) -> None:
    seed_everything(api, record, make_message)
    before = _snapshot()
    client = Client()
    for name in (
        "namespace",
        "execution_id",
        "msg_type",
        "sender",
        "status",
        "run_number",
        "run_id",
        "app_name",
        "levelname",
        "liveness",
        "sort",
        "page",
        "stf_filename",
        "tf_filename",
    ):
        for value in INJECTIONS:
            response = client.get(page, {name: value})
            assert response.status_code == 200, (page, name, value, response.status_code)
    assert _snapshot() == before


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.slow
def test_sql_looking_values_in_ui_paths_are_a_404(
    value: str, api: APIClient, record: Any, make_message: Any
) -> None:
    """Ids in the UI's URLs are plain values too: unknown ones are a 404, never a 500."""
    from urllib.parse import quote

    seed_everything(api, record, make_message)
    before = _snapshot()
    client = Client()
    for prefix in ("/namespaces/", "/executions/"):
        response = client.get(prefix + quote(value, safe="") + "/")
        assert response.status_code == 404, (prefix, value, response.status_code)
    assert _snapshot() == before
