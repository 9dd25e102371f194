# AUTH and STARTTLS building blocks (relay/inbound/auth.py): hashes verify only the right password,
# bad users files are refused up front, and an aiosmtpd server built with our settings
# offers AUTH only after STARTTLS and accepts only the right password.
from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from relay.inbound.auth import (
    AuthConfigError,
    UsersAuthenticator,
    hash_password,
    load_users,
    parse_users,
    smtp_security_kwargs,
    verify_password,
)
from tests.security.conftest import PASSWORD, USER

CHEAP = 1 << 10  # scrypt N for tests


def test_hash_round_trip_and_wrong_password() -> None:
    encoded = hash_password("s3cret", n=CHEAP)
    assert encoded.startswith("scrypt$1024$8$1$")
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert not verify_password("", encoded)


def test_same_password_gets_different_salts() -> None:
    assert hash_password("x", n=CHEAP) != hash_password("x", n=CHEAP)


@pytest.mark.parametrize(
    "line",
    [
        "bob",  # no hash
        ":scrypt$1024$8$1$c2FsdA==$" + "A" * 44,  # no user
        "bob:plaintext",  # not scrypt
        "bob:scrypt$1000$8$1$c2FsdA==$" + "A" * 44,  # N not a power of two
        "bob:scrypt$1073741824$8$1$c2FsdA==$" + "A" * 44,  # N too costly (DoS)
        "bob:scrypt$1024$8$1$!!!$" + "A" * 44,  # bad base64
        "bob:md5$abc",
    ],
)
def test_bad_users_lines_are_refused(line: str) -> None:
    with pytest.raises(AuthConfigError):
        parse_users(line + "\n")


def test_load_users_missing_file(tmp_path: Any) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_users(tmp_path / "nope")


def test_authenticator_checks_user_and_password(users_file: str) -> None:
    auth = UsersAuthenticator(load_users(users_file))
    assert auth.check(USER.encode(), PASSWORD.encode())
    assert auth.check(USER.encode(), PASSWORD.encode())  # cached path gives the same answer
    assert not auth.check(USER.encode(), b"wrong")
    assert not auth.check(b"mallory", PASSWORD.encode())
    assert not auth.check(b"\xff\xfe", PASSWORD.encode())
    assert not auth.check(USER.encode(), b"x" * 5000)  # over the length bound


class _Accept:
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        # Stand-in for the relay check: only authenticated sessions may add recipients.
        if not session.authenticated:
            return "554 5.7.1 Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


@pytest.fixture
async def secured_server(tls_files: tuple[str, str], users_file: str) -> AsyncIterator[int]:
    kwargs = smtp_security_kwargs(tls_files[0], tls_files[1], users_file)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Accept(), hostname="bouncer.test", loop=loop, **kwargs), "127.0.0.1", 0
    )
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_auth_offered_only_after_starttls(secured_server: int) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=secured_server, start_tls=False)
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    # AUTH in clear text is refused even with the right password.
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    code, _ = await client.execute_command(b"AUTH", b"PLAIN", plain.encode())
    assert code == 538  # RFC 4954 §6: encryption required
    await client.starttls(validate_certs=False)
    await client.ehlo()
    assert client.supports_extension("auth")
    assert set(client.server_auth_methods) == {"plain", "login"}
    await client.quit()


@pytest.mark.parametrize("method", ["auth_plain", "auth_login"])
async def test_auth_after_starttls_right_and_wrong(secured_server: int, method: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=secured_server, start_tls=False)
    await client.connect()
    await client.starttls(validate_certs=False)
    await client.ehlo()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
        await getattr(client, method)(USER, "wrong password")
    assert err.value.code == 535
    # A failed AUTH does not authenticate: relaying is still refused.
    await client.mail("a@b.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await client.rcpt("x@remote.test")
    assert refused.value.code == 554
    await client.rset()
    response = await getattr(client, method)(USER, PASSWORD)
    assert response.code == 235
    await client.mail("a@b.test")
    assert (await client.rcpt("x@remote.test")).code == 250
    await client.quit()


def test_without_users_no_mechanism_is_enabled(tls_files: tuple[str, str]) -> None:
    kwargs = smtp_security_kwargs(tls_files[0], tls_files[1], "")
    assert "authenticator" not in kwargs
    assert set(kwargs["auth_exclude_mechanism"]) == {"PLAIN", "LOGIN"}
    assert kwargs["auth_require_tls"] is True
