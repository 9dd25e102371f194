# One remote transaction = one pooled session carrying MAIL FROM, then RCPT per recipient,
# then DATA. The live relay (inbound.py) drives it step by step while its client waits;
# the queue runner calls deliver_message() for a whole message. Both share this code, the
# MX/route lookup and the session pool. Nothing here decides what a reply means.
"""Delivery: routes, the session pool and remote transactions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from policy.address import domain_of
from policy.mta_sts import StsPolicy
from policy.reply import Reply
from relay.outbound.dane import DaneLookup
from relay.outbound.mta_sts import StsPolicies
from relay.outbound.pool import Busy, SessionPool
from relay.outbound.routes import MXResolver
from relay.outbound.session import RemoteSession
from relay.outbound.values import Outcome, RemoteSender, Route, identity_sender

log = logging.getLogger(__name__)


class Signer(Protocol):
    """DKIM (relay/outbound/dkim.py): the message as it leaves, signed when a key applies."""

    async def sign(self, message: bytes) -> bytes: ...
    async def close(self) -> None: ...


@dataclass
class RemoteTransaction:
    """MAIL FROM sent on a lent session; recipients are added one RCPT at a time.

    If the session could not be opened or MAIL was refused, `failure` holds that
    Outcome and every recipient gets it without further traffic.
    """

    pool: SessionPool
    route: Route
    sender: str
    session: RemoteSession | None = None
    failure: Outcome | None = None
    accepted: list[str] = field(default_factory=list)
    done: bool = False
    early: tuple[str, Reply] | None = None  # a pipelined first RCPT's reply, not yet asked for
    busy: bool = False  # `failure` is the destination's session cap (pool.Busy), not its answer
    signer: Signer | None = None  # applied as DATA leaves

    @property
    def relay(self) -> str:
        return self.session.target.relay if self.session else "none"

    async def rcpt(self, recipient: str) -> Outcome:
        if self.failure is not None or self.session is None:
            assert self.failure is not None
            return self.failure
        early, self.early = self.early, None
        if early is not None and early[0] == recipient:
            reply = early[1]
        else:
            reply = await self.session.rcpt(recipient)
        if reply.is_success:
            self.accepted.append(recipient)
        return Outcome(reply, self.relay, "RCPT")

    async def data(self, content: bytes) -> Outcome:
        """Send the message to the accepted recipients; the session goes back to the pool."""
        assert self.session is not None and self.accepted
        if self.signer is not None:
            content = await self.signer.sign(content)  # after Received:, live or queued
        reply = await self.session.data(content)
        outcome = Outcome(reply, self.relay, "DATA", len(self.accepted))
        if self.session.in_transaction:
            await self.abort()  # DATA refused before 354: RSET before the pool lends it again
        else:
            self.finish()
        return outcome

    def finish(self) -> None:
        """Return the session after a completed DATA (no RSET needed: RFC 5321 §4.1.1.4)."""
        if self.session is not None and not self.done:
            self.done = True
            self.pool.release(self.session)

    async def abort(self) -> None:
        """The client gave up: RSET the remote and give the session back (or close it)."""
        if self.session is None or self.done:
            return
        self.done = True
        session = self.session
        try:
            await session.rset()
        finally:
            self.pool.release(session)  # broken or not, release() closes what is unusable


class Delivery:
    """Routes, the remote session pool and the remote sender rule, shared by live and queue."""

    def __init__(
        self,
        resolver: MXResolver,
        pool: SessionPool,
        remote_sender: RemoteSender = identity_sender,
        signer: Signer | None = None,
        sts: StsPolicies | None = None,
        dane: DaneLookup | None = None,
    ) -> None:
        self.resolver = resolver
        self.pool = pool
        self.remote_sender = remote_sender
        self.signer = signer
        self.sts = sts
        self.dane = dane

    async def route(self, domain: str) -> Route | Reply:
        route = await self.resolver.route(domain)
        if (
            (self.sts is None and self.dane is None)
            or isinstance(route, Reply)
            or route.key != domain.lower()
            or domain.startswith("[")
        ):
            return route  # static routes and address literals: the operator's choice
        if self.dane is not None:
            secured = await self._dane(route)
            if secured.tlsa:
                return secured  # RFC 8461 §2: DANE, where it applies, goes before MTA-STS
        if self.sts is None:
            return route
        policy = await self.sts.lookup(domain)
        return route if policy is None else apply_sts(policy, route, self.sts)

    async def _dane(self, route: Route) -> Route:
        """The route with the TLSA records of its MX hosts (RFC 7672 §2.2)."""
        assert self.dane is not None
        names = sorted({(t.name, t.port) for t in route.targets})
        found = await asyncio.gather(*(self.dane.tlsa(n, p) for n, p in names))
        tlsa = tuple((n, r) for (n, _), r in zip(names, found, strict=True) if r != ())
        if not tlsa:
            return route
        return Route(f"{route.key} (dane)", route.targets, route.tls, tlsa)

    async def open_transaction(
        self,
        route: Route,
        sender: str,
        options: Sequence[str] = (),
        wait: bool = True,
        first: str | None = None,
    ) -> RemoteTransaction:
        """Lend a session for `route` and send MAIL FROM; a reused session that turns out dead
        is replaced once by a fresh one. `wait=False`: fail at once when the destination's
        session cap is reached (see SessionPool.acquire). `first`: the first recipient, sent
        with MAIL in one round trip when the remote pipelines; `rcpt(first)` then returns
        that reply without traffic."""
        for attempt in range(2):
            session = await self.pool.acquire(route, wait=wait)
            if isinstance(session, Busy):
                failure = Outcome(session.reply, "none", "connect")
                return RemoteTransaction(self.pool, route, sender, failure=failure, busy=True)
            if isinstance(session, Reply):
                if self.sts is not None and route.key.endswith(STS_SUFFIX):
                    self.sts.record_session_failure(route.key.removesuffix(STS_SUFFIX), session)
                return RemoteTransaction(
                    self.pool, route, sender, failure=Outcome(session, "none", "connect")
                )
            reused = session.transactions > 0
            mail_options = _mail_options(session, options)
            txn = RemoteTransaction(self.pool, route, sender, session=session, signer=self.signer)
            try:
                if first is None:
                    reply = await session.mail(sender, mail_options)
                else:
                    reply, rcpt = await session.mail_rcpt(sender, mail_options, first)
                    txn.early = None if rcpt is None else (first, rcpt)
            except BaseException:
                # Cancelled (the client vanished) before the caller holds the transaction:
                # nobody else could give the session back. A cut-off step broke it: closed.
                self.pool.release(session)
                raise
            if reply.is_success:
                return txn
            if reused and session.broken and attempt == 0:
                # A pooled session the remote had closed meanwhile: one fresh try.
                log.info("reused session to %s was dead; reconnecting", session.target.relay)
                self.pool.release(session)
                continue
            txn.failure = Outcome(reply, session.target.relay, "MAIL")
            await txn.abort()
            return txn
        raise AssertionError("unreachable: the second attempt always returns")

    async def deliver_message(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        queue_id: str = "",
        options: Sequence[str] = (),
        *,
        before_data: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> dict[str, Outcome]:
        """Deliver `data` to each recipient: route, MAIL, RCPT, DATA, one attempt.

        Recipients sharing a route and a remote sender share one remote transaction;
        transactions run concurrently. Returns one Outcome per recipient: the RCPT
        refusal, the DATA reply, or the routing/connect failure. `before_data(accepted)`
        runs before DATA is sent (the queue's write-ahead "delivering" mark); if it
        raises, the remote transaction is reset and nothing is sent.
        """
        outcomes: dict[str, Outcome] = {}
        groups: dict[tuple[str, str], tuple[Route, list[str]]] = {}
        domains = sorted({domain_of(r) for r in recipients})
        routes = dict(
            zip(domains, await asyncio.gather(*(self.route(d) for d in domains)), strict=True)
        )
        for rcpt in recipients:
            route = routes[domain_of(rcpt)]
            if isinstance(route, Reply):
                outcomes[rcpt] = Outcome(route, "none", "connect")
                continue
            remote_sender = self.remote_sender(sender, rcpt, queue_id)
            groups.setdefault((route.key, remote_sender), (route, []))[1].append(rcpt)

        async def one(route: Route, remote_sender: str, rcpts: list[str]) -> None:
            txn = await self.open_transaction(route, remote_sender, options, first=rcpts[0])
            try:
                for rcpt in rcpts:
                    outcome = await txn.rcpt(rcpt)
                    if not outcome.reply.is_success:
                        outcomes[rcpt] = outcome
                if txn.accepted:
                    if before_data is not None:
                        await before_data(list(txn.accepted))
                    result = await txn.data(data)
                    for rcpt in txn.accepted:
                        outcomes[rcpt] = result
            finally:
                if not txn.done:
                    await txn.abort()

        await asyncio.gather(*(one(r, s, rc) for (_, s), (r, rc) in groups.items()))
        return outcomes


STS_SUFFIX = " (mta-sts)"  # the pool key of a route under an enforced policy


def apply_sts(policy: StsPolicy, route: Route, sts: StsPolicies) -> Route | Reply:
    """RFC 8461 §5: under `enforce` only MX hosts the policy names, each over verified TLS
    (a route of its own in the pool); under `testing` the route as it is, mismatches logged."""
    allowed = tuple(t for t in route.targets if policy.allows(t.name))
    refused = sorted({t.name for t in route.targets} - {t.name for t in allowed})
    for name in refused:
        log.warning(
            "MTA-STS (%s) for %s: MX host %s is not in the policy", policy.mode, route.key, name
        )
        sts.record_failure(
            route.key, "validation-failure", receiving_mx_hostname=name, policy_mode=policy.mode
        )
    if policy.mode != "enforce":
        return route
    if not allowed:
        return Reply(
            451, "4.7.5", f"MTA-STS policy of {route.key} allows none of its MX hosts", None
        )
    return Route(route.key + STS_SUFFIX, allowed, "verify")


def _mail_options(session: RemoteSession, options: Sequence[str]) -> list[str]:
    """Pass on the client's MAIL parameters the remote supports (RFC 6152, RFC 6531)."""
    out = []
    for option in options:
        name = option.split("=", 1)[0].upper()
        if name == "BODY" and session.supports("8bitmime"):
            out.append(option)
        elif name == "SMTPUTF8" and session.supports("smtputf8"):
            out.append(option)
    return out
