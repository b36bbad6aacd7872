from __future__ import annotations

import pytest

from swf_testbed.mq.destinations import (
    MONITOR_TOPIC,
    Destination,
    Queue,
    Topic,
    control_queue,
    mirror_topic,
    mirrored_queue,
)
from swf_testbed.settings import BrokerSettings, DestinationStyle, Settings


def test_broker_settings_from_the_existing_testbed_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACTIVEMQ_HOST", "mq.example.org")
    monkeypatch.setenv("ACTIVEMQ_PORT", "61612")
    monkeypatch.setenv("ACTIVEMQ_USER", "alice")
    monkeypatch.setenv("ACTIVEMQ_PASSWORD", "s3cret")
    monkeypatch.setenv("ACTIVEMQ_USE_SSL", "true")
    monkeypatch.setenv("ACTIVEMQ_SSL_CA_CERTS", "/etc/ca.pem")
    monkeypatch.setenv("ACTIVEMQ_SSL_CERT_FILE", "")
    s = BrokerSettings()
    assert (s.host, s.port, s.user, s.password, s.use_ssl) == (
        "mq.example.org",
        61612,
        "alice",
        "s3cret",
        True,
    )
    assert str(s.ssl_ca_certs) == "/etc/ca.pem" and s.ssl_cert_file is None
    assert "s3cret" not in repr(s)


def test_settings_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("ACTIVEMQ_PORT", raising=False)
    monkeypatch.setenv("SWF_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    monkeypatch.setenv("SWF_MONITOR_URL", "http://monitor:8000")
    s = Settings()
    assert s.home == tmp_path
    assert s.database_url == "postgres://u@h/db"
    assert s.monitor.monitor_url == "http://monitor:8000"
    assert s.broker.port == 61613


def test_bad_port_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIVEMQ_PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        BrokerSettings()


def test_destinations_spelled_per_broker_style() -> None:
    t, q = Topic("epictopic"), Queue("swf.ns.control")
    assert t.address(DestinationStyle.PREFIXED) == "/topic/epictopic"
    assert q.address(DestinationStyle.PREFIXED) == "/queue/swf.ns.control"
    assert t.address(DestinationStyle.ARTEMIS) == "epictopic"
    assert t.send_headers(DestinationStyle.ARTEMIS) == {"destination-type": "MULTICAST"}
    assert q.subscribe_headers(DestinationStyle.ARTEMIS) == {"subscription-type": "ANYCAST"}
    assert t.send_headers(DestinationStyle.PREFIXED) == {}
    assert Destination.parse("/queue/a.b") == Queue("a.b")
    assert Destination.parse("topic://x") == Topic("x")
    assert control_queue("torre1") == Queue("swf.torre1.control")
    with pytest.raises(ValueError, match="must start with"):
        Destination.parse("epictopic")
    with pytest.raises(ValueError, match="bad destination name"):
        Topic("a/b")


def test_queue_mirror_names_as_activemq_spells_them() -> None:
    queue = control_queue("ns1")
    assert str(mirror_topic(queue)) == "/topic/VirtualTopic.Mirror.swf.ns1.control"
    assert str(MONITOR_TOPIC) == "/topic/VirtualTopic.Mirror.>"
    for spelled in (
        "/topic/VirtualTopic.Mirror.swf.ns1.control",
        "topic://VirtualTopic.Mirror.swf.ns1.control",
        "VirtualTopic.Mirror.swf.ns1.control",
    ):
        assert mirrored_queue(spelled) == "/queue/swf.ns1.control"
    for not_a_mirror in (
        "/topic/swf.ns1.data",
        "/queue/VirtualTopic.Mirror.x",
        "/topic/VirtualTopic.Mirror.",
        "",
    ):
        assert mirrored_queue(not_a_mirror) is None
    with pytest.raises(ValueError, match="only queues are mirrored"):
        mirror_topic(Topic("swf.ns1.data"))
