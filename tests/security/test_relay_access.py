# No open relay: a client outside allowed_clients that has not authenticated gets
# 554 5.7.1 and no remote is asked; AUTH is offered only after STARTTLS, and a client that
# authenticated there may relay. Runs against the real Service on loopback.
from __future__ import annotations

import base64
from typing import Any

import aiosmtplib
import pytest

from relay.service import Service
from tests.security.conftest import PASSWORD, USER
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient

MSG = b"From: a@sender.test\r\nSubject: relay\r\n\r\nHi.\r\n"
NOT_US = ["10.99.0.0/16"]  # the test client (127.0.0.1) is outside it


def port_of(svc: Service) -> int:
    return svc.addresses[0][1]


async def test_outsider_gets_554_and_no_remote_is_asked(
    relay_service: Any, fake_mx: FakeMX
) -> None:
    svc = await relay_service(
        {
            "server": {"allowed_clients": NOT_US},
            "delivery": {"routes": {"example.test": fake_mx.address}},
        }
    )
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    mail = await c.cmd(b"MAIL FROM:<a@sender.test>")
    rcpt = await c.cmd(b"RCPT TO:<b@example.test>")
    # 554 5.7.1 at MAIL or RCPT, whichever comes first; RCPT is never accepted.
    denied = mail if mail.code != 250 else rcpt
    assert denied.code == 554 and denied.text.startswith("5.7.1"), f"{mail} / {rcpt}"
    assert rcpt.code >= 500, str(rcpt)
    data = await c.cmd(b"DATA")
    assert data.code >= 500, str(data)
    await c.close()
    assert fake_mx.connections == 0 and fake_mx.messages == []


async def test_allowed_client_relays(relay_service: Any, fake_mx: FakeMX) -> None:
    svc = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    await c.close()


async def test_without_tls_no_auth_is_offered_or_accepted(
    relay_service: Any, fake_mx: FakeMX, users_file: str
) -> None:
    svc = await relay_service(
        {"server": {"allowed_clients": NOT_US, "users_file": users_file}},
    )
    c = await RawClient.connect("127.0.0.1", port_of(svc), ehlo=False)
    ehlo = await c.cmd(b"EHLO client.test")
    assert not any("AUTH" in line or "STARTTLS" in line for line in ehlo.lines), str(ehlo)
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    reply = await c.cmd(b"AUTH PLAIN " + plain)
    assert reply.code in (502, 503, 530, 538), str(reply)  # never 235 in clear text
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code >= 500
    await c.close()


@pytest.fixture
async def secured(
    relay_service: Any, fake_mx: FakeMX, tls_files: tuple[str, str], users_file: str
) -> Service:
    svc: Service = await relay_service(
        {
            "server": {
                "allowed_clients": NOT_US,
                "tls_cert": tls_files[0],
                "tls_key": tls_files[1],
                "users_file": users_file,
            },
            "delivery": {"routes": {"example.test": fake_mx.address}},
        }
    )
    return svc


async def assert_relay_denied(client: aiosmtplib.SMTP) -> None:
    """554 5.7.1 at MAIL, or at RCPT when MAIL was accepted (docs/behaviour.md#the-transaction)."""
    with pytest.raises((aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused)) as err:
        await client.mail("a@sender.test")
        await client.rcpt("b@example.test")
    assert err.value.code == 554 and "5.7.1" in err.value.message


async def _client(svc: Service) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(svc), start_tls=False)
    await client.connect()
    await client.ehlo()
    return client


async def test_auth_only_after_starttls_then_relay(secured: Service, fake_mx: FakeMX) -> None:
    client = await _client(secured)
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    await client.starttls(validate_certs=False)
    await client.ehlo()
    assert set(client.server_auth_methods) == {"plain", "login"}
    # Before AUTH, even over TLS, the outsider may not relay.
    await assert_relay_denied(client)
    await client.rset()
    assert (await client.login(USER, PASSWORD)).code == 235
    errors, _ = await client.sendmail("a@sender.test", ["b@example.test"], MSG)
    assert errors == {}
    await client.quit()
    (msg,) = fake_mx.messages
    assert msg.rcpt_tos == ("b@example.test",)
    assert b" with ESMTPSA id " in msg.data  # RFC 3848: TLS + AUTH in the Received: line


@pytest.mark.parametrize("user, password", [(USER, "wrong"), ("mallory", PASSWORD)])
async def test_wrong_credentials_do_not_open_the_relay(
    secured: Service, fake_mx: FakeMX, user: str, password: str
) -> None:
    client = await _client(secured)
    await client.starttls(validate_certs=False)
    await client.ehlo()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
        await client.login(user, password)
    assert err.value.code == 535
    await assert_relay_denied(client)
    await client.quit()
    assert fake_mx.connections == 0


async def test_bad_users_file_fails_startup(relay_service: Any, tmp_path: Any) -> None:
    bad = tmp_path / "users"
    bad.write_text("alice:not-a-hash\n")
    from relay.service import StartupError

    with pytest.raises(StartupError):
        await relay_service({"server": {"users_file": str(bad)}})
