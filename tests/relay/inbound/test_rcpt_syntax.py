# docs/behaviour.md#the-transaction: an invalid RCPT address is 501 5.1.3. bouncer's own check
# answers that, but addresses that aiosmtpd's parser refuses first get aiosmtpd's "553 5.1.3 Error:
# malformed address" instead (tests/security/test_inbound.py accepts 501 or 553).
"""RCPT with a syntactically invalid address: 501 5.1.3, whoever spots the error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient


@pytest.mark.parametrize("address", [b"<no-at-sign>", b"<a@-bad-.test>", b"<a@[300.1.1.1]>"])
async def test_invalid_address_found_by_bouncer_is_501_5_1_3(
    relay_service: Any, fake_mx: FakeMX, address: bytes
) -> None:
    svc = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    c = await RawClient.connect(*svc.addresses[0])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    reply = await c.cmd(b"RCPT TO:" + address)
    await c.close()
    assert reply.code == 501 and reply.text.startswith("5.1.3"), str(reply)
    assert fake_mx.rcpts == []


@pytest.mark.parametrize(
    "address", [b"<two@@example.test>", b"<a@example..test>", b"<@example.test>", b"<0@>"]
)
async def test_invalid_address_found_by_the_parser_is_501_5_1_3(
    relay_service: Any, fake_mx: FakeMX, address: bytes
) -> None:
    svc = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    c = await RawClient.connect(*svc.addresses[0])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    reply = await c.cmd(b"RCPT TO:" + address)
    await c.close()
    assert fake_mx.rcpts == []
    assert reply.code == 501 and reply.text.startswith("5.1.3"), str(reply)
