# This module signs messages on their way out (DKIM, RFC 6376). It reads key files once, at
# startup, and never touches the network. Canonicalisation and the header hash are dkimpy's
# (the library receivers verify with); the signature itself is OpenSSL's, through
# `cryptography`, because dkimpy's pure-Python RSA costs ~6 ms per 2048-bit signature.
"""DKIM signing: `DkimSigner.sign(message) -> message with DKIM-Signature headers on top`.

Which key signs: the one whose `domain` is the From: address's domain, else the closest
parent domain with a key (a key for example.com signs mail from news.example.com, d= then
aligns under DMARC's relaxed mode). A domain may have one `rsa-sha256` key and, in addition,
one `ed25519-sha256` key (RFC 8463): such mail carries both signatures. A message without a
From: domain that has a key leaves unchanged.

Both signatures are relaxed/relaxed (RFC 6376 §3.4.2 and §3.4.4: survives header refolding
and trailing-space changes on the way). The headers signed are those of `headers` present in
the message, plus From: once more ("oversigning": a second From: added later breaks the
signature, RFC 6376 §8.15).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from relay.config.schema import DKIM_HEADERS, DkimKeyConfig
from relay.outbound.signer_process import SignerProcess

DEFAULT_HEADERS = DKIM_HEADERS
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
_RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class DkimKeyError(ValueError):
    """A key file that cannot be used: missing, unreadable, or not the algorithm's key."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str  # one of ALGORITHMS
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.key.sign(digest)  # RFC 8463 §3: Ed25519 over the SHA-256 hash

    def dns_record(self) -> str:
        """The TXT record's value to publish at <selector>._domainkey.<domain>."""
        return dns_record(self.key)


def load_key(domain: str, selector: str, path: str, algorithm: str = "rsa-sha256") -> SigningKey:
    """Read a PEM private key (PKCS#8 or PKCS#1) and check it fits `algorithm`."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(f"{path}: not an unencrypted PEM private key") from exc
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"{path}: not an RSA key (algorithm is rsa-sha256)")
        if key.key_size < 1024:  # RFC 8301 §3.2: verifiers refuse RSA keys under 1024 bits
            raise DkimKeyError(f"{path}: RSA key of {key.key_size} bits; use at least 1024 (2048)")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{path}: not an Ed25519 key (algorithm is ed25519-sha256)")
    return SigningKey(domain.lower().rstrip("."), selector, algorithm, key)


def dns_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """`v=DKIM1; k=…; p=…` for a private key (RFC 6376 §3.6.1; RFC 8463 §4 for Ed25519)."""
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def new_key(algorithm: str = "rsa-sha256", bits: int = 2048) -> bytes:
    """A fresh private key as PKCS#8 PEM."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_signer(
    keys: Sequence[DkimKeyConfig], headers: Sequence[str], in_process: bool = False
) -> DkimSigner | None:
    """The signer for the [[dkim.keys]] entries (None without any); raises DkimKeyError
    naming the entry whose file cannot be used. The signing work (canonicalisation, hashes
    and the private-key operation) goes to a child process (relay/outbound/signer_process.py)
    unless `in_process`."""
    loaded = []
    for n, entry in enumerate(keys):
        try:
            loaded.append(load_key(entry.domain, entry.selector, entry.key_file, entry.algorithm))
        except DkimKeyError as exc:
            raise DkimKeyError(f"dkim.keys[{n}].key_file: {exc}") from exc
    if not loaded:
        return None
    child = None if in_process else SignerProcess(keys, headers)
    return DkimSigner(loaded, headers, process=child)


class DkimSigner:
    """Signs with the keys it was given; `sign` is cheap to call on unsigned domains."""

    def __init__(
        self,
        keys: Sequence[SigningKey],
        headers: Sequence[str] = DEFAULT_HEADERS,
        clock: Callable[[], float] = time.time,
        process: SignerProcess | None = None,
    ) -> None:
        self.by_domain: dict[str, list[SigningKey]] = {}
        for key in keys:
            self.by_domain.setdefault(key.domain, []).append(key)
        for entries in self.by_domain.values():
            # RSA first: the signature every verifier understands goes on top.
            entries.sort(key=lambda k: k.algorithm != "rsa-sha256")
        self.headers = frozenset(h.lower().encode("ascii") for h in headers)
        self.clock = clock
        self.process = process
        # The live relay sends one message to several remotes at once: sign it once.
        self._last: tuple[bytes, asyncio.Future[bytes]] | None = None

    def keys_for(self, domain: str) -> list[SigningKey]:
        """The keys for `domain` or its closest parent that has any."""
        labels = domain.lower().rstrip(".").split(".")
        for n in range(len(labels) - 1):
            keys = self.by_domain.get(".".join(labels[n:]))
            if keys:
                return keys
        return []

    async def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature header per key of its From: domain prepended,
        or `message` itself when no key applies or the header cannot be parsed."""
        last = self._last
        if last is not None and last[0] is message:
            return await asyncio.shield(last[1])
        future = asyncio.get_running_loop().create_future()
        self._last = (message, future)
        try:
            signed = await self._sign(message)
        except BaseException:
            future.cancel()  # the sends sharing it were cancelled together (client gone)
            raise
        future.set_result(signed)
        return signed

    async def _sign(self, message: bytes) -> bytes:
        end = _HEADER_END.search(message)
        if end is None:
            return message
        # A first look at From: only, so unsigned mail costs one search (no header parse).
        line = _FROM_LINE.search(message, 0, end.start() + 2)
        if line is None or not self.keys_for(_domain_of_from(line.group(1))):
            return message
        block = None
        if self.process is not None:
            block = await self.process.sign(message)
        if block is None:
            block = self.signatures(message)
        return block + bytes(message) if block else message

    def signatures(self, message: bytes) -> bytes:
        """The DKIM-Signature header lines for `message` (b"" when none applies)."""
        end = _HEADER_END.search(message)
        if end is None:
            return b""
        head = bytes(message[: end.start()]) + b"\r\n"
        try:
            headers, _ = dkim.rfc822_parse(head)
        except dkim.MessageFormatError:
            return b""
        keys = self.keys_for(_from_domain(headers))
        if not keys:
            return b""
        body = relaxed_body(bytes(message[end.end() :]))
        body_hash = base64.b64encode(hashlib.sha256(body).digest())
        include = [n.lower() for n, _ in headers if n.lower() in self.headers]
        include.append(b"from")  # oversign: no second From: can be added (RFC 6376 §8.15)
        # Only the signed headers are canonicalised, in the order h= lists them (§5.4.2).
        canonical = _RELAXED.canonicalize_headers(dkim.select_headers(headers, include))
        stamp = str(int(self.clock())).encode("ascii")
        out = []
        for key in keys:
            value, digest = _unsigned(key, include, canonical, body_hash, stamp)
            # b= last and on its own folded lines: what was hashed (b= empty) stays as it was.
            b = _fold_b(base64.b64encode(key.sign_digest(digest)))
            out.append(b"DKIM-Signature: " + value + b"\r\n\t" + b + b"\r\n")
        return b"".join(out)

    async def close(self) -> None:
        if self.process is not None:
            await self.process.close()


def relaxed_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 §3.4.4). Most bodies have no run of
    whitespace and no trailing whitespace: for them it only trims the empty lines at the
    end, found with a few memchr-speed searches instead of dkimpy's three regex passes."""
    crlf = body.count(b"\r\n")
    plain = body.count(b"\r") == crlf == body.count(b"\n")  # CRLF line ends only
    if not plain or b"\t" in body or b"  " in body or b" \r\n" in body or body.endswith(b" "):
        return bytes(_RELAXED.canonicalize_body(body))
    trimmed = body.rstrip(b"\r\n")
    return trimmed + b"\r\n" if trimmed else b""


def _unsigned(
    key: SigningKey,
    include: list[bytes],
    canonical: list[tuple[bytes, bytes]],
    body_hash: bytes,
    stamp: bytes,
) -> tuple[bytes, bytes]:
    """The header's value with an empty b=, and the digest its signature signs."""
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", stamp),
        (b"h", b":".join(include)),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    value: bytes = dkim.fold(
        b"; ".join(b"=".join(f) for f in fields), namelen=len(b"DKIM-Signature")
    )
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, _RELAXED, canonical, include, (b"DKIM-Signature", b" " + value), {})
    return value, hasher.digest()


def _fold_b(b: bytes, width: int = 72) -> bytes:
    # FWS inside b= is ignored by verifiers (RFC 6376 §3.5 "b=": whitespace is ignored).
    return b"\r\n\t".join(b[i : i + width] for i in range(0, len(b), width))


_PLAIN_FROM = re.compile(rb"^\s*(?:[^\"(),:;<>@]*<)?[^\s\"(),:;<>@]+@([A-Za-z0-9.-]+)>?\s*$")


_FROM_LINE = re.compile(rb"(?im)^from[ \t]*:(.*(?:\r?\n[ \t].*)*)")


def _from_domain(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"from":
            return _domain_of_from(value)
    return ""


def _domain_of_from(value: bytes) -> str:
    plain = _PLAIN_FROM.match(value)  # `Name <a@b>` or `a@b`: most From: lines
    if plain:
        return plain.group(1).decode("ascii").lower()
    for _, address in getaddresses([value.decode("utf-8", "replace")]):
        if "@" in address:
            return address.rpartition("@")[2].strip().lower()
    return ""
