"""Hosts in network namespaces (``swf_testbed.testing.hosts``) for the multi-host tests.

Where network namespaces cannot be made (not root, no iproute2) the tests skip
and say why, unless ``SWF_REQUIRE_NETNS=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from swf_testbed.testing.brokers import BrokerProcess, activemq_available, start_activemq
from swf_testbed.testing.hosts import Host, Hosts, netns_unavailable
from tests.conftest import _required

from .testbeds import BROKER_PORT


@pytest.fixture
def make_hosts() -> Iterator[Callable[[Sequence[str]], Hosts]]:
    """``make_hosts(["a", "b"])``: hosts removed at the end of the test, whatever happened."""
    reason = netns_unavailable()
    if reason is not None:
        if _required("SWF_REQUIRE_NETNS"):
            pytest.fail(f"SWF_REQUIRE_NETNS is set but {reason}")
        pytest.skip(reason)
    made: list[Hosts] = []

    def make(names: Sequence[str]) -> Hosts:
        hosts = Hosts(names)
        made.append(hosts)
        return hosts

    yield make
    for hosts in made:
        hosts.close()


@pytest.fixture
def activemq_on(tmp_path: Path) -> Iterator[Callable[[Host], BrokerProcess]]:
    """``activemq_on(host)``: ActiveMQ Classic on that host's address, STOMP on 61613."""
    if not activemq_available():
        if _required("SWF_REQUIRE_ACTIVEMQ"):
            pytest.fail("SWF_REQUIRE_ACTIVEMQ is set but ActiveMQ Classic is not installed")
        pytest.skip("ActiveMQ Classic not installed (apt-get install -y activemq)")
    started: list[BrokerProcess] = []

    def start(host: Host) -> BrokerProcess:
        broker = start_activemq(
            port=BROKER_PORT, host=host.address, workdir=tmp_path / "activemq", in_host=host
        )
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
