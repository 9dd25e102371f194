# The client-facing SMTP server: aiosmtpd's protocol on bouncer's own loop. It turns SMTP
# commands into pipeline calls and pipeline Replies into reply lines; it decides nothing
# beyond protocol hygiene (relay check, syntax, limits, bare CR/LF) and owns no policy.
"""Inbound SMTP: aiosmtpd handler hooks, the server subclass and the listener factory.

aiosmtpd pitfalls handled here: it advertises neither PIPELINING nor
ENHANCEDSTATUSCODES (added in handle_EHLO); SMTPUTF8 is off by default on `SMTP`
(enabled explicitly); a client that disconnects while a slow hook (our RCPT waits
for the remote) runs cancels that hook (remote transactions are aborted then, and on
connection_lost); it does not refuse bare CR / bare LF or NUL in DATA (we do: 550
5.5.2, SMTP smuggling).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from policy.address import Address, is_valid_address
from policy.routing import hop_refusal
from relay.config.load import IPNetwork
from relay.inbound.admission import Admission, AdmissionLimits, IPAddress
from relay.inbound.auth import ehlo_without_empty_auth
from relay.inbound.data import DataBudget, DataState, Reservation, read_data
from relay.inbound.guard import (
    SlotSMTP,
    hang_up_in_session,
    peer_address,
)
from relay.inbound.path import simple_path
from relay.inbound.received import protocol_keyword, received_header
from relay.inbound.replies import (
    BAD_RCPT_SYNTAX,
    BAD_SENDER_SYNTAX,
    BARE_CR_OR_LF,
    BYE,
    CANNOT_VRFY,
    CLOSING_BOGUS,
    INTERNAL_PROBLEM,
    LINE_TOO_LONG,
    MAIL_OK,
    NEED_MAIL,
    NEEDS_SMTPUTF8,
    NO_VALID_RECIPIENTS,
    NUL_IN_DATA,
    OK,
    OVER_BUDGET,
    RELAY_DENIED,
    STOCK_BOGUS_GOODBYE,
    STOCK_DATA_SYNTAX,
    STOCK_GO_AHEAD,
    STOCK_MALFORMED,
    STOCK_NEED_RCPT,
    TOO_MANY_RECIPIENTS,
    TOO_MUCH_DATA,
    enhance,
    reply_line,
    untrusted_timeout,
)
from relay.observe.events import ConnectEvent, ProtocolEvent
from relay.observe.headers import message_id_of
from relay.pipeline import ClientTransaction, Pipeline, utcnow

log = logging.getLogger(__name__)


def has_bare_cr_or_lf(content: bytes) -> bool:
    """RFC 5321 §2.3.8: lines end in CRLF only; a lone CR or LF is how SMTP smuggling starts.

    Three counts instead of a regex with look-around (~7% of the CPU per message in the
    benchmark profile): every CR and every LF belongs to a CRLF exactly when the counts agree.
    """
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf


def content_refusal(content: bytes, max_hops: int) -> str | None:
    """The reply refusing a message before it goes anywhere, or None to pass it on."""
    if has_bare_cr_or_lf(content):
        return reply_line(BARE_CR_OR_LF)
    if b"\x00" in content:
        # A receiver that drops NUL reads "<CRLF>NUL.<CRLF>" as the end of the data: the
        # same smuggling as a bare LF. SMTP text never holds NUL (RFC 5321 §4.5.2).
        return reply_line(NUL_IN_DATA)
    looping = hop_refusal(content, max_hops)  # RFC 5321 §6.3: a mail loop
    return None if looping is None else reply_line(looping)


def prepend(header: bytes, content: bytes) -> bytes:
    """`header` + `content` without a second copy of the message when `content` is the
    bytearray relay/inbound/data.py read it into (an insertion moves the bytes within it)."""
    if isinstance(content, bytearray):
        content[:0] = header
        return content  # type: ignore[unreachable,unused-ignore]
    return header + content


# RFC 5321 §4.1.2: no path or parameter has a control character (Quoted-string and
# esmtp-value are printable ASCII); aiosmtpd decodes command arguments as UTF-8 with
# surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates U+DC80..U+DCFF.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class InboundHandler:
    """aiosmtpd hooks for one client connection; holds that client's transaction."""

    _HOOKS: ClassVar[dict[type, list[str]]] = {}
    lmtp: ClassVar[bool] = False  # the Received: header's WITH keyword (RFC 3848)

    def __dir__(self) -> list[str]:
        # What aiosmtpd looks for on a handler (handle_*, auth_*), listed once: see InboundSMTP.
        cls = type(self)
        names = self._HOOKS.get(cls)
        if names is None:
            names = self._HOOKS[cls] = _hook_names(cls, ("handle_", "auth_"))
        return names

    def __init__(self, server: InboundServer) -> None:
        self.server = server
        self.pipeline = server.pipeline
        self.txn: ClientTransaction | None = None
        self.client = "unknown[unknown]"
        self.ip: IPAddress | None = None
        self.transport: asyncio.BaseTransport | None = None

    # --- connection -------------------------------------------------------------------

    def admit(self, peer: Any) -> str | None:
        """Note who `peer` is and take a connection slot; None, or the 421 line refusing it."""
        if isinstance(peer, tuple) and peer:
            self.ip = peer_address(peer)
            self.client = f"unknown[{peer[0]}]"
        return self.server.admit(self)

    def connected(self) -> None:
        self.server.events_emit(ConnectEvent(self.client, utcnow()))

    def warn(self, text: str) -> None:
        """A `warning: name[ip]: text` line in the mail log (relay/observe/logfmt.py)."""
        self.server.events_emit(ProtocolEvent(self.client, text, utcnow()))

    def report_auth_failure(self, mechanism: str) -> None:
        """Called by the authenticator (relay/inbound/auth.py): Postfix's exact wording, which
        fail2ban's postfix-sasl filter matches (tests/relay/cli/test_operator.py)."""
        self.warn(f"SASL {mechanism} authentication failed: authentication failure")

    def hang_up(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def disconnected(self) -> None:
        self._abort_later()
        self.server.events_emit(ConnectEvent(self.client, utcnow(), disconnect=True))

    def _abort_later(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            self.server.track(asyncio.get_running_loop().create_task(self.pipeline.abort(txn)))

    async def _abort(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            await self.pipeline.abort(txn)

    def may_relay(self, session: Session) -> bool:
        return bool(session.authenticated) or self.server.trusted(self.ip)

    # --- hooks --------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self._abort()  # RFC 5321 §4.1.4: EHLO resets the transaction
        session.host_name = hostname
        lines = ehlo_without_empty_auth(responses)
        return [*lines[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", lines[-1]]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        await self._abort()
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # A transaction aiosmtpd ended without our DATA hook (552 too much data, 500 line too
        # long) is still ours to close: its remote sessions must not stay lent out.
        await self._abort()
        if not self.may_relay(session):
            return reply_line(RELAY_DENIED)
        sender = "" if address == "<>" else address
        if sender and not is_valid_address(sender):
            return reply_line(BAD_SENDER_SYNTAX)
        if not (sender.isascii() or envelope.smtp_utf8):
            return reply_line(NEEDS_SMTPUTF8)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.txn = ClientTransaction(
            sender, tuple(options), self.client, sasl_username=_login_of(session)
        )
        return reply_line(MAIL_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.may_relay(session):
            return reply_line(RELAY_DENIED)
        txn = self.txn
        if txn is None:
            return reply_line(NEED_MAIL)
        if len(txn.recipients) >= self.server.max_recipients:
            return reply_line(TOO_MANY_RECIPIENTS)
        if not is_valid_address(address):
            return reply_line(BAD_RCPT_SYNTAX)
        if not (address.isascii() or envelope.smtp_utf8):
            return reply_line(NEEDS_SMTPUTF8)
        try:
            reply = await self.pipeline.rcpt(txn, Address.parse(address))
        except asyncio.CancelledError:
            # The client vanished while we waited for the remote: leave nothing open there.
            self._abort_later()
            raise
        except Exception:  # the one catch-all of a transaction: 451 and keep serving
            log.exception("%s: RCPT %s failed", txn.queue_id, address)
            return reply_line(INTERNAL_PROBLEM)
        if len(txn.recipients) > len(envelope.rcpt_tos):
            envelope.rcpt_tos.append(address)
        return reply_line(reply)

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str | list[str]:
        txn = self.txn
        if txn is None or not txn.recipients:
            return reply_line(NO_VALID_RECIPIENTS)
        try:
            return await self._data(server, session, envelope, txn)
        finally:
            if self.txn is txn:
                self.txn = None  # the transaction ends with DATA whatever the outcome

    async def _data(
        self, server: SMTP, session: Session, envelope: Envelope, txn: ClientTransaction
    ) -> str | list[str]:
        content = envelope.original_content or b""
        refusal = content_refusal(content, self.server.max_hops)
        if refusal is not None:
            await self.pipeline.abort(txn)
            # Postfix smtpd's form, "warning: name[ip]: ...", for the mail log and fail2ban.
            self.warn(f"{txn.queue_id}: message refused: {refusal}")
            return refusal
        txn.message_id = message_id_of(content)
        header = received_header(
            helo=session.host_name or "unknown",
            client_ip=str(self.ip) if self.ip else "unknown",
            hostname=server.hostname,
            queue_id=txn.queue_id,
            protocol=protocol_keyword(session, envelope, lmtp=self.lmtp),
            recipients=[r.rcpt.spelled for r in txn.recipients],
            when=txn.arrived,
        )
        try:
            return await self.deliver(txn, prepend(header, content))
        except asyncio.CancelledError:
            self._abort_later()
            raise
        except Exception:
            log.exception("%s: DATA failed", txn.queue_id)
            await self.pipeline.abort(txn)
            return reply_line(INTERNAL_PROBLEM)

    async def deliver(self, txn: ClientTransaction, message: bytes) -> str | list[str]:
        """SMTP's one reply to the message; LMTP answers per recipient (relay/inbound/lmtp.py)."""
        return reply_line(await self.pipeline.data(txn, message))

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._abort()
        return reply_line(OK)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._abort()
        return reply_line(BYE)

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return reply_line(OK)

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's catch-all for an error no hook handled: its own reply would be
        "500 Error: (ExcName) text", Python's words to a client. Log it, answer 451 4.3.0."""
        queue_id = self.txn.queue_id if self.txn is not None else "NOQUEUE"
        log.error("%s: internal error in a session from %s", queue_id, self.client, exc_info=error)
        return reply_line(INTERNAL_PROBLEM)

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return reply_line(CANNOT_VRFY)


MAX_SIZE = 1 << 62  # no max_message_size: the budget still bounds what is held
_DATA_REFUSALS = {
    DataState.TOO_LONG: reply_line(LINE_TOO_LONG),
    DataState.TOO_MUCH: reply_line(TOO_MUCH_DATA),
    DataState.OVER_BUDGET: reply_line(OVER_BUDGET),
}


def declared_size(mail_options: Sequence[str]) -> int:
    """The SIZE= a client declared on MAIL (RFC 1870 §6), or 0."""
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _login_of(session: Session) -> str:
    login = getattr(session.auth_data, "login", None) if session.authenticated else None
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return login if isinstance(login, str) else ""


class _Session(Session):
    # aiosmtpd sets `session.login_data` on every successful AUTH and its property logs
    # "Session.login_data is deprecated" each time; a plain attribute keeps the log clean.
    login_data: Any = None


def _hook_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in dir(cls) if name.startswith(prefixes)]


class InboundSMTP(SlotSMTP):
    """aiosmtpd's protocol with a connection-lost hook for remote cleanup."""

    _HOOKS: ClassVar[dict[type, list[str]]] = {}

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds its auth_*/smtp_* methods per connection with dir() and
        # inspect.getmembers(), which getattr()s every attribute (~0.15 ms a connection in a
        # profile). Those methods are the class's: list them once per class.
        cls = type(self)
        names = self._HOOKS.get(cls)
        if names is None:
            names = self._HOOKS[cls] = _hook_names(cls, ("auth_", "smtp_"))
        return names

    _in_rcpt = False
    greeting: ClassVar[str] = "bouncer"  # the 220 line's text after our name

    def _create_session(self) -> Session:
        return _Session(self.loop)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._in_rcpt = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._in_rcpt = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's checks, then bouncer's reader (relay/inbound/data.py): the message is held
        # once, in one buffer, and only within the budget of bytes in flight.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(STOCK_NEED_RCPT)
            return
        if arg:
            await self.push(STOCK_DATA_SYNTAX)
            return
        reservation = Reservation(self.event_handler.server.data_budget)
        try:
            # RFC 1870: a declared SIZE is reserved up front; the rest as the bytes come.
            if not reservation.grow_to(declared_size(self.envelope.mail_options)):
                await self.push(reply_line(OVER_BUDGET))
                return
            await self.push(STOCK_GO_AHEAD)
            state, content = await read_data(
                self._reader,
                size_limit=self.data_size_limit or MAX_SIZE,
                line_limit=self.line_length_limit,
                reservation=reservation,
            )
            if state is not DataState.COMPLETE:
                await self.answer_data(_DATA_REFUSALS[state])
                return
            # The bytearray itself, not bytes(content) (a copy): it has bytes' read API, and
            # the DATA hook prepends Received: in place (prepend()).
            self.envelope.content = content  # type: ignore[assignment]
            self.envelope.original_content = content  # type: ignore[assignment]
            await self.answer_data(await self._call_handler_hook("DATA"))
        finally:
            reservation.release()

    async def answer_data(self, status: str | list[str]) -> None:
        """The reply once the message's final dot is read, ending the transaction: one line
        in SMTP (RFC 5321 §4.1.1.4); LMTP answers once per recipient (relay/inbound/lmtp.py)."""
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        assert isinstance(status, str)  # only an LMTP handler answers with a list
        await self.push(status)

    async def push(self, status: Any) -> None:
        # aiosmtpd's stock replies lack the RFC 3463 code we advertise (relay/stock_replies).
        if isinstance(status, str) and status.startswith(STOCK_BOGUS_GOODBYE):
            # aiosmtpd hangs up after this one: a server that closes the channel says 421
            # (RFC 5321 §3.8), so the client knows to stop.
            status = reply_line(CLOSING_BOGUS)
        elif self._in_rcpt and status == STOCK_MALFORMED:
            status = reply_line(BAD_RCPT_SYNTAX)  # a recipient that does not parse: 501 5.1.3
        if isinstance(status, str):
            if _BAD_PATH_CHAR.search(status):
                # aiosmtpd echoes some arguments ("502 Could not VRFY <arg>"): a client's
                # control bytes or non-UTF-8 bytes must not reach the reply (nor fail its
                # encoding, which became an exception reply).
                status = _BAD_PATH_CHAR.sub("?", status)
            status = enhance(status)
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The plain "<a@b.c>" path by regex, the rest by aiosmtpd's parser (relay/smtp_path).
        fast = simple_path(arg, self.local_part_limit)
        if fast is not None:
            return fast
        if _BAD_PATH_CHAR.search(arg):
            return None, None  # bytes that are not UTF-8, or a control character: malformed
        try:
            return super()._getaddr(arg)
        except Exception:
            # The stdlib header parser aiosmtpd uses raises on input such as "0@"
            # (IndexError) or "<a@[300" (AttributeError) instead of HeaderParseError:
            # whatever it raises, the address is malformed.
            return None, None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler: InboundHandler = self.event_handler
        first = self.transport is None
        if first:
            refusal = handler.admit(transport.get_extra_info("peername"))
            if refusal is not None:
                self._refuse(transport, refusal, handler.client)
                return
        super().connection_made(transport)
        if first and self.session is not None:
            handler.transport = transport
            handler.connected()
            if not handler.server.trusted(handler.ip):
                self._deadline = self.loop.call_later(
                    handler.server.untrusted_timeout, self._untrusted_expired
                )

    def _untrusted_expired(self) -> None:
        """A client that may not relay can do nothing useful before it authenticates: one
        deadline from connect (not per read) ends a session that trickles or just sits."""
        if self.session is None or self.session.authenticated or self.transport is None:
            return
        log.info("%s: no authentication within the deadline; closing", self.event_handler.client)
        hang_up_in_session(self.transport, reply_line(untrusted_timeout(self.hostname)))

    def _release_slot(self) -> None:
        handler: InboundHandler = self.event_handler
        handler.disconnected()
        handler.server.release(handler)


class InboundServer:
    """Makes one protocol per client connection; counts them; tracks cleanup tasks."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        hostname: str,
        networks: Sequence[IPNetwork],
        max_message_size: int,
        max_recipients: int,
        max_clients: int,
        idle_timeout: float,
        security: dict[str, Any] | None = None,
        max_hops: int = 30,
        admission: AdmissionLimits | None = None,
        untrusted_timeout: float = 10.0,
        max_data_in_flight: int = 256 << 20,
    ) -> None:
        self.pipeline = pipeline
        self.hostname = hostname
        self.networks = tuple(networks)
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.max_hops = max_hops
        self.security = security or {
            "auth_require_tls": True,
            "auth_exclude_mechanism": ["PLAIN", "LOGIN"],
        }
        self.untrusted_timeout = untrusted_timeout
        self.data_budget = DataBudget(max_data_in_flight)
        limits = admission or AdmissionLimits(max_clients=max_clients)
        self.admission = Admission(limits, self.trusted)
        self.handlers: set[InboundHandler] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Client connections holding a slot."""
        return self.admission.active

    def trusted(self, ip: IPAddress | None) -> bool:
        """Whether `ip` is in allowed_clients: may relay, and exempt from per-address limits."""
        if ip is None:
            return False
        return any(ip in net for net in self.networks if net.version == ip.version)

    def admit(self, handler: InboundHandler) -> str | None:
        refusal = self.admission.admit(handler.ip, time.monotonic())
        if refusal is None:
            self.handlers.add(handler)
        return refusal

    def release(self, handler: InboundHandler) -> None:
        self.handlers.discard(handler)
        self.admission.release(handler.ip)

    def events_emit(self, event: Any) -> None:
        self.pipeline.events.emit(event)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def protocol(
        self,
        kind: type[InboundSMTP] = InboundSMTP,
        handler: type[InboundHandler] = InboundHandler,
    ) -> asyncio.BaseProtocol:
        """One client connection's protocol: SMTP, or `kind` and `handler` for LMTP
        (relay/inbound/lmtp.py), with the same limits, admission and pipeline."""
        # The peer is known only at connection_made: admission happens there (InboundSMTP).
        return kind(
            handler(self),
            hostname=self.hostname,
            ident=kind.greeting,
            data_size_limit=self.max_message_size,
            enable_SMTPUTF8=True,
            timeout=self.idle_timeout,
            loop=asyncio.get_running_loop(),
            **self.security,
        )

    async def listen(self, host: str, port: int) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.protocol, host, port)

    async def drain(self, drain_seconds: float) -> None:
        """Shutdown: let open client transactions finish (up to `drain_seconds`), then close
        every client connection and wait for the remote clean-ups that triggers."""
        loop = asyncio.get_running_loop()
        end = loop.time() + drain_seconds
        # Polling here is only during shutdown, bounded by the drain time; an Event per
        # transaction end would cost every live transaction for this one moment.
        while any(h.txn is not None for h in self.handlers) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for handler in list(self.handlers):
            handler.hang_up()
        await asyncio.sleep(0)  # let connection_lost run and schedule the aborts
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.5, end - loop.time()))
