"""The legacy-agent fixture's own rules (no services): its environment, its sampling, its endpoint
names.
"""

from __future__ import annotations

import pytest

from .legacy_agents.agents import RunOptions
from .legacy_agents.wire import LegacyEnv, endpoint_of


def test_environment_defaults_are_the_v28_ones_not_ours() -> None:
    env = LegacyEnv.from_environ({})
    assert (env.port, env.user, env.password, env.heartbeat_topic) == (
        61612,
        "admin",
        "admin",
        "/topic/epictopic",
    )
    assert not env.use_ssl


@pytest.mark.parametrize(
    ("value", "on"), [("true", True), ("True", False), ("1", False), ("yes", False), ("", False)]
)
def test_only_the_exact_string_true_turns_ssl_on(value: str, on: bool) -> None:
    assert LegacyEnv.from_environ({"ACTIVEMQ_USE_SSL": value}).use_ssl is on


def test_urls_lose_a_trailing_slash() -> None:
    env = LegacyEnv.from_environ(
        {"SWF_MONITOR_URL": "http://m:8002/", "SWF_MONITOR_HTTP_URL": "http://m:8002"}
    )
    assert env.monitor_url == env.monitor_http_url == "http://m:8002"


@pytest.mark.parametrize(
    ("rate", "stfs", "sampled"), [(1.0, 10, 10), (0.5, 10, 5), (0.05, 200, 10), (0.0, 10, 0)]
)
def test_sampling_is_deterministic(rate: float, stfs: int, sampled: int) -> None:
    assert sum(RunOptions(sampling_rate=rate).sampled(k) for k in range(1, stfs + 1)) == sampled


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("PATCH", "/stf-files/0b5e0c2e-5d0e-4c1e-9f38-0d8a3c1f2b11/", "PATCH /stf-files/{id}/"),
        ("GET", "/run-states/100010/", "GET /run-states/{id}/"),
        (
            "PATCH",
            "/workflow-executions/stf_datataking-alice-0007/",
            "PATCH /workflow-executions/{id}/",
        ),
        ("POST", "/state/next-run-number/", "POST /state/next-run-number/"),
    ],
)
def test_endpoint_names_hide_ids(method: str, path: str, endpoint: str) -> None:
    assert endpoint_of(method, path) == endpoint
