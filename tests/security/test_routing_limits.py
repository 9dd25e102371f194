# Address literals and mail loops. An allowed client could make bouncer
# connect to any IP literal, the host's own loopback services included (server-side request
# forgery); a message routed in a circle had no hop limit. Against the real Service, with a
# fake MX listening where a literal would lead, so a connection attempt would be seen.
from __future__ import annotations

from typing import Any

import pytest

from relay.service import Service
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient

LITERALS = {
    "ipv4": b"<user@[127.0.0.1]>",
    "ipv4-mapped-ipv6": b"<user@[IPv6:::ffff:127.0.0.1]>",
    "source-route": b"<@relay.example.test,@b.example.test:user@[127.0.0.1]>",
}
MSG = b"From: a@sender.test\r\nSubject: hops\r\n\r\nHi.\r\n"


async def _literals_service(relay_service: Any, mx: FakeMX, allowed: list[str]) -> Service:
    # [delivery] port: where a literal's IP is connected to; the fake MX listens exactly there.
    delivery = {"port": mx.port, "allowed_address_literals": allowed}
    svc: Service = await relay_service({"delivery": delivery})
    return svc


@pytest.mark.parametrize("path", list(LITERALS.values()), ids=list(LITERALS))
async def test_an_address_literal_is_refused_with_no_connection_attempt(
    relay_service: Any, fake_mx: FakeMX, path: bytes
) -> None:
    svc = await _literals_service(relay_service, fake_mx, [])
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    reply = await c.cmd(b"RCPT TO:" + path)
    assert reply.code == 550 and reply.text.startswith("5.7.1"), str(reply)
    assert "address literal" in reply.text
    assert (await c.cmd(b"RCPT TO:<user@[10.0.0.1]>")).code == 550  # any network, not only ours
    await c.close()
    assert fake_mx.connections == 0


async def test_a_literal_in_an_allowed_network_is_delivered(
    relay_service: Any, fake_mx: FakeMX
) -> None:
    svc = await _literals_service(relay_service, fake_mx, ["127.0.0.0/8"])
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:" + LITERALS["ipv4"])).code == 250
    # The mapped form is the IPv4 address it maps to: the same network decides.
    assert (await c.cmd(b"RCPT TO:" + LITERALS["ipv4-mapped-ipv6"])).code == 250
    assert (await c.cmd(b"RCPT TO:<user@[192.0.2.1]>")).code == 550  # not listed
    assert (await c.cmd(b"DATA")).code == 354
    c.send(MSG + b".\r\n")
    assert (await c.reply()).code == 250
    await c.close()
    delivered = sorted(r for m in fake_mx.messages for r in m.rcpt_tos)
    assert delivered == ["user@[127.0.0.1]", "user@[IPv6:::ffff:127.0.0.1]"]


def _received(n: int) -> bytes:
    return b"".join(
        b"Received: from hop%d.test (hop%d.test [192.0.2.%d])\r\n\tby mx.test; Mon, 1 Jan 2024\r\n"
        % (i, i, i)
        for i in range(n)
    )


@pytest.mark.parametrize(("hops", "code"), [(29, 250), (30, 554)])
async def test_a_message_with_max_hops_received_headers_is_refused_as_a_loop(
    relay_service: Any, fake_mx: FakeMX, hops: int, code: int
) -> None:
    svc: Service = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    # "Received:" in the body is not a header: only the header section counts.
    c.send(_received(hops) + MSG + b"Received: in the body\r\n" * 5 + b".\r\n")
    reply = await c.reply()
    assert reply.code == code, str(reply)
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()
    if code == 554:
        assert reply.text.startswith("5.4.6") and "30 Received" in reply.text
        assert fake_mx.messages == [] and "DATA" not in fake_mx.commands
    else:  # forwarded with bouncer's own Received: on top: 30 in all
        (msg,) = fake_mx.messages
        head = msg.data.split(b"\r\n\r\n", 1)[0]
        assert head.count(b"\r\nReceived: ") + head.startswith(b"Received: ") == 30


async def test_max_hops_is_a_setting(relay_service: Any, fake_mx: FakeMX) -> None:
    svc: Service = await relay_service(
        {"server": {"max_hops": 2}, "delivery": {"routes": {"example.test": fake_mx.address}}}
    )
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    c.send(b"received: lower case counts too\r\n" + _received(1) + MSG + b".\r\n")
    assert (await c.reply()).code == 554
    await c.close()


def test_the_settings_are_checked_up_front() -> None:
    from relay.config.load import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "delivery": {"allowed_address_literals": ["10.0.0.0/8", "nope"]},
                "server": {"max_hops": 0},
            }
        )
    assert "delivery.allowed_address_literals[1]: not an IP network: 'nope'" in str(info.value)
    assert "server.max_hops: must be a finite number greater than 0" in str(info.value)
    cfg = config_from_dict({"delivery": {"allowed_address_literals": ["192.0.2.7/24"]}})
    assert [str(n) for n in cfg.literal_networks] == ["192.0.2.0/24"]
