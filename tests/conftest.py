"""Fixtures that start real services: the embedded broker and ActiveMQ Classic; RabbitMQ.

ActiveMQ is started from the Debian package when it is installed. Without it
the ActiveMQ-parametrized tests are skipped, unless ``SWF_REQUIRE_ACTIVEMQ=1``
(CI sets it), in which case they fail: CI must never silently skip them.
RabbitMQ is a running server whose STOMP plugin listens on
``SWF_TEST_RABBITMQ_STOMP`` (default 127.0.0.1:61633; .ci/run enables it);
``SWF_REQUIRE_RABBITMQ=1`` makes its absence a failure the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from swf_testbed.testing.brokers import (
    BrokerProcess,
    activemq_available,
    rabbitmq_stomp,
    rabbitmq_vhost,
    start_activemq,
    start_embedded,
)
from swf_testbed.testing.databases import create_postgres_database

BROKER_KINDS = ["embedded", "activemq"]
EVERY_BROKER_KIND = [*BROKER_KINDS, "rabbitmq"]
"""The conformance suite and the pipeline also run on RabbitMQ (its STOMP plugin)."""


def _required(name: str) -> bool:
    """CI sets SWF_REQUIRE_ACTIVEMQ / SWF_REQUIRE_POSTGRES: a missing service then fails, never
    skips."""
    return os.environ.get(name, "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[BrokerProcess]:
    broker = start_embedded()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def activemq_broker() -> Iterator[BrokerProcess]:
    if not activemq_available():
        if _required("SWF_REQUIRE_ACTIVEMQ"):
            pytest.fail("SWF_REQUIRE_ACTIVEMQ is set but ActiveMQ Classic is not installed")
        pytest.skip("ActiveMQ Classic not installed (apt-get install -y activemq)")
    broker = start_activemq()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def rabbitmq_broker() -> Iterator[BrokerProcess]:
    """RabbitMQ's STOMP plugin, in a virtual host of this session's (removed at the end)."""
    with rabbitmq_vhost() as vhost:
        broker = rabbitmq_stomp(vhost)
        if broker is not None:
            yield broker
            return
        reason = (
            "RabbitMQ's STOMP plugin does not answer at SWF_TEST_RABBITMQ_STOMP "
            "(default 127.0.0.1:61633; see .ci/run for how it is enabled)"
        )
    if _required("SWF_REQUIRE_RABBITMQ"):
        pytest.fail(f"SWF_REQUIRE_RABBITMQ is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(params=BROKER_KINDS)
def any_broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """The same test against the embedded broker and against ActiveMQ Classic."""
    if request.param == "activemq":
        request.applymarker(pytest.mark.activemq)
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture(params=EVERY_BROKER_KIND)
def every_broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """The same test against the embedded broker, ActiveMQ Classic and RabbitMQ."""
    if request.param == "activemq":
        request.applymarker(pytest.mark.activemq)
    if request.param == "rabbitmq":
        request.applymarker(pytest.mark.rabbitmq)
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL server (``SWF_TEST_POSTGRES_URL``, default the local ``test``
    database)."""
    import psycopg

    url = os.environ.get("SWF_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        if _required("SWF_REQUIRE_POSTGRES"):
            pytest.fail(
                f"SWF_REQUIRE_POSTGRES is set but PostgreSQL at {url} is unreachable: {exc}"
            )
        pytest.skip(f"PostgreSQL not reachable at {url}")
    return url


@pytest.fixture
def fresh_postgres_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on that server for one test; dropped afterwards."""
    url, drop = create_postgres_database(postgres_url)
    yield url
    drop()
