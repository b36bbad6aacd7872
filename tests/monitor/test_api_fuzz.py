"""The whole OpenAPI schema, fuzzed against the live monitor over HTTP (schemathesis).

Every operation that ``/api/schema/`` documents is called with generated requests, valid and invalid
(JSON, form and multipart bodies, odd query strings), as a staff user with a token and anonymously.
Asserted for every response: never a 5xx, the content type and (for documented statuses) the body as
the schema says; anonymously, never a write but a log from loopback. The database is seeded with one
row of everything first, and generated path parameters are mixed with the ids of those rows, so
detail, update and delete operations reach real objects instead of only 404s. Bounded for CI:
``SWF_FUZZ_EXAMPLES`` (default 30) generated requests per operation as staff, a sixth of that
anonymously (an anonymous write stops at the permission check); the seed is fixed
(``SWF_FUZZ_SEED``) so a failure reproduces.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import strategies as st  # noqa: E402 -- only once importorskip found it
from rest_framework.test import APIClient  # noqa: E402 -- kept below the importorskip calls

from .test_security import seed_everything  # noqa: E402 - one row of everything, as agents create them

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXAMPLES = int(os.environ.get("SWF_FUZZ_EXAMPLES", "30"))
ANONYMOUS_EXAMPLES = max(3, EXAMPLES // 6)
SEED = int(os.environ.get("SWF_FUZZ_SEED", "20261127"))
SAFE = {"GET", "HEAD", "OPTIONS"}


def _checks() -> list[Any]:
    """No 5xx; content type and body as documented (drf-spectacular documents each operation's
    success).

    Not checked: undocumented statuses (400/401/404 are not in the schema) and "the server refused
    schema-valid data" (the schema carries no pattern for names, no existence of foreign keys).
    """
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    return [not_a_server_error, content_type_conformance, response_schema_conformance]


def _config() -> Any:
    """An explicit configuration (never a schemathesis.toml found in the working directory)."""
    return schemathesis.Config.from_dict({"seed": SEED, "generation": {"database": "none"}})


def _existing_path_parameters(api: APIClient, schema: Any) -> dict[str, list[dict[str, Any]]]:
    """For each operation with path parameters, the parameters of the rows that exist (from its
    list).
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [p.name for p in operation.path_parameters]
        if len(names) != 1:
            continue
        name = names[0]
        list_path = operation.path.split("{", 1)[0]
        response = api.get(list_path)
        if response.status_code != 200 or not isinstance(response.json(), list):
            continue
        values = []
        for row in response.json():
            value = row.get(name, next(iter(row.values())) if name == "id" else None)
            if value is not None:
                values.append({name: value})
        if values:
            found[operation.path] = values
    return found


@pytest.fixture
def staff_token(db: None) -> str:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    staff = User.objects.create_user("fuzz-staff", password="fuzz-pass-123", is_staff=True)
    return Token.objects.create(user=staff).key


@pytest.fixture
def api_schema(live_server: Any, staff_token: str, record: Any, make_message: Any) -> Iterator[Any]:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {staff_token}")
    seed_everything(api, record, make_message)
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/schema/", config=_config(), timeout=60
    )
    existing = _existing_path_parameters(api, schema)
    assert len(existing) >= 10, existing  # the seed reaches most detail operations

    # schemathesis ships no type hints, so its hook decorator is untyped
    @schema.hook("before_generate_path_parameters")  # type: ignore[untyped-decorator]  # see above
    def mix_in_existing(context: Any, strategy: Any) -> Any:
        rows = existing.get(context.operation.path)
        return st.one_of(st.sampled_from(rows), strategy) if rows else strategy

    yield schema


def _strategy(operation: Any) -> Any:
    """Valid and invalid requests for the operation (invalid ones
    only where the schema allows any).
    """
    from schemathesis import GenerationMode

    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    try:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # noqa: BLE001 - nothing to make invalid (no parameters, no body)
        pass
    return st.one_of(*strategies)


def _operation_test(
    operation: Any,
    who: str,
    headers: dict[str, str],
    examples: int,
    tally: tuple[dict[str, int], set[int], list[float]],
) -> Any:
    """The hypothesis test of one operation; ``tally`` gets its calls, statuses, seconds waited."""
    from hypothesis import HealthCheck, Phase

    calls, statuses, waited = tally

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(SEED)
    @hypothesis.given(case=_strategy(operation))
    def call(case: Any) -> None:
        t0 = time.monotonic()
        response = case.call_and_validate(headers=headers, checks=_checks(), timeout=60)
        waited[0] += time.monotonic() - t0
        calls[operation.label] = calls.get(operation.label, 0) + 1
        statuses.add(response.status_code)
        if who == "anonymous" and case.method.upper() not in SAFE:
            # 401/403 from the permission check; 404/405/406 from routing and content
            # negotiation, which come before it. Never a success, but for the one anonymous
            # write: a log posted from loopback (this client's address), which may also be
            # invalid or rate-limited. (The auth matrix in test_security.py is exact.)
            allowed = {401, 403, 404, 405, 406}
            if case.method.upper() == "POST" and operation.path == "/api/logs/":
                allowed |= {201, 400, 415, 429}
            assert response.status_code in allowed, (
                f"anonymous {case.method.upper()} answered {response.status_code}: "
                f"{response.text[:300]}"
            )

    return call


def _fuzz(
    schema: Any, who: str, headers: dict[str, str], examples: int
) -> tuple[list[str], dict[str, Any]]:
    """Every operation of the schema, ``examples`` generated
    requests each; failures per operation.
    """
    failures: list[str] = []
    calls: dict[str, int] = {}
    statuses: set[int] = set()
    waited = [0.0]  # seconds spent in requests and checks (the rest is generating them)
    for result in schema.get_all_operations():
        operation = result.ok()

        call = _operation_test(operation, who, headers, examples, (calls, statuses, waited))

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failing operation is reported
            failures.append(f"{who} {operation.label}:\n{exc}"[:4000])
    return failures, {
        "operations": len(calls),
        "calls": sum(calls.values()),
        "statuses": sorted(statuses),
        "request_seconds": round(waited[0], 1),
    }


def test_fuzz_every_operation_as_staff_and_anonymously(api_schema: Any, staff_token: str) -> None:
    """No 5xx, documented bodies as documented, no anonymous write:
    all operations, two identities.
    """
    operations = sum(1 for _ in api_schema.get_all_operations())
    figures = {}
    failures: list[str] = []
    for who, headers, examples in (
        ("staff", {"Authorization": f"Token {staff_token}"}, EXAMPLES),
        ("anonymous", {}, ANONYMOUS_EXAMPLES),
    ):
        started = time.monotonic()
        found, figures[who] = _fuzz(api_schema, who, headers, examples)
        figures[who]["seconds"] = round(time.monotonic() - started, 1)
        failures += found
    print(f"\nschemathesis: {operations} operations in the schema; {figures}")
    assert not failures, "\n\n".join(failures)
    # every operation was really called (a broken generator would pass vacuously)
    assert figures["staff"]["operations"] == figures["anonymous"]["operations"] == operations
