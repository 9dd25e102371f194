# Inbound authentication: who may relay besides `allowed_clients`. AUTH PLAIN/LOGIN is
# checked against a users file of scrypt hashes and is only ever offered after STARTTLS,
# so a password never crosses the wire in clear text.
"""Users file, scrypt password hashes, the aiosmtpd authenticator and the TLS context.

Users file format, one user per line (blank lines and `#` comments allowed)::

    alice:scrypt$16384$8$1$<salt, base64>$<hash, base64>

`bouncer passwd` (relay/cli/passwd.py) prints such a line. scrypt comes from
the standard library (hashlib.scrypt, RFC 7914), so there is no extra dependency.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# RFC 7914 §2 parameters. N=2^14, r=8, p=1 is the interactive-login cost (about 16 MB and a
# few tens of ms); it is stored with each hash so it can be raised later without a migration.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
# An SMTP password longer than this is an attack on the hash cost, not a password.
MAX_PASSWORD_BYTES = 1024


class AuthConfigError(Exception):
    """The users file or the TLS certificate cannot be used; startup fails (exit 3)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P, salt: bytes = b""
) -> str:
    """Encode `password` as `scrypt$N$r$p$salt$hash` with a fresh random salt."""
    salt = salt or os.urandom(SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=KEY_BYTES
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True)
class ScryptHash:
    """A parsed `scrypt$N$r$p$salt$hash` string."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, encoded: str) -> ScryptHash:
        parts = encoded.strip().split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not a scrypt$N$r$p$salt$hash string")
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            key = base64.b64decode(parts[5], validate=True)
        except ValueError as exc:
            raise ValueError(f"bad scrypt field: {exc}") from exc
        # N must be a power of two > 1 (RFC 7914 §2); bound the cost so a hostile file
        # cannot make each login allocate gigabytes.
        if n < 2 or n & (n - 1) or n > 1 << 20 or not 0 < r <= 32 or not 0 < p <= 16:
            raise ValueError(f"scrypt parameters out of range: N={n} r={r} p={p}")
        if not salt or len(key) < 16:
            raise ValueError("scrypt salt empty or hash too short")
        return cls(n, r, p, salt, key)

    def verify(self, password: bytes) -> bool:
        if len(password) > MAX_PASSWORD_BYTES:
            return False
        candidate = hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.n * self.r + (1 << 20),
            dklen=len(self.key),
        )
        return hmac.compare_digest(candidate, self.key)


def verify_password(password: str | bytes, encoded: str) -> bool:
    """True when `password` matches the `scrypt$...` string (constant-time compare)."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return ScryptHash.parse(encoded).verify(raw)


def parse_users(text: str, source: str = "users file") -> dict[str, ScryptHash]:
    """Parse users-file text; raise AuthConfigError naming every bad line."""
    users: dict[str, ScryptHash] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name:
            problems.append(f"{source}:{number}: expected user:scrypt$...")
            continue
        try:
            users[name] = ScryptHash.parse(encoded)
        except ValueError as exc:
            problems.append(f"{source}:{number}: {exc}")
    if problems:
        raise AuthConfigError("; ".join(problems))
    return users


def load_users(path: str | Path) -> dict[str, ScryptHash]:
    """Read the users file at `path` (see the module docstring for the format)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read users file {path}: {exc}") from exc
    return parse_users(text, str(path))


class UsersAuthenticator:
    """aiosmtpd `authenticator=` callable: AUTH PLAIN and LOGIN against the users file.

    Successful checks are remembered by a digest of (user, password, stored hash), so a
    client that authenticates on every connection pays scrypt's cost once, not each time;
    the digest is keyed with a per-process secret, so the cache holds no password.
    """

    MECHANISMS = frozenset({"PLAIN", "LOGIN"})

    def __init__(self, users: dict[str, ScryptHash], cache_size: int = 1024) -> None:
        self.users = users
        self._secret = os.urandom(32)
        self._ok: dict[bytes, None] = {}
        self._cache_size = cache_size

    def check(self, login: bytes, password: bytes) -> bool:
        """True when `login` exists and `password` matches its hash."""
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            return False
        stored = self.users.get(name)
        if stored is None:
            return False
        token = hmac.new(self._secret, login + b"\0" + password + b"\0" + stored.key, "sha256")
        digest = token.digest()
        if digest in self._ok:
            return True
        if not stored.verify(password):
            return False
        if len(self._ok) >= self._cache_size:
            self._ok.pop(next(iter(self._ok)))
        self._ok[digest] = None
        return True

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if mechanism not in self.MECHANISMS or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = self.check(auth_data.login, auth_data.password)
        if not ok:
            log.debug("AUTH %s failed for %r from %s", mechanism, auth_data.login, session.peer)
            # The mail log's line (Postfix's wording, for fail2ban) comes from the handler.
            report = getattr(getattr(server, "event_handler", None), "report_auth_failure", None)
            if report is not None:
                report(mechanism)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server-side context for inbound STARTTLS; TLS 1.2 or newer."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AuthConfigError(f"cannot load tls_cert/tls_key {cert}, {key}: {exc}") from exc
    return ctx


def smtp_security_kwargs(tls_cert: str, tls_key: str, users_file: str) -> dict[str, Any]:
    """Keyword arguments for aiosmtpd's `SMTP(...)` from the [server] settings.

    AUTH is advertised and accepted only on a TLS session (`auth_require_tls`); with a
    users file but no certificate, AUTH is never offered at all, by design.
    """
    kwargs: dict[str, Any] = {"auth_require_tls": True, "auth_required": False}
    if tls_cert:
        kwargs["tls_context"] = make_tls_context(tls_cert, tls_key)
    if users_file:
        kwargs["authenticator"] = UsersAuthenticator(load_users(users_file))
    else:
        # No users: no mechanism at all (aiosmtpd would otherwise offer always-failing ones).
        kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
    return kwargs


def ehlo_without_empty_auth(responses: list[str]) -> list[str]:
    """Drop aiosmtpd's bare "250-AUTH " line when no mechanism is enabled (for handle_EHLO)."""
    return [line for line in responses if line.rstrip() not in ("250-AUTH", "250 AUTH")]
