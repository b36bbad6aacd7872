"""TLS to the broker: the CA, the client certificate and the key are all really used."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from swf_testbed.mq import BrokerClient, BrokerUnavailable, Topic
from swf_testbed.testing.brokers import BrokerProcess, start_embedded
from swf_testbed.testing.tls import Pki, make_pki
from tests.support.agents import stf_ready
from tests.support.collect import Collector

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[BrokerProcess]:
    broker = start_embedded(
        args=[
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca_cert),
        ]
    )
    yield broker
    broker.stop()


def test_round_trip_over_tls_with_client_certificate(tls_broker: BrokerProcess, pki: Pki) -> None:
    settings = tls_broker.settings(
        use_ssl=True,
        ssl_ca_certs=pki.ca_cert,
        ssl_cert_file=pki.client_cert,
        ssl_key_file=pki.client_key,
    )
    watch = Collector(settings, Topic("tls.test"))
    try:
        with BrokerClient(settings).start(wait=20) as sender:
            sender.send(Topic("tls.test"), stf_ready("tls", "secure.stf"))
        got = watch.wait_for(lambda ms: len(ms) == 1, what="the message over TLS")
        assert got[0].filename == "secure.stf"  # type: ignore[attr-defined]  # a StfReady
    finally:
        watch.close()


@pytest.mark.slow
def test_server_certificate_from_another_ca_is_refused(
    tls_broker: BrokerProcess, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", name="rogue-ca")
    settings = tls_broker.settings(
        use_ssl=True,
        ssl_ca_certs=other.ca_cert,
        ssl_cert_file=pki.client_cert,
        ssl_key_file=pki.client_key,
        connect_timeout_s=3,
    )
    client = BrokerClient(settings)
    with pytest.raises(BrokerUnavailable):
        client.start(wait=3)
    client.close()


@pytest.mark.slow
def test_broker_requiring_client_certificates_refuses_a_client_without_one(
    tls_broker: BrokerProcess, pki: Pki
) -> None:
    settings = tls_broker.settings(use_ssl=True, ssl_ca_certs=pki.ca_cert, connect_timeout_s=3)
    client = BrokerClient(settings)
    with pytest.raises(BrokerUnavailable):
        client.start(wait=3)
    client.close()


@pytest.mark.slow
def test_plain_client_cannot_talk_to_a_tls_broker(tls_broker: BrokerProcess) -> None:
    client = BrokerClient(tls_broker.settings(connect_timeout_s=2))
    with pytest.raises(BrokerUnavailable):
        client.start(wait=3)
    client.close()
