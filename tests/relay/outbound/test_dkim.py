"""DKIM signing (relay/outbound/dkim.py): what leaves bouncer verifies with two independent
verifiers (dkimpy, and OpenDKIM's library through opendkim-testmsg) against keys served
by a DNS server, and stops verifying when the body changes."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cli.main import main
from relay.config.load import ConfigError, config_from_dict
from relay.config.preflight import problems
from relay.outbound.dkim import (
    DkimKeyError,
    DkimSigner,
    _domain_of_from,
    load_key,
    load_signer,
    new_key,
    relaxed_body,
)
from relay.service import Service
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.relay_client import send_one

MSG = (
    b"From: Shop <news@example.com>\r\n"
    b"To: b@dest.test\r\n"
    b"Subject: Your   order\r\n"
    b"Date: Wed, 02 Dec 2026 13:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"X-Mailer: app\r\n"
    b"\r\n"
    b"Hello there.  \r\n"
    b"\r\n"
    b"Bye.\r\n"
)


def _key(tmp_path: Path, name: str, algorithm: str = "rsa-sha256") -> str:
    path = tmp_path / name
    path.write_bytes(new_key(algorithm))
    return str(path)


def _txt(record: str) -> str:
    # Presentation form of a TXT record longer than one 255-octet string (RFC 1035 §3.3).
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


def _dnsfunc(nameserver: str) -> Any:
    """dkimpy's key lookup, asking the loopback DNS server (call it off the server's loop)."""
    host, port = nameserver.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], int(port), 5

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


@pytest.fixture
def signer(tmp_path: Path) -> DkimSigner:
    rsa = load_key("example.com", "s1", _key(tmp_path, "r.pem"))
    ed = load_key("example.com", "s2", _key(tmp_path, "e.pem", "ed25519-sha256"), "ed25519-sha256")
    return DkimSigner([ed, rsa], clock=lambda: 1_790_000_000)


def _verifies(message: bytes, idx: int, dnsfunc: Any) -> bool:
    """Signature number `idx` verifies (dkimpy raises on some failures, returns False on others)."""
    try:
        return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


def _records(signer: DkimSigner) -> dict[bytes, bytes]:
    return {
        f"{k.selector}._domainkey.{k.domain}.".encode(): k.dns_record().encode()
        for keys in signer.by_domain.values()
        for k in keys
    }


async def test_rsa_and_ed25519_signatures_verify_and_a_body_change_breaks_both(
    signer: DkimSigner,
) -> None:
    records = _records(signer)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    signed = await signer.sign(MSG)
    assert signed.endswith(MSG) and signed.count(b"DKIM-Signature:") == 2
    first = signed.split(b"DKIM-Signature:")[1]
    assert b"a=rsa-sha256" in first and b"c=relaxed/relaxed" in first  # RSA on top
    assert b"h=from:to:subject:date:message-id:from;" in first  # present ones, From oversigned
    assert _verifies(signed, 0, dnsfunc) and _verifies(signed, 1, dnsfunc)
    # Relaxed/relaxed: refolding a header and trailing spaces do not matter...
    moved = signed.replace(b"Subject: Your   order", b"Subject: Your\r\n order").replace(
        b"Bye.\r\n", b"Bye.   \r\n"
    )
    assert dkim.verify(moved, dnsfunc=dnsfunc)
    # ...a changed body, a changed signed header or a second From: do.
    tampered = signed.replace(b"Hello there.", b"Hello therE.")
    assert not _verifies(tampered, 0, dnsfunc) and not _verifies(tampered, 1, dnsfunc)
    assert not dkim.verify(signed.replace(b"Your", b"Our"), dnsfunc=dnsfunc)
    second_from = signed.replace(b"X-Mailer: app\r\n", b"From: evil@example.com\r\n")
    assert not dkim.verify(second_from, dnsfunc=dnsfunc)
    # An unsigned header may change freely.
    assert dkim.verify(signed.replace(b"X-Mailer: app", b"X-Mailer: other"), dnsfunc=dnsfunc)


async def test_subdomains_use_the_closest_parent_key_and_other_domains_pass_unsigned(
    signer: DkimSigner,
) -> None:
    sub = MSG.replace(b"news@example.com", b"news@mail.shop.example.com")
    assert b"d=example.com;" in await signer.sign(sub)
    for other in (b"news@example.org", b"news@notexample.com"):
        message = MSG.replace(b"news@example.com", other)
        assert await signer.sign(message) is message
    no_from = MSG.replace(b"From: Shop <news@example.com>\r\n", b"")
    assert await signer.sign(no_from) is no_from
    no_body = b"From: a@example.com\r\nSubject: x\r\n"  # no header/body separator at all
    assert await signer.sign(no_body) is no_body


async def test_one_message_sent_to_several_remotes_is_signed_once(signer: DkimSigner) -> None:
    message = bytes(MSG)
    first, second = await asyncio.gather(signer.sign(message), signer.sign(message))
    assert first is second


async def test_the_signing_child_signs_and_a_dead_child_falls_back_in_process(
    tmp_path: Path,
) -> None:
    key_file = _key(tmp_path, "r.pem")
    entry = config_from_dict(
        {"dkim": {"keys": [{"domain": "example.com", "selector": "s1", "key_file": key_file}]}}
    ).dkim
    signer = load_signer(entry.keys, entry.headers)
    assert signer is not None and signer.process is not None
    key = load_key("example.com", "s1", key_file)
    records = {b"s1._domainkey.example.com.": key.dns_record().encode()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    try:
        signed = await asyncio.gather(*(signer.sign(MSG + b"%d\r\n" % i) for i in range(20)))
        assert signer.process.transport is not None  # the child answered them
        assert all(dkim.verify(m, dnsfunc=dnsfunc) for m in signed)
        assert signer.process.protocol is not None
        signer.process.transport.kill()
        await signer.process.protocol.exited
        again = await signer.sign(MSG + b"after\r\n")
        assert signer.process.failed and dkim.verify(again, dnsfunc=dnsfunc)
    finally:
        await signer.close()


def test_unreadable_or_wrong_keys_are_check_config_problems(tmp_path: Path) -> None:
    rsa = _key(tmp_path, "r.pem")
    ed = _key(tmp_path, "e.pem", "ed25519-sha256")
    (tmp_path / "junk.pem").write_text("not a key\n")
    cases = {
        str(tmp_path / "missing.pem"): "No such file",
        str(tmp_path / "junk.pem"): "not an unencrypted PEM private key",
        ed: "not an RSA key",
    }
    for path, why in cases.items():
        cfg = config_from_dict(
            {
                "store": {"path": str(tmp_path / "s")},
                "dkim": {"keys": [{"domain": "example.com", "selector": "s", "key_file": path}]},
            }
        )
        (problem,) = problems(cfg)
        assert problem.startswith("dkim.keys[0].key_file: ") and why in problem
        with pytest.raises(DkimKeyError):
            load_signer(cfg.dkim.keys, cfg.dkim.headers)
    good = {"domain": "example.com", "selector": "s", "key_file": rsa}
    cfg = config_from_dict({"store": {"path": str(tmp_path / "s")}, "dkim": {"keys": [good]}})
    assert problems(cfg) == []


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        (
            [
                {
                    "domain": "example.com",
                    "selector": "s",
                    "key_file": "k",
                    "algorithm": "ed25519-sha256",
                }
            ],
            "needs an rsa-sha256 key beside it",
        ),
        ([{"domain": "example.com", "selector": "a b", "key_file": "k"}], "selector"),
        ([{"domain": "not a domain", "selector": "s", "key_file": "k"}], "not a domain"),
        ([{"domain": "example.com", "selector": "s", "key_file": "k", "algorithm": "rsa"}], "rsa"),
        ([{"domain": "example.com", "selector": "s"}], "key_file: missing"),
        (
            [{"domain": "example.com", "selector": "a", "key_file": "k"}] * 2,
            "a second rsa-sha256 key",
        ),
    ],
    ids=["ed25519-alone", "selector", "domain", "algorithm", "no-file", "two-rsa"],
)
def test_bad_key_entries_are_config_errors(keys: list[dict[str, str]], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        config_from_dict({"dkim": {"keys": keys}})


def test_a_key_entry_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dkim.keys\[0\]: expected a table"):
        config_from_dict({"dkim": {"keys": ["example.com"]}})


def test_headers_must_include_from() -> None:
    with pytest.raises(ConfigError, match="must include From"):
        config_from_dict({"dkim": {"headers": ["To", "Subject"]}})


def test_keygen_writes_a_key_and_prints_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dkim", "keygen", "Example.COM", "s2026", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "example.com.s2026.pem"
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = load_key("example.com", "s2026", str(path))
    assert f"s2026._domainkey.example.com. IN TXT {_txt(key.dns_record())}" in out
    assert f'key_file = "{path}"' in out
    # Never over an existing key (its public half may already be published).
    assert main(["dkim", "keygen", "example.com", "s2026", "--dir", str(tmp_path)]) == 1
    assert "File exists" in capsys.readouterr().err
    assert main(["dkim", "keygen", "example.com", "bad selector"]) == 2


async def _send(svc: Service, message: bytes) -> None:
    code, text = await send_one(svc, "b@dest.test", "news@example.com", message)
    assert code == 250, text


def _published_key(tmp_path: Path, dns_server: DNSServer) -> str:
    """A new RSA key for example.com, selector "sel", its record served by `dns_server`."""
    key_file = _key(tmp_path, "r.pem")
    key = load_key("example.com", "sel", key_file)
    dns_server.add("sel._domainkey.example.com", "TXT", _txt(key.dns_record()))
    return key_file


async def test_mail_through_bouncer_arrives_signed_and_verifies_against_dns(
    tmp_path: Path, fake_mx: FakeMX, dns_server: DNSServer, relay_service: Any
) -> None:
    key_file = _published_key(tmp_path, dns_server)
    svc = await relay_service(
        {
            "delivery": {"routes": {"dest.test": fake_mx.address}},
            "dkim": {"keys": [{"domain": "example.com", "selector": "sel", "key_file": key_file}]},
        }
    )
    await _send(svc, MSG)
    (received,) = fake_mx.messages
    # Signed after bouncer's own Received:, so the signature sits above it.
    assert received.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert received.data.index(b"Received: from client.test") > 0
    lookup = _dnsfunc(dns_server.nameserver)
    assert await asyncio.to_thread(dkim.verify, received.data, dnsfunc=lookup)
    assert ("sel._domainkey.example.com.", "TXT") in dns_server.queries
    changed = received.data.replace(b"Bye.", b"Bye!")
    assert not await asyncio.to_thread(dkim.verify, changed, dnsfunc=lookup)


async def test_queue_retries_are_signed_too(
    tmp_path: Path, make_fake_mx: Any, dns_server: DNSServer, relay_service: Any
) -> None:
    from tests.support.wait import until

    key_file = _published_key(tmp_path, dns_server)
    mx = await make_fake_mx()
    mx.data_reply = "451 4.3.0 try later"
    svc = await relay_service(
        {
            "delivery": {"routes": {"dest.test": mx.address}},
            "queue": {"schedule": ["1s"], "poll_interval": 0.05},
            "dkim": {"keys": [{"domain": "example.com", "selector": "sel", "key_file": key_file}]},
        }
    )
    await _send(svc, MSG)  # queued (soft_bounce = "queue"): the client sees 250
    mx.data_reply = "250 2.0.0 Ok"
    await until(lambda: mx.messages, "the retry to arrive")
    (received,) = mx.messages
    assert received.data.count(b"DKIM-Signature:") == 1  # the stored copy was never signed
    assert await asyncio.to_thread(
        dkim.verify, received.data, dnsfunc=_dnsfunc(dns_server.nameserver)
    )


def _opendkim_skip() -> str | None:
    if shutil.which("opendkim-testmsg") is None:
        return "opendkim-testmsg not installed (Debian package opendkim-tools)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        # opendkim-testmsg asks the system resolver only: the test gives it its own
        # /etc/resolv.conf in a private mount namespace and serves DNS on port 53.
        return "needs root and unshare to point opendkim-testmsg's resolver at a test server"
    return None


@pytest.mark.skipif(_opendkim_skip() is not None, reason=str(_opendkim_skip()))
async def test_opendkim_verifies_what_bouncer_signed(
    tmp_path: Path, fake_mx: FakeMX, relay_service: Any
) -> None:
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    try:
        server = await DNSServer(host=host, port=53).start()
    except OSError as exc:
        pytest.skip(f"cannot serve DNS on {host}:53: {exc}")
    try:
        key_file = _key(tmp_path, "r.pem")
        key = load_key("example.com", "sel", key_file)
        server.add("sel._domainkey.example.com", "TXT", _txt(key.dns_record()))
        svc = await relay_service(
            {
                "delivery": {"routes": {"dest.test": fake_mx.address}},
                "dkim": {
                    "keys": [{"domain": "example.com", "selector": "sel", "key_file": key_file}]
                },
            }
        )
        await _send(svc, MSG)
        (received,) = fake_mx.messages
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {host}\noptions attempts:1 timeout:2\n")
        script = 'mount --bind "$1" /etc/resolv.conf && exec opendkim-testmsg'

        async def testmsg(message: bytes) -> subprocess.CompletedProcess[bytes]:
            return await asyncio.to_thread(
                subprocess.run,
                ["unshare", "-m", "sh", "-c", script, "sh", str(resolv)],
                input=message,
                capture_output=True,
                timeout=30,
            )

        # As a mail file on disk: LF line ends (the tool's own reader turns them into CRLF).
        good = await testmsg(received.data.replace(b"\r\n", b"\n"))
        assert good.returncode == 0 and good.stdout == b"", good.stderr
        assert ("sel._domainkey.example.com.", "TXT") in server.queries
        bad = await testmsg(received.data.replace(b"\r\n", b"\n").replace(b"Bye.", b"Bye!"))
        assert bad.returncode != 0 and b"bad" in bad.stderr.lower() + bad.stdout.lower(), bad
    finally:
        await server.stop()


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"  ", b"."])))
def test_fast_relaxed_body_matches_dkimpy(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert relaxed_body(body) == dkim.CanonicalizationPolicy.from_c_value(
        b"relaxed/relaxed"
    ).canonicalize_body(body)


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        (b" Shop <news@Example.COM>\r\n", "example.com"),
        (b" news@example.com\r\n", "example.com"),
        (b' "Shop, Inc." <news@example.com>\r\n', "example.com"),
        (b" news@example.com (Shop)\r\n", "example.com"),
        (b" =?utf-8?q?Caf=C3=A9?= <a@b.example.com>\r\n", "b.example.com"),
        (b" undisclosed\r\n", ""),
    ],
)
def test_from_domain(value: bytes, domain: str) -> None:
    assert _domain_of_from(value) == domain
