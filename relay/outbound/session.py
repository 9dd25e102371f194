# This module speaks SMTP to remotes and decides nothing. Every aiosmtplib, TLS, socket or
# timeout exception becomes a Reply right here (a synthetic 4.4.x naming the host), so
# callers only ever see Replies: the one exception boundary of the outbound side.
"""Remote SMTP sessions over aiosmtplib: open over ordered targets, then per-command steps.

`open_session(route, settings)` tries the route's targets in order, once each: TCP
connect, greeting, EHLO (HELO fallback), STARTTLS per `[delivery] starttls`. A
connection failure or a non-2xx greeting moves on to the next target (RFC 5321
§5.1). STARTTLS levels: "opportunistic" tries it without certificate checks (MX
certificates rarely match; Postfix's "may") and reconnects in clear text when the
handshake fails; "required" refuses a target without TLS with `451 4.7.4` (Postfix's
"encrypt": soft, so the message is retried, not lost); "verify" also checks the
certificate chain (system CAs, or `ca_file`) and that it names the MX host (Postfix's
"secure"), and refuses a failure with `451 4.7.5` naming the reason, never falling back
to clear text; "off" never tries.

aiosmtplib opens the session (connect, greeting, EHLO, STARTTLS); then the transport
goes to `Wire` (relay/outbound/wire.py), our own small reply reader, because aiosmtplib
pipelines nothing and costs a lock, a wait_for and two regex passes over the message
per step. With a
remote that advertises PIPELINING, MAIL FROM and the first RCPT TO go in one write
(RFC 2920): one round trip less per message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import aiosmtplib

from policy.dane import Tlsa
from policy.dane import matches as dane_matches
from policy.reply import Reply
from relay.config.schema import StartTLS
from relay.outbound.reply_reader import make_reply
from relay.outbound.tls import OPPORTUNISTIC, failure_reason, verify_context
from relay.outbound.values import Route, Target
from relay.outbound.wire import Wire, WireLost, data_done_timeout, wire_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboundSettings:
    helo: str
    connect_timeout: float
    command_timeout: float
    starttls: StartTLS
    ca_file: str = ""  # "verify": trust these CAs instead of the system's


def _synthetic(enhanced: str, text: str, host: str | None = None) -> Reply:
    # Synthetic replies say who could not be reached, but no remote said them: host stays None.
    return Reply(451, enhanced, text, host)


class SessionError(Exception):
    """Carries the Reply a failed session step turned into (internal to this module)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


# Control characters in a command argument would smuggle a second command.
_INJECTION = re.compile(rb"[\x00-\x1f\x7f]")


class RemoteSession:
    """One connected, greeted remote session. Each step returns a Reply; none raises."""

    def __init__(
        self,
        smtp: aiosmtplib.SMTP,
        target: Target,
        key: str,
        tls: bool,
        command_timeout: float = 300.0,
    ) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, smtp.transport)
        self.extensions = dict(smtp.esmtp_extensions)
        self.wire = Wire(transport, command_timeout, target.host)
        transport.set_protocol(self.wire)  # from here on, aiosmtplib's protocol is out
        self.target = target
        self.key = key  # the route key the pool files it under
        self.tls = tls
        self.transactions = 0  # how many MAIL transactions it has carried
        self.broken = False  # a step failed at the connection level: never reuse
        # MAIL accepted and not yet ended by DATA's final reply or RSET: the remote holds
        # a transaction (Postfix keeps it after refusing the DATA command itself).
        self.in_transaction = False
        self.pipelining = "pipelining" in self.extensions  # RFC 2920

    @property
    def connected(self) -> bool:
        return not self.wire.lost and not self.wire.transport.is_closing()

    @property
    def alive(self) -> bool:
        return not self.broken and self.connected

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    def _failed(self, stage: str, exc: BaseException) -> Reply:
        # Out of step with the remote (a timed-out command's reply may still come and would
        # be read as the answer to the next one, e.g. a late RCPT 250 taken for DATA's):
        # close now, so nothing more is sent or read on this session.
        self.close()
        if isinstance(exc, TimeoutError):
            text = f"conversation with {self.target.host} timed out while sending {stage}"
        else:
            text = f"lost connection with {self.target.host} while sending {stage}: {exc}"
        return _synthetic("4.4.2", text)

    def _answer(self, reply: Reply) -> Reply:
        if reply.code == 421:
            self.broken = True  # RFC 5321 §3.8: the remote is closing the channel
        return reply

    async def _exchange(self, stages: Sequence[str], commands: Sequence[bytes]) -> list[Reply]:
        """Write `commands` in one go and read one reply per command, in order (RFC 2920).

        A failure at the connection level answers the unanswered commands with a synthetic
        4.4.2 and breaks the session.
        """
        for command in commands:
            if _INJECTION.search(command):
                return [_synthetic("4.4.2", f"refused to send {s}: control character in it")
                        for s in stages]  # fmt: skip
        replies: list[Reply] = []
        if self.wire.unsolicited():
            # A reply nobody asked for (an idle pooled session's 421, a closed connection):
            # it would be read as the answer to this command. Not in step: never use it.
            self.close()
            failure = self._failed(stages[0], WireLost("connection closed by the remote"))
            return [failure] * len(commands)
        try:
            self.wire.write(b"".join(c + b"\r\n" for c in commands))
            for _ in commands:
                replies.append(self._answer(await self.wire.reply()))
        except asyncio.CancelledError:
            # Cancelled mid-command (our client vanished): the remote's reply is still on its
            # way and would be read as the answer to our next command. Never reuse this one.
            self.broken = True
            raise
        except (WireLost, TimeoutError, OSError) as exc:
            failure = self._failed(stages[len(replies)], exc)
            replies += [failure] * (len(commands) - len(replies))
        return replies

    async def mail(self, sender: str, options: Sequence[str] = ()) -> Reply:
        self.transactions += 1
        reply = (await self._exchange(["MAIL FROM"], [_mail(sender, options)]))[0]
        self.in_transaction = reply.is_success
        return reply

    async def rcpt(self, recipient: str) -> Reply:
        return (await self._exchange(["RCPT TO"], [_rcpt(recipient)]))[0]

    async def mail_rcpt(
        self, sender: str, options: Sequence[str], recipient: str
    ) -> tuple[Reply, Reply | None]:
        """MAIL FROM and the first RCPT TO: one write and one round trip when the remote
        advertises PIPELINING (RFC 2920 §3.1), else one after the other. The RCPT reply is
        None when MAIL was refused (not pipelined: RCPT was never sent)."""
        if not self.pipelining:
            mail = await self.mail(sender, options)
            return mail, (await self.rcpt(recipient) if mail.is_success else None)
        self.transactions += 1
        mail, rcpt = await self._exchange(
            ["MAIL FROM", "RCPT TO"], [_mail(sender, options), _rcpt(recipient)]
        )
        self.in_transaction = mail.is_success
        return mail, (rcpt if mail.is_success else None)

    async def data(self, content: bytes) -> Reply:
        start = (await self._exchange(["DATA"], [b"DATA"]))[0]
        if start.code != 354:
            return start  # the DATA command refused: still in_transaction
        try:
            message, end = wire_message(content)
            self.wire.write(message)
            self.wire.write(end)
            timeout = data_done_timeout(self.wire.command_timeout, len(message))
            reply = self._answer(await self.wire.reply(timeout))
            self.in_transaction = False
            return reply
        except asyncio.CancelledError:
            self.broken = True  # same as in _exchange: the stream is out of step now
            raise
        except (WireLost, TimeoutError, OSError) as exc:
            return self._failed("message", exc)

    async def rset(self) -> bool:
        """RSET for reuse; False (and the session is broken) if the remote did not say 250."""
        if not self.alive:
            return False
        reply = (await self._exchange(["RSET"], [b"RSET"]))[0]
        if reply.code != 250:
            self.broken = True
        else:
            self.in_transaction = False
        return not self.broken

    async def noop(self) -> bool:
        reply = (await self._exchange(["NOOP"], [b"NOOP"]))[0]
        return reply.code == 250 and not self.broken

    async def quit(self) -> None:
        """QUIT politely (bounded by the command timeout), then close regardless."""
        try:
            if self.connected:
                await self._exchange(["QUIT"], [b"QUIT"])
        finally:
            self.close()

    def close(self) -> None:
        self.broken = True
        self.wire.transport.close()


def _mail(sender: str, options: Sequence[str]) -> bytes:
    return b" ".join([b"MAIL", _path(b"FROM:", sender), *_opts(options)])


def _rcpt(recipient: str) -> bytes:
    return b"RCPT " + _path(b"TO:", recipient)


def _path(keyword: bytes, address: str) -> bytes:
    # Our own <...> quoting: aiosmtplib's parseaddr-based quoting mangles quoted local parts.
    return keyword + b"<" + address.encode("utf-8") + b">"


def _opts(options: Sequence[str]) -> list[bytes]:
    return [o.encode("ascii") for o in options]


async def _connect(target: Target, settings: OutboundSettings) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname=target.ip,
        port=target.port,
        local_hostname=settings.helo,
        timeout=settings.command_timeout,
        start_tls=False,  # STARTTLS is ours to decide (aiosmtplib would validate certificates)
        validate_certs=False,
    )
    await smtp.connect(timeout=settings.connect_timeout)
    try:
        await _hello(smtp, settings)
    except BaseException:
        # Refused, or cancelled (our client vanished): nobody else holds this connection.
        smtp.close()
        raise
    return smtp


async def _hello(smtp: aiosmtplib.SMTP, settings: OutboundSettings) -> None:
    try:
        await smtp.ehlo(hostname=settings.helo)
    except aiosmtplib.SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo(hostname=settings.helo)  # RFC 5321 §3.2: fall back for old servers


async def _open_target(
    target: Target,
    key: str,
    settings: OutboundSettings,
    tlsa: tuple[Tlsa, ...] | None = (),
) -> RemoteSession:
    """Connect to one target and apply the STARTTLS level (or DANE, when `tlsa` holds
    records for it); raises SessionError."""
    host = target.host
    if tlsa is None:  # RFC 7672 §2.2.2: a failed TLSA lookup makes the host unusable
        raise SessionError(_synthetic("4.7.5", f"DANE: TLSA lookup for {host} failed"))
    try:
        smtp = await _connect(target, settings)
    except aiosmtplib.SMTPConnectResponseError as exc:
        # a 4xx/5xx greeting
        raise SessionError(make_reply(exc.code, exc.message, host)) from exc
    except aiosmtplib.SMTPResponseException as exc:
        # EHLO and HELO refused
        raise SessionError(make_reply(exc.code, exc.message, host)) from exc
    except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
        raise SessionError(_synthetic("4.4.1", f"connect to {target.relay}: timed out")) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SessionError(_synthetic("4.4.1", f"connect to {target.relay}: {exc}")) from exc
    if tlsa:
        return await _dane(smtp, target, key, settings, tlsa)
    if settings.starttls == "off":
        return RemoteSession(smtp, target, key, False, settings.command_timeout)
    if not smtp.supports_extension("starttls"):
        if settings.starttls in ("required", "verify"):
            smtp.close()
            raise SessionError(
                _synthetic("4.7.4", f"TLS is required, but was not offered by host {host}")
            )
        return RemoteSession(smtp, target, key, False, settings.command_timeout)
    verify = settings.starttls == "verify"
    context = verify_context(settings.ca_file) if verify else OPPORTUNISTIC
    try:
        await smtp.starttls(tls_context=context, server_hostname=target.name)
        await _hello(smtp, settings)
        return RemoteSession(smtp, target, key, True, settings.command_timeout)
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
        smtp.close()
        if verify:
            # Never clear text after a failed check: that is what an attacker would cause.
            why = failure_reason(exc)
            log.warning("TLS with %s refused: %s", host, why)
            raise SessionError(_synthetic("4.7.5", f"TLS with {host} refused: {why}")) from exc
        if settings.starttls == "required":
            raise SessionError(
                _synthetic("4.7.5", f"Cannot start TLS with {host}: handshake failed: {exc}")
            ) from exc
        log.info("STARTTLS with %s failed (%s); retrying in clear text", host, exc)
    except BaseException:
        smtp.close()  # cancelled mid-handshake: as in _connect, close what nobody holds
        raise
    # Opportunistic: a fresh plain connection (the old one is unusable after a failed handshake).
    plain = OutboundSettings(
        settings.helo, settings.connect_timeout, settings.command_timeout, "off"
    )
    return await _open_target(target, key, plain)


async def _dane(
    smtp: aiosmtplib.SMTP,
    target: Target,
    key: str,
    settings: OutboundSettings,
    tlsa: tuple[Tlsa, ...],
) -> RemoteSession:
    """DANE-EE(3) (RFC 7672 §3.1.1): TLS is mandatory and the certificate must match a
    TLSA record; its chain and names are not checked. Failures are soft, never clear text."""
    host = target.host
    if not smtp.supports_extension("starttls"):
        smtp.close()
        raise SessionError(
            _synthetic("4.7.4", f"DANE: TLS is required, but was not offered by host {host}")
        )
    try:
        await smtp.starttls(tls_context=OPPORTUNISTIC, server_hostname=target.name)
        ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der or not dane_matches(tlsa, der):
            log.warning("DANE: certificate of %s matches none of its TLSA records", host)
            raise SessionError(
                _synthetic("4.7.5", f"DANE: certificate of {host} matches no TLSA record")
            )
        await _hello(smtp, settings)
        return RemoteSession(smtp, target, key, True, settings.command_timeout)
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
        smtp.close()
        raise SessionError(
            _synthetic("4.7.5", f"DANE: TLS with {host} failed: {failure_reason(exc)}")
        ) from exc
    except BaseException:
        smtp.close()
        raise


async def open_session(route: Route, settings: OutboundSettings) -> RemoteSession | Reply:
    """Try the route's targets in order, once each; the first greeted session wins.

    When none works the last failure is returned (a remote's greeting/EHLO reply, or a
    synthetic 4.4.x for connection failures and timeouts).
    """
    last = _synthetic("4.4.4", f"no targets for {route.key}")
    if route.tls and route.tls != settings.starttls:
        settings = dataclasses.replace(settings, starttls=route.tls)
    tlsa = dict(route.tlsa)
    for target in route.targets:
        try:
            return await _open_target(target, route.key, settings, tlsa.get(target.name, ()))
        except SessionError as exc:
            log.info("%s: %s", target.relay, exc.reply.line())
            last = exc.reply
        except asyncio.CancelledError:
            raise
    return last
