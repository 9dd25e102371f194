# The mail log of AUTH and of refused smuggling: a failed login is
# Postfix smtpd's `warning: unknown[ip]: SASL LOGIN authentication failed: ...` line, which
# fail2ban's postfix-sasl filter matches; an accepted message names its sasl_username= and
# message-id=; a login logs no aiosmtpd deprecation warning; a bare LF is a warning line.
from __future__ import annotations

import logging
import re
from typing import Any

import aiosmtplib
import pytest

from relay.observe.events import Event
from relay.observe.logfmt import postfix_lines
from relay.service import Service
from tests.security.conftest import PASSWORD, USER
from tests.security.test_relay_access import MSG, port_of
from tests.security.test_relay_access import secured as secured  # the fixture, reused
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient

# fail2ban's filter.d/postfix.conf, mode "auth" (its mdre-auth, with the prefix line it
# puts before it), with the daemon name set to bouncer's as a jail would (`_daemon`).
_DAEMON = r"bouncer/smtpd"
FAIL2BAN_SASL = re.compile(
    r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ "
    + _DAEMON
    + r"\[\d+\]: warning: [-._\w]+\[(?P<host>[^\]]+)\]: "
    r"SASL ((?i:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5)) authentication failed:"
    r"(?! Connection lost to authentication server| Invalid authentication mechanism)"
)


@pytest.fixture
async def logged(secured: Service) -> tuple[Service, list[str]]:
    """test_relay_access's server (STARTTLS, AUTH, relay for no network) and its log lines."""
    svc = secured
    lines: list[str] = []

    def sink(event: Event) -> None:
        lines.extend(postfix_lines(event, "mx1", 1234))

    svc.events.subscribe(sink)
    return svc, lines


async def _tls_client(svc: Service) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(svc), start_tls=False)
    await client.connect()
    await client.starttls(validate_certs=False)
    await client.ehlo()
    return client


async def test_failed_auth_is_a_line_fail2ban_matches(
    logged: tuple[Service, list[str]],
) -> None:
    svc, lines = logged
    client = await _tls_client(svc)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.login(USER, "wrong")
    await client.quit()
    # aiosmtplib tries PLAIN, then LOGIN: one line per refused attempt, as Postfix logs.
    warnings = [line for line in lines if "warning:" in line]
    assert len(warnings) == 2, lines
    for line in warnings:
        assert "bouncer/smtpd[1234]: warning: unknown[127.0.0.1]: SASL " in line
        m = FAIL2BAN_SASL.match(line)
        assert m is not None, line
        assert m.group("host") == "127.0.0.1"


def test_the_fail2ban_pattern_is_not_trivially_true() -> None:
    ok = (
        "Nov 22 10:15:01 mx1 bouncer/smtpd[1]: warning: unknown[192.0.2.7]: "
        "SASL PLAIN authentication failed: authentication failure"
    )
    assert FAIL2BAN_SASL.match(ok)
    assert not FAIL2BAN_SASL.match(ok.replace("SASL PLAIN", "AUTH PLAIN"))
    assert not FAIL2BAN_SASL.match(ok.replace("bouncer/smtpd", "bouncer/smtp"))


async def test_accepted_mail_names_sasl_username_and_message_id(
    logged: tuple[Service, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    svc, lines = logged
    client = await _tls_client(svc)
    with caplog.at_level(logging.DEBUG):
        assert (await client.login(USER, PASSWORD)).code == 235
    msg = b"Message-ID: <abc.123@sender.test>\r\n" + MSG
    errors, _ = await client.sendmail("a@sender.test", ["b@example.test"], msg)
    assert errors == {}
    await client.quit()
    text = "\n".join(lines)
    assert re.search(r": \w+: client=unknown\[127\.0\.0\.1\], sasl_username=alice$", text, re.M)
    assert re.search(
        r"bouncer/cleanup\[1234\]: \w+: message-id=<abc\.123@sender\.test>$", text, re.M
    )
    # aiosmtpd's "Session.login_data is deprecated" warning, once per login, is gone.
    assert "deprecated" not in caplog.text


async def test_bare_lf_refusal_is_a_warning_line(relay_service: Any, fake_mx: FakeMX) -> None:
    svc: Service = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    lines: list[str] = []
    svc.events.subscribe(lambda event: lines.extend(postfix_lines(event, "mx1", 1234)))
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    reply = await c.cmd(b"Subject: x\r\n\r\nsmuggled\n.\r\n.")
    assert reply.code == 550
    await c.close()
    (line,) = [line for line in lines if "warning:" in line]
    assert re.search(
        r"bouncer/smtpd\[1234\]: warning: unknown\[127\.0\.0\.1\]: \w+: message refused: "
        r"550 5\.5\.2 Error: bare <CR> or <LF>",
        line,
    ), line
    assert fake_mx.messages == []
