"""Hosts in network namespaces (``swf_testbed.testing.hosts``) for the multi-host tests.

Where network namespaces cannot be made (not root, no iproute2) the tests skip
and say why, unless ``SWF_REQUIRE_NETNS=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from swf_testbed.testing.hosts import Hosts, netns_unavailable
from tests.conftest import _required


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
