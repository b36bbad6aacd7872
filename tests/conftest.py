"""Fixtures that start real services: the embedded broker and ActiveMQ Classic.

ActiveMQ is started from the Debian package when it is installed. Without it
the ActiveMQ-parametrized tests are skipped, unless ``SWF_REQUIRE_ACTIVEMQ=1``
(CI sets it), in which case they fail: CI must never silently skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from swf_testbed.testing.brokers import BrokerProcess, activemq_available, start_activemq, start_embedded

BROKER_KINDS = ["embedded", "activemq"]


def _require_activemq() -> bool:
    return os.environ.get("SWF_REQUIRE_ACTIVEMQ", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[BrokerProcess]:
    broker = start_embedded()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def activemq_broker() -> Iterator[BrokerProcess]:
    if not activemq_available():
        if _require_activemq():
            pytest.fail("SWF_REQUIRE_ACTIVEMQ is set but ActiveMQ Classic is not installed")
        pytest.skip("ActiveMQ Classic not installed (apt-get install -y activemq)")
    broker = start_activemq()
    yield broker
    broker.stop()


@pytest.fixture(params=BROKER_KINDS)
def any_broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """The same test against the embedded broker and against ActiveMQ Classic."""
    if request.param == "activemq":
        request.applymarker(pytest.mark.activemq)
    return request.getfixturevalue(f"{request.param}_broker")
