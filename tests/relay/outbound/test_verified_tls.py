"""starttls = "verify": the remote's certificate must chain to a trusted CA and name the MX
host; any failure is a soft 4.7.5 naming the reason, never a retry in clear text. Real
TLS on loopback against the fake MX, with a CA each test makes."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from pathlib import Path
from typing import Any

import pytest

from relay.cli.main import main
from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.values import Route, Target
from relay.service import Service
from tests.support.certs import TestCA, self_signed, server_context
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.relay_client import send_one

MX_NAME = "mx.verify.test"


def verify(ca_file: str = "") -> OutboundSettings:
    return OutboundSettings("relay.test", 2.0, 5.0, "verify", ca_file)


def route(mx: FakeMX, name: str = MX_NAME) -> Route:
    return Route(name, (Target(name, mx.host, mx.port),))


async def test_a_certificate_from_a_trusted_ca_for_the_host_is_accepted(
    tmp_path: Path, make_fake_mx: Any
) -> None:
    ca = TestCA(tmp_path)
    mx = await make_fake_mx(tls_context=server_context(*ca.issue(MX_NAME)))
    session = await open_session(route(mx), verify(ca.cert_file))
    assert isinstance(session, RemoteSession) and session.tls
    assert (await session.mail("a@sender.test")).code == 250
    await session.quit()


@pytest.mark.parametrize(
    ("make_cert", "name", "why"),
    [
        (lambda d, ca: self_signed(d, "mx.other.test"), MX_NAME, "self-signed certificate"),
        (lambda d, ca: self_signed(d, MX_NAME), MX_NAME, "self-signed certificate"),
        (lambda d, ca: ca.issue("mx.other.test"), MX_NAME, "Hostname mismatch"),
        (lambda d, ca: TestCA(d / "other").issue(MX_NAME), MX_NAME, "unable to get local issuer"),
    ],
    ids=["self-signed-other-name", "self-signed-right-name", "wrong-name", "unknown-ca"],
)
async def test_an_unverifiable_certificate_is_a_soft_refusal_without_clear_text(
    tmp_path: Path,
    make_fake_mx: Any,
    caplog: pytest.LogCaptureFixture,
    make_cert: Any,
    name: str,
    why: str,
) -> None:
    (tmp_path / "other").mkdir()
    ca = TestCA(tmp_path)
    mx = await make_fake_mx(tls_context=server_context(*make_cert(tmp_path, ca)))
    with caplog.at_level(logging.WARNING, logger="relay.outbound.session"):
        result = await open_session(route(mx, name), verify(ca.cert_file))
    assert not isinstance(result, RemoteSession)
    assert (result.code, result.enhanced) == (451, "4.7.5")
    assert why in result.text and f"{name}[127.0.0.1]" in result.text
    assert any(why in r.getMessage() for r in caplog.records)  # logged with the reason
    assert mx.connections == 1 and mx.commands.count("MAIL") == 0  # no clear-text retry


async def test_system_cas_do_not_trust_the_test_ca(tmp_path: Path, make_fake_mx: Any) -> None:
    ca = TestCA(tmp_path)
    mx = await make_fake_mx(tls_context=server_context(*ca.issue(MX_NAME)))
    result = await open_session(route(mx), verify())  # no ca_file: the system's CAs
    assert not isinstance(result, RemoteSession) and result.enhanced == "4.7.5"


async def test_a_host_without_starttls_is_refused_softly(make_fake_mx: Any) -> None:
    mx = await make_fake_mx()
    result = await open_session(route(mx), verify())
    assert not isinstance(result, RemoteSession)
    assert (result.code, result.enhanced) == (451, "4.7.4")
    assert mx.commands.count("MAIL") == 0


async def _send(svc: Service) -> tuple[int, bytes]:
    return await send_one(svc, "b@dest.test")


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_through_bouncer_the_mx_name_from_dns_is_what_the_certificate_must_name(
    tmp_path: Path, dns_server: DNSServer, relay_service: Any, trusted: bool
) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue(MX_NAME) if trusted else self_signed(tmp_path, MX_NAME)
    async with FakeMX(tls_context=server_context(*cert)) as mx:
        dns_server.mx("dest.test", (10, MX_NAME))
        dns_server.a(MX_NAME, "127.0.0.1")
        svc = await relay_service(
            {
                "delivery": {"starttls": "verify", "ca_file": ca.cert_file, "port": mx.port},
                "dns": {"nameservers": [dns_server.nameserver]},
                "policy": {"soft_bounce": "pass"},
            }
        )
        code, text = await _send(svc)
        if trusted:
            assert code == 250 and len(mx.messages) == 1
        else:
            assert code == 451 and b"4.7.5" in text and b"self-signed" in text
            assert mx.messages == [] and mx.commands.count("MAIL") == 0


def test_check_config_names_an_unreadable_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "bad.pem"):
        conf = tmp_path / "b.toml"
        conf.write_text(
            f'[delivery]\nstarttls = "verify"\nca_file = "{ca_file}"\n'
            f'[store]\npath = "{tmp_path / "s"}"\n'
        )
        assert main(["check-config", "--config", str(conf)]) != 0
        assert "delivery.ca_file" in capsys.readouterr().err


async def test_requiretls_is_not_advertised_nor_accepted(relay_service: Any) -> None:
    # RFC 8689: a relay that offers REQUIRETLS promises verified TLS on every later hop;
    # bouncer does not make that promise, so it neither offers nor takes the parameter.
    svc = await relay_service()
    host, port = svc.addresses[0]

    def run() -> tuple[dict[str, str], tuple[int, bytes]]:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as client:
            client.ehlo()
            return dict(client.esmtp_features), client.docmd("MAIL FROM:<a@x.test> REQUIRETLS")

    features, (code, text) = await asyncio.to_thread(run)
    assert "requiretls" not in features and "pipelining" in features
    assert code == 555, text  # "unrecognised parameter"
