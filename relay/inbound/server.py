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
import ipaddress
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from policy.address import is_valid_address, normalize_address
from policy.reply import Reply
from policy.routing import hop_refusal
from relay.config.load import IPNetwork
from relay.inbound.admission import Admission, AdmissionLimits, IPAddress
from relay.inbound.auth import ehlo_without_empty_auth
from relay.inbound.data import DataBudget, DataState, Reservation, read_data
from relay.inbound.path import simple_path
from relay.inbound.received import protocol_keyword, received_header
from relay.inbound.replies import enhance
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
        return "550 5.5.2 Error: bare <CR> or <LF> in message data (see RFC 5321 2.3.8)"
    if b"\x00" in content:
        # A receiver that drops NUL reads "<CRLF>NUL.<CRLF>" as the end of the data: the
        # same smuggling as a bare LF. SMTP text never holds NUL (RFC 5321 §4.5.2).
        return "550 5.5.2 Error: NUL character in message data"
    looping = hop_refusal(content, max_hops)  # RFC 5321 §6.3: a mail loop
    return None if looping is None else reply_line(looping)


def prepend(header: bytes, content: bytes) -> bytes:
    """`header` + `content` without a second copy of the message when `content` is the
    bytearray relay/inbound/data.py read it into (an insertion moves the bytes within it)."""
    if isinstance(content, bytearray):
        content[:0] = header
        return content  # type: ignore[unreachable,unused-ignore]
    return header + content


MAX_REPLY_TEXT = 400  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets
# RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL (Postfix's wording and code).
NEEDS_SMTPUTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
# aiosmtpd closes the connection after too many unknown commands with a 502; a server that
# closes the channel says 421 (RFC 5321 §3.8), so the client knows to stop.
_BOGUS_GOODBYE = "502 5.5.1 Too many unrecognized commands"
_MALFORMED = "553 5.1.3 Error: malformed address"  # aiosmtpd's, for MAIL and RCPT alike
BAD_RCPT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
CLOSING_BOGUS = "421 4.7.0 Too many unrecognized commands, closing connection"
INTERNAL_PROBLEM = "451 4.3.0 Error: internal problem, try again later"
# RFC 5321 §4.1.2: no path or parameter has a control character (Quoted-string and
# esmtp-value are printable ASCII); aiosmtpd decodes command arguments as UTF-8 with
# surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates U+DC80..U+DCFF.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# Postfix's wording when a client runs out of time (RFC 5321 §3.8: 421 and the host name).
UNTRUSTED_TIMEOUT = "421 4.4.2 {} Error: timeout exceeded"


def reply_line(reply: Reply) -> str:
    """A Reply as one SMTP reply line (never multi-line, never over-long)."""
    text = " ".join(reply.text.split())[:MAX_REPLY_TEXT]
    parts = [str(reply.code), reply.enhanced or "", text]
    return " ".join(p for p in parts if p)


class InboundHandler:
    """aiosmtpd hooks for one client connection; holds that client's transaction."""

    _HOOKS: ClassVar[dict[type, list[str]]] = {}

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
            try:
                ip = ipaddress.ip_address(str(peer[0]).split("%")[0])
            except ValueError:
                ip = None
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = (
                    ip.ipv4_mapped
                )  # a dual-stack "::" listener sees IPv4 clients as ::ffff:a.b.c.d
            self.ip = ip
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
            return "554 5.7.1 Relay access denied"
        sender = "" if address == "<>" else address
        if sender and not is_valid_address(sender):
            return "501 5.1.7 Bad sender address syntax"
        if not (sender.isascii() or envelope.smtp_utf8):
            return NEEDS_SMTPUTF8
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.txn = ClientTransaction(
            sender, tuple(options), self.client, sasl_username=_login_of(session)
        )
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.may_relay(session):
            return "554 5.7.1 Relay access denied"
        txn = self.txn
        if txn is None:
            return "503 5.5.1 Error: need MAIL command"
        if len(txn.recipients) >= self.server.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        if not is_valid_address(address):
            return BAD_RCPT_SYNTAX
        if not (address.isascii() or envelope.smtp_utf8):
            return NEEDS_SMTPUTF8
        try:
            reply = await self.pipeline.rcpt(txn, address, normalize_address(address))
        except asyncio.CancelledError:
            # The client vanished while we waited for the remote: leave nothing open there.
            self._abort_later()
            raise
        except Exception:  # the one catch-all of a transaction: 451 and keep serving
            log.exception("%s: RCPT %s failed", txn.queue_id, address)
            return INTERNAL_PROBLEM
        if len(txn.recipients) > len(envelope.rcpt_tos):
            envelope.rcpt_tos.append(address)
        return reply_line(reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        txn = self.txn
        if txn is None or not txn.recipients:
            return "554 5.5.1 Error: no valid recipients"
        try:
            return await self._data(server, session, envelope, txn)
        finally:
            if self.txn is txn:
                self.txn = None  # the transaction ends with DATA whatever the outcome

    async def _data(
        self, server: SMTP, session: Session, envelope: Envelope, txn: ClientTransaction
    ) -> str:
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
            protocol=protocol_keyword(session, envelope),
            recipients=[r.address for r in txn.recipients],
            when=txn.arrived,
        )
        try:
            reply = await self.pipeline.data(txn, prepend(header, content))
        except asyncio.CancelledError:
            self._abort_later()
            raise
        except Exception:
            log.exception("%s: DATA failed", txn.queue_id)
            await self.pipeline.abort(txn)
            return INTERNAL_PROBLEM
        return reply_line(reply)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._abort()
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._abort()
        return "221 2.0.0 Bye"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return "250 2.0.0 Ok"

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's catch-all for an error no hook handled: its own reply would be
        "500 Error: (ExcName) text", Python's words to a client. Log it, answer 451 4.3.0."""
        queue_id = self.txn.queue_id if self.txn is not None else "NOQUEUE"
        log.error("%s: internal error in a session from %s", queue_id, self.client, exc_info=error)
        return INTERNAL_PROBLEM

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return "252 2.0.0 Cannot VRFY; send mail and see"  # RFC 5321 §3.5.3


OVER_BUDGET = "452 4.3.1 Insufficient system storage, try again later"  # RFC 3463 4.3.1
MAX_SIZE = 1 << 62  # no max_message_size: the budget still bounds what is held
_DATA_REFUSALS = {
    DataState.TOO_LONG: "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)",
    DataState.TOO_MUCH: "552 5.3.4 Error: Too much mail data",
    DataState.OVER_BUDGET: OVER_BUDGET,
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


class InboundSMTP(SMTP):
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
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        reservation = Reservation(self.event_handler.server.data_budget)
        try:
            # RFC 1870: a declared SIZE is reserved up front; the rest as the bytes come.
            if not reservation.grow_to(declared_size(self.envelope.mail_options)):
                await self.push(OVER_BUDGET)
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            state, content = await read_data(
                self._reader,
                size_limit=self.data_size_limit or MAX_SIZE,
                line_limit=self.line_length_limit,
                reservation=reservation,
            )
            if state is not DataState.COMPLETE:
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                await self.push(_DATA_REFUSALS[state])
                return
            # The bytearray itself, not bytes(content) (a copy): it has bytes' read API, and
            # the DATA hook prepends Received: in place (prepend()).
            self.envelope.content = content  # type: ignore[assignment]
            self.envelope.original_content = content  # type: ignore[assignment]
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(status)
        finally:
            reservation.release()

    async def push(self, status: Any) -> None:
        # aiosmtpd's stock replies lack the RFC 3463 code we advertise (relay/stock_replies).
        if isinstance(status, str) and status.startswith(_BOGUS_GOODBYE):
            status = CLOSING_BOGUS  # it hangs up after this one: RFC 5321 §3.8 wants a 421
        elif self._in_rcpt and status == _MALFORMED:
            status = BAD_RCPT_SYNTAX  # a recipient that does not parse is 501 5.1.3
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

    _refused = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler: InboundHandler = self.event_handler
        first = self.transport is None
        if first:
            refusal = handler.admit(transport.get_extra_info("peername"))
            if refusal is not None:
                # Over a limit (relay/inbound/admission.py): say so (RFC 5321 §3.8) and hang
                # up, with only write() and close(), which every loop's transports have.
                self._refused = True
                log.info("%s: refused: %s", handler.client, refusal)
                transport.write(refusal.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
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
        goodbye = UNTRUSTED_TIMEOUT.format(self.hostname) + "\r\n"
        self.transport.write(goodbye.encode("ascii", "replace"))  # type: ignore[attr-defined]
        self.transport.close()

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        super().eof_received()
        # aiosmtpd keeps a half-closed connection open (StreamReaderProtocol's True), and when
        # EOF comes before its session task first runs (uvloop does that for a client that
        # connects and closes) nothing ever closes it: the slot stayed held, in CLOSE-WAIT,
        # until idle_timeout. A client that has closed its side has nothing more to say.
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)
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

    def protocol(self) -> asyncio.BaseProtocol:
        # The peer is known only at connection_made: admission happens there (InboundSMTP).
        return InboundSMTP(
            InboundHandler(self),
            hostname=self.hostname,
            ident="bouncer",
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
