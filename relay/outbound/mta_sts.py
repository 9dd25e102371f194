# This module finds a recipient domain's MTA-STS policy: the `_mta-sts` TXT record through
# bouncer's resolver, the policy file over verified HTTPS, a cache in LMDB. What a policy
# means for a route is decided in policy/mta_sts.py; applying it is relay/outbound/delivery.py's.
"""MTA-STS policy discovery and cache (RFC 8461 §3, §5).

`StsPolicies.lookup(domain)` returns the policy to apply, or None. A cached policy is
used until its max_age runs out; the TXT record is still asked each time (dnspython's
cache honours its TTL), and a changed id fetches the policy again. A policy in use is
fetched again in the background once a day (or at half its max_age), so it does not
expire while the domain still publishes it. When the record or the
fetch fails, a cached policy that has not expired stays in force (§5.1: an attacker who
blocks DNS or HTTPS must not turn a policy off). The fetch follows no redirect, reads at
most 64 KB, gives up after `timeout`, and checks the certificate of
`mta-sts.<domain>` like `starttls = "verify"` does.

Failures are kept in TLS-RPT's shape (RFC 8460 §4.4): `failures` lists records such as
`{"policy-type": "sts", "policy-domain": ..., "result-type": "validation-failure", ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
import lmdb
from aiohttp.abc import AbstractResolver, ResolveResult

from policy.mta_sts import MAX_POLICY_BYTES, StsPolicy, parse_policy, record_id
from policy.reply import Reply
from relay.outbound.tls import verify_context
from relay.store.writer import Writer

log = logging.getLogger(__name__)

CACHE_DB = b"mta_sts_policies"
FAILURES_DB = b"tlsrpt_failures"  # TLS-RPT failure-details records, counted per day
MAX_FAILURES = 1000  # TLS-RPT records kept in memory for a report
REFRESH_AFTER = 86400.0  # seconds: a policy in use is fetched again daily (RFC 8461 §5.1)


class _BouncerResolver(AbstractResolver):
    """aiohttp's name lookups through bouncer's resolver (`[dns] nameservers`)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            answer = await self.resolver.resolve(host, "A")
        except dns.exception.DNSException as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        return [
            ResolveResult(
                hostname=host, host=r.address, port=port, family=socket.AF_INET, proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for r in answer
        ]  # fmt: skip

    async def close(self) -> None:
        return None


class StsPolicies:
    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        env: lmdb.Environment | None,
        writer: Writer | None,
        *,
        port: int = 443,
        timeout: float = 10.0,
        ca_file: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.env = env
        self.writer = writer
        self.db = env.open_db(CACHE_DB, create=True) if env is not None else None
        self.failures_db = env.open_db(FAILURES_DB, create=True) if env is not None else None
        self.port = port
        self.timeout = timeout
        self.ca_file = ca_file
        self.clock = clock
        self.memory: dict[str, tuple[StsPolicy, float]] = {}
        self.failures: list[dict[str, Any]] = []
        self.refreshing: dict[str, asyncio.Task[StsPolicy | None]] = {}
        self.writing: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def lookup(self, domain: str) -> StsPolicy | None:
        """The policy in force for `domain` (mode "none" counts as no policy)."""
        domain = domain.lower().rstrip(".")
        now = self.clock()
        cached = self._cached(domain, now)
        ident = await self._record(domain)
        if ident is None:
            return _active(cached)
        if cached is not None and cached.id == ident:
            if self._due(domain, cached, now) and domain not in self.refreshing:
                # §5.1: refresh before expiry, off the delivery's path
                task = asyncio.create_task(self._fetch_policy(domain, ident, cached, now))
                self.refreshing[domain] = task
                task.add_done_callback(lambda _: self.refreshing.pop(domain, None))
            return _active(cached)
        return await self._fetch_policy(domain, ident, cached, now)

    def _due(self, domain: str, policy: StsPolicy, now: float) -> bool:
        expires = self.memory[domain][1]
        fetched = expires - policy.max_age
        return now - fetched >= min(REFRESH_AFTER, policy.max_age / 2)

    async def _fetch_policy(
        self, domain: str, ident: str, cached: StsPolicy | None, now: float
    ) -> StsPolicy | None:
        """Fetch, parse and cache; on failure the cached policy (if any) stays in force."""
        try:
            body = await self._fetch(domain)
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("MTA-STS policy for %s not fetched: %s", domain, exc)
            webpki = isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError)
            result = "sts-webpki-invalid" if webpki else "sts-policy-fetch-error"
            self.record_failure(domain, result, failure_reason_code=str(exc)[:200])
            return _active(cached)
        try:
            policy = parse_policy(body, ident)
        except ValueError as exc:
            log.warning("MTA-STS policy for %s not valid: %s", domain, exc)
            self.record_failure(domain, "sts-policy-invalid", failure_reason_code=str(exc))
            return _active(cached)
        await self._store(domain, policy, now)
        log.info("MTA-STS policy for %s: mode %s, max_age %d", domain, policy.mode, policy.max_age)
        return _active(policy)

    def record_session_failure(self, domain: str, reply: Reply) -> None:
        """A refused TLS session under `enforce`, in TLS-RPT's words (RFC 8460 §4.3)."""
        text = reply.text
        if reply.enhanced == "4.7.4":
            result = "starttls-not-supported"
        elif "Hostname mismatch" in text:
            result = "certificate-host-mismatch"
        elif "expired" in text:
            result = "certificate-expired"
        elif "certificate not trusted" in text:
            result = "certificate-not-trusted"
        else:
            result = "validation-failure"
        mx = re.search(r"with ([^\s\[]+)\[", text)
        details = {"receiving_mx_hostname": mx.group(1)} if mx else {}
        self.record_failure(domain, result, failure_reason_code=text[:200], **details)

    def record_failure(self, domain: str, result: str, **details: Any) -> None:
        """Keep one TLS-RPT failure-details record (RFC 8460 §4.4) for a later report."""
        record: dict[str, Any] = {
            "policy-type": "sts",
            "policy-domain": domain,
            "result-type": result,
            "failed-session-count": 1,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
        }
        record.update({k.replace("_", "-"): v for k, v in details.items()})
        self.failures.append(record)
        del self.failures[:-MAX_FAILURES]
        if self.env is not None and self.writer is not None:
            task = asyncio.get_running_loop().create_task(self._count(record))
            self.writing.add(task)
            task.add_done_callback(self.writing.discard)

    async def _count(self, record: dict[str, Any]) -> None:
        """Add the failure to its day's count in LMDB: one record per day, domain, result
        and MX host, as a TLS-RPT report aggregates them (RFC 8460 §4.4)."""
        assert self.env is not None and self.writer is not None
        key = "\x00".join(
            (record["date"][:10], record["policy-domain"], record["result-type"],
             str(record.get("receiving-mx-hostname", "")))
        ).encode()  # fmt: skip
        env, db = self.env, self.failures_db

        def add() -> None:
            with env.begin(write=True, db=db) as txn:
                old = txn.get(key)
                kept = dict(record) if old is None else json.loads(old)
                if old is not None:
                    kept["failed-session-count"] += 1
                txn.put(key, json.dumps(kept).encode())

        try:
            await self.writer.run(add)
        except lmdb.Error as exc:
            log.warning("TLS-RPT failure record not kept: %s", exc)

    def stored_failures(self) -> list[dict[str, Any]]:
        """The failure records in LMDB, one per day, domain, result type and MX host."""
        if self.env is None:
            return []
        with self.env.begin(db=self.failures_db) as txn:
            return [json.loads(value) for _, value in txn.cursor()]

    async def _record(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except dns.exception.DNSException:
            return None
        texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        return record_id(texts)

    async def _fetch(self, domain: str) -> str:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_BouncerResolver(self.resolver),
                ssl=verify_context(self.ca_file),
                limit=20,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"  # RFC 8461 §3.3
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:  # §3.3: no redirects; only 200 counts
                raise ValueError(f"{url}: HTTP {response.status}")
            if response.content_type != "text/plain":
                raise ValueError(f"{url}: media type {response.content_type}, not text/plain")
            body = await response.content.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise ValueError(f"{url}: larger than {MAX_POLICY_BYTES} bytes")
        return body.decode("utf-8", "replace")

    def _cached(self, domain: str, now: float) -> StsPolicy | None:
        hit = self.memory.get(domain)
        if hit is None and self.env is not None:
            with self.env.begin(db=self.db) as txn:
                raw = txn.get(domain.encode())
            if raw is not None:
                expires, _, text = raw.decode().partition(" ")
                hit = (StsPolicy.from_json(text), float(expires))
                self.memory[domain] = hit
        if hit is None or hit[1] <= now:
            return None
        return hit[0]

    async def _store(self, domain: str, policy: StsPolicy, now: float) -> None:
        expires = now + policy.max_age
        self.memory[domain] = (policy, expires)
        if self.env is None or self.writer is None:
            return
        value = f"{expires} {policy.to_json()}".encode()
        env, db = self.env, self.db

        def put() -> None:
            with env.begin(write=True, db=db) as txn:
                txn.put(domain.encode(), value)

        try:
            await self.writer.run(put)
        except lmdb.Error as exc:  # the policy still applies; only the cache is lost
            log.warning("MTA-STS policy for %s not cached: %s", domain, exc)

    async def close(self) -> None:
        if self.writing:
            await asyncio.gather(*self.writing)  # failure counts already handed over
        for task in list(self.refreshing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # let the connector's transports close (aiohttp docs)


def _active(policy: StsPolicy | None) -> StsPolicy | None:
    return policy if policy is not None and policy.mode != "none" else None
