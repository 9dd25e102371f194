# VERP round trip through a running bouncer: mail relayed with VERP on reaches the
# fake MX with a signed return path; a late DSN sent to that return path at the intake
# suppresses the recipient (the next RCPT is refused by bouncer itself); a forged token is
# refused at RCPT and changes nothing; with forward = true the bounce reaches the sender.
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import pytest

from policy.verp import VerpKey, decode
from relay.intake.listener import Intake
from relay.service import Service
from tests.support import bounce_samples as samples
from tests.support.fake_mx import FakeMX
from tests.support.wait import until

SECRET = "round-trip-secret"
BOUNCE_DOMAIN = "bounces.sender.example"
KEY = VerpKey.from_settings("bounces", BOUNCE_DOMAIN, SECRET)
MSG = b"From: app@sender.example\r\nTo: user@dest.example\r\nSubject: hi\r\n\r\nHello.\r\n"


def config(mx: FakeMX, forward: bool = False, sender_mx: FakeMX | None = None) -> dict[str, Any]:
    routes = {"dest.example": mx.address}
    if sender_mx is not None:
        routes["sender.example"] = sender_mx.address
    return {
        "delivery": {"routes": routes},
        "verp": {"enabled": True, "bounce_domain": BOUNCE_DOMAIN, "secret": SECRET},
        "intake": {"listen": "127.0.0.1:0", "forward": forward},
    }


def intake_port(svc: Service) -> int:
    (intake,) = [c for c in svc.components if isinstance(c, Intake)]
    return intake.port


def relay_port(svc: Service) -> int:
    return svc.addresses[0][1]


async def bounce(port: int, rcpt: str, data: bytes, sender: str = "") -> aiosmtplib.SMTPResponse:
    """One transaction with the null sender by default, as bounces come (RFC 5321 §4.5.5)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    try:
        await client.mail(sender)
        await client.rcpt(rcpt)
        return await client.data(data)
    finally:
        await client.quit()


async def relay(svc: Service, rcpt: str) -> None:
    await aiosmtplib.send(
        MSG,
        sender="app@sender.example",
        recipients=[rcpt],
        hostname="127.0.0.1",
        port=relay_port(svc),
    )


async def test_verp_round_trip_suppresses(fake_mx: FakeMX, relay_service: Any) -> None:
    svc = await relay_service(config(fake_mx))
    await relay(svc, "user@dest.example")
    (msg,) = fake_mx.messages
    token = decode(KEY, msg.mail_from, datetime.now(UTC))
    assert token is not None, msg.mail_from  # the remote saw the signed VERP return path
    assert token.recipient == "user@dest.example"
    assert msg.mail_from.endswith("@" + BOUNCE_DOMAIN)

    dsn = samples.rfc3464(recipient="user@dest.example", to=msg.mail_from)
    reply = await bounce(intake_port(svc), msg.mail_from, dsn)
    assert reply.code == 250

    assert svc.store is not None
    assert svc.store.check("user@dest.example", datetime.now(UTC)) is not None
    # The next message to the address is refused by bouncer itself, before any traffic.
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
        await relay(svc, "user@dest.example")
    (refusal,) = info.value.recipients
    assert refusal.code == 550 and "5.1.1" in refusal.message
    assert len(fake_mx.messages) == 1


async def test_forged_token_refused_changes_nothing(fake_mx: FakeMX, relay_service: Any) -> None:
    svc = await relay_service(config(fake_mx))
    await relay(svc, "user@dest.example")
    genuine = fake_mx.messages[0].mail_from
    forged = genuine.replace("=user=dest.example", "=victim=dest.example")
    assert forged != genuine and decode(KEY, forged, datetime.now(UTC)) is None
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
        await bounce(intake_port(svc), forged, samples.rfc3464(recipient="victim@dest.example"))
    assert info.value.code == 550
    assert svc.store is not None
    assert svc.store.get("victim@dest.example") is None
    assert svc.store.check("victim@dest.example", datetime.now(UTC)) is None
    assert svc.store.get("user@dest.example") is None


async def test_null_sender_is_not_verped(fake_mx: FakeMX, relay_service: Any) -> None:
    svc = await relay_service(config(fake_mx))
    await bounce(relay_port(svc), "user@dest.example", MSG)
    assert fake_mx.messages[0].mail_from in ("", "<>")  # aiosmtpd records the null path as "<>"


async def test_forward_reaches_original_sender(make_fake_mx: Any, relay_service: Any) -> None:
    dest, sender_mx = await make_fake_mx(), await make_fake_mx()
    svc = await relay_service(config(dest, forward=True, sender_mx=sender_mx))
    await relay(svc, "user@dest.example")
    verp = dest.messages[0].mail_from
    dsn = samples.rfc3464(recipient="user@dest.example", to=verp)
    await bounce(intake_port(svc), verp, dsn)
    # The forward runs as a task after the intake's 250.
    await until(lambda: sender_mx.messages, "the forwarded bounce")
    (fwd,) = sender_mx.messages
    assert fwd.mail_from in ("", "<>") and fwd.rcpt_tos == ("app@sender.example",)
    assert b"message/delivery-status" in fwd.data


async def test_forward_also_when_nothing_changes(make_fake_mx: Any, relay_service: Any) -> None:
    dest, sender_mx = await make_fake_mx(), await make_fake_mx()
    svc = await relay_service(config(dest, forward=True, sender_mx=sender_mx))
    await relay(svc, "user@dest.example")
    verp = dest.messages[0].mail_from
    relayed = samples.rfc3464(
        recipient="user@dest.example", action="relayed", status="2.0.0", diagnostic="smtp; 250 ok"
    )
    await bounce(intake_port(svc), verp, relayed)
    await until(lambda: sender_mx.messages, "the forwarded report")
    assert [m.rcpt_tos for m in sender_mx.messages] == [("app@sender.example",)]
    assert svc.store is not None and svc.store.get("user@dest.example") is None
