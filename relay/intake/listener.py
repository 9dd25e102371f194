# The intake listener speaks SMTP and writes to the store; what a bounce means is decided in
# policy (policy/bounces/parse.py parses, classify classifies, policy/bounces/effect.py says
# which record changes, with the disposition policy/decide.py gives).
"""Late bounces and complaints: an SMTP listener on `[intake] listen` (off by default).

RCPT is accepted only for a VERP return path whose HMAC checks out and for
the configured feedback-loop addresses; everything else gets `550 5.1.1` at
RCPT, before any data is read. Each accepted message is parsed, and the
resulting actions go to the suppression store through the service's single
writer thread, with one RecipientEvent each (stage "DSN" or "ARF").
With `[intake] forward = true`, whatever arrives at a VERP return path (bounces,
and auto-replies that quote the original, which VERP would otherwise hide from
the sender) is also sent on to the sender of the returned message, with the null sender (RFC 5321
§4.5.5, so it can never bounce back), through the relay's own delivery path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from policy.address import AddressError, normalize_address
from policy.bounces.effect import Action, Target, plan
from policy.bounces.parse import parse_bounce, returned_sender
from policy.bounces.values import BounceReport
from policy.decide import Disposition
from policy.reply import Reply
from policy.suppression.store import StoreError, SuppressionStore
from policy.verp import VerpKey, decode, remote_sender
from relay.config.load import Config
from relay.inbound.admission import AdmissionLimits
from relay.inbound.guard import Gate, GuardedSMTP
from relay.intake.consent import Checker, consent
from relay.observe.events import EventBus, RecipientEvent

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)  # relay/ reads the clock; policy/verp.py gets it as a parameter


MAX_RECIPIENTS = 50  # a bounce names one return path; a long RCPT list is abuse
Write = Callable[..., Awaitable[Any]]


class Forwarder(Protocol):
    """The slice of relay.outbound.delivery.Delivery the intake uses to forward bounces."""

    async def deliver_message(
        self, sender: str, recipients: Any, data: bytes, queue_id: str = ""
    ) -> dict[str, Any]: ...


async def _in_default_executor(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


class IntakeHandler:
    """aiosmtpd handler: RCPT filtering and DATA processing (one per listener)."""

    def __init__(
        self,
        store: SuppressionStore,
        events: EventBus,
        verp: VerpKey | None,
        feedback_addresses: tuple[str, ...],
        write: Write = _in_default_executor,
        forwarder: Forwarder | None = None,
        clock: Callable[[], datetime] = _utcnow,
        consent_address: str = "",
        checker: Checker | None = None,
    ) -> None:
        self.consent_address = _normal(consent_address) if consent_address else ""
        self.checker = checker
        self.store = store
        self.events = events
        self.verp = verp
        self.feedback = frozenset(_normal(a) for a in feedback_addresses)
        self.write = write
        self.forwarder = forwarder
        self.clock = clock
        self.tasks: set[asyncio.Task[None]] = set()

    def target(self, address: str) -> Target | None:
        """What an RCPT address stands for, or None when the intake must refuse it."""
        if _normal(address) in self.feedback:
            return Target("")
        if self.verp is not None:
            token = decode(self.verp, address, self.clock())
            if token is not None:
                return Target(token.recipient, token.queue_id)
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if self.consent_address and _normal(address) == self.consent_address:
            if envelope.rcpt_tos:
                return "452 4.5.3 Consent mail goes alone: one recipient per message"
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        if envelope.rcpt_tos and _normal(envelope.rcpt_tos[0]) == self.consent_address:
            return "452 4.5.3 Consent mail goes alone: one recipient per message"
        if self.target(address) is None:
            # RFC 3463 x.1.1: no such mailbox here; nothing is read or recorded.
            return f"550 5.1.1 <{address}>: not a bounce or feedback address of this host"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if self.consent_address and _normal(envelope.rcpt_tos[0]) == self.consent_address:
            return await self._consent(data, session, envelope)
        try:
            changed = await self.receive(data, list(envelope.rcpt_tos))
        except StoreError as exc:
            log.error("intake: store unavailable: %s", exc)
            return "451 4.3.0 Suppression store unavailable, try again later"
        except Exception:  # the transaction boundary: never crash the listener
            log.exception("intake: failed to process a message")
            return "451 4.3.0 Internal error, try again later"
        return f"250 2.0.0 Ok: {changed} record(s) updated"

    async def _consent(self, data: bytes, session: Session, envelope: Envelope) -> str:
        """A recipient's consent mail (relay/intake/consent.py); refused unless it lifts."""
        if self.checker is None:
            return "451 4.3.0 Consent checks unavailable, try again later"
        peer = session.peer[0] if isinstance(session.peer, tuple) else ""
        try:
            result = await consent(
                self.checker,
                self.store,
                self.write,
                data,
                str(peer),
                envelope.mail_from or "",
                session.host_name or "",
                self.clock(),
            )
        except StoreError as exc:
            log.error("intake: store unavailable: %s", exc)
            return "451 4.3.0 Suppression store unavailable, try again later"
        if result.lifted:
            return f"250 2.0.0 Ok: {result.address} may receive mail again"
        if result.how == "nothing to lift":
            return "250 2.0.0 Ok: nothing to lift"
        return f"550 5.7.1 Consent not verified: {result.how}"

    async def receive(self, data: bytes, rcpts: list[str], now: datetime | None = None) -> int:
        """Parse `data` once and apply the plan for each RCPT; returns the store writes done."""
        when = now or self.clock()
        reports: list[BounceReport] = await _in_default_executor(parse_bounce, data)
        changed = 0
        returned = False  # mail to a VERP return path: it was meant for the original sender
        for rcpt in rcpts:
            target = self.target(rcpt)
            if target is None:
                continue
            returned = returned or not target.is_feedback
            for action in plan(reports, target):
                changed += await self._apply(action, when)
        if returned and self.forwarder is not None:
            self._forward(data)
        return changed

    async def _apply(self, action: Action, now: datetime) -> int:
        """The store change and the event policy/bounces/effect.py decided for one report."""
        disposition = action.disposition
        if disposition is Disposition.IGNORED:
            kind = action.report.kind if action.report else "nothing"
            log.info("intake: %s for %s ignored", kind, action.address or "(no address)")
            return 0
        try:
            address = normalize_address(action.address)
        except AddressError:
            log.warning("intake: not an address: %r", action.address)
            return 0
        stage = "DSN"
        reply = action.reply or Reply(0, None, action.detail)
        if disposition is Disposition.SUPPRESSED:
            # An ARF report has no SMTP reply; the log line quotes it as the recipient's
            # refusal of the message (RFC 3463 x.7.1), which is what a complaint is.
            reply = Reply(550, "5.7.1", action.detail)
            await self.write(self.store.record_complaint, address, now, action.detail)
            stage = "ARF"
        elif disposition is Disposition.DELIVERED:
            await self.write(self.store.record_success, address, now)
        else:
            assert action.verdict is not None and action.reply is not None
            await self.write(self.store.record_verdict, address, action.verdict, action.reply, now)
        remote = action.report.remote_mta if action.report else ""
        self.events.emit(
            RecipientEvent(
                queue_id=action.queue_id or "intake",
                recipient=address,
                status=disposition,
                reply=reply,
                when=now,
                relay=remote or "none",
                stage=stage,
                verdict=action.verdict,
            )
        )
        return 1

    def _forward(self, data: bytes) -> None:
        domain = self.verp.bounce_domain if self.verp else ""
        sender = returned_sender(data, domain)
        if not sender or self.forwarder is None:
            log.info("intake: forward skipped: no sender in the returned message")
            return
        forwarder = self.forwarder
        queue_id = "F" + secrets.token_hex(5).upper()

        async def run() -> None:
            try:
                outcomes = await forwarder.deliver_message("", [sender], data, queue_id=queue_id)
                for rcpt, outcome in outcomes.items():
                    log.info("intake: forwarded bounce to %s: %s", rcpt, outcome.reply.line())
            except Exception:  # a forward is best effort; the store update already happened
                log.exception("intake: forwarding the bounce to %s failed", sender)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _normal(address: str) -> str:
    try:
        return normalize_address(address)
    except AddressError:
        return address.strip().strip("<>").lower()


def verp_key(config: Config) -> VerpKey | None:
    """The VERP key from `[verp]`, or None when no bounce domain and secret are set."""
    v = config.verp
    if not (v.bounce_domain and v.secret):
        return None
    return VerpKey.from_settings(v.prefix, v.bounce_domain, v.secret, v.max_age_days)


def verp_sender(
    config: Config, clock: Callable[[], datetime] = _utcnow
) -> Callable[[str, str, str], str] | None:
    """The `remote_sender` for relay.outbound.delivery.Delivery when `[verp] enabled`, else None."""
    key = verp_key(config)
    if not config.verp.enabled or key is None:
        return None

    def sender(original: str, recipient: str, queue_id: str) -> str:
        return remote_sender(key, original, recipient, queue_id, clock())

    return sender


def _checker(config: Config) -> Checker | None:
    """DKIM/SPF checks over a resolver built like the service's own (`[dns]`), when a
    consent address is set."""
    if not config.intake.consent_address:
        return None
    from relay.outbound.routes import build_resolver

    resolver = build_resolver(config.dns.servers, config.dns.timeout)
    return Checker(resolver, asyncio.get_running_loop())


class Intake:
    """The service component: `await start()` listens, `await stop()` closes.

    Worker 0 only (relay.workers): one listener per machine, not one per worker.
    """

    def __init__(
        self,
        config: Config,
        store: SuppressionStore,
        events: EventBus,
        *,
        write: Write = _in_default_executor,
        forwarder: Forwarder | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self.handler = IntakeHandler(
            store,
            events,
            verp_key(config),
            config.intake.feedback_addresses,
            write=write,
            forwarder=forwarder if config.intake.forward else None,
            clock=clock,
            consent_address=config.intake.consent_address,
            checker=_checker(config),
        )
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self.gate: Gate | None = None

    async def start(self) -> None:
        config = self.config
        assert config.intake.address is not None  # built only when `[intake] listen` is set
        host, port = config.intake.address.host, config.intake.address.port
        loop = asyncio.get_running_loop()
        handler = self.handler
        size = config.server.max_message_size
        i = config.intake
        # Internet-facing and open to anyone: admission, EOF and a session deadline as for
        # clients that may not relay (docs/behaviour.md#late-bounces-and-complaints).
        limits = AdmissionLimits(
            i.max_clients, i.client_connection_count_limit, i.client_connection_rate_limit
        )
        gate = self.gate = Gate(limits, i.session_timeout)

        def factory() -> SMTP:
            return GuardedSMTP(
                gate, handler, hostname=config.server.hostname, data_size_limit=size, loop=loop
            )

        self._server = await loop.create_server(factory, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("intake: listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            if self.gate is not None:
                self.gate.close_all()
            await self._server.wait_closed()
            self._server = None
        for task in list(self.handler.tasks):
            task.cancel()
        await asyncio.gather(*self.handler.tasks, return_exceptions=True)
