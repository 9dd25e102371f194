# The client-facing LMTP server (RFC 2033): the SMTP server of relay/inbound/server.py with
# LHLO for EHLO and, after DATA, one reply per accepted recipient, each from that recipient's
# own remote (docs/behaviour.md#lmtp). It carries the pipeline's replies; it decides nothing.
"""Inbound LMTP: `[server] lmtp_listen`, on the same pipeline, admission and limits as SMTP.

aiosmtpd's `LMTP` class only swaps the greeting verb (LHLO for EHLO, HELO and EHLO
refused) and still answers DATA once; the per-recipient replies are written here.
What is relied on from aiosmtpd is pinned by tests/relay/inbound/test_lmtp.py.
"""

from __future__ import annotations

from typing import ClassVar

from aiosmtpd.lmtp import LMTP

from relay.inbound.replies import reply_line
from relay.inbound.server import InboundHandler, InboundServer, InboundSMTP
from relay.pipeline import ClientTransaction


class LMTPHandler(InboundHandler):
    """The SMTP hooks, with DATA answered per recipient."""

    lmtp: ClassVar[bool] = True

    async def deliver(self, txn: ClientTransaction, message: bytes) -> str | list[str]:
        # RFC 2033 §4.2: one reply per recipient whose RCPT succeeded, in RCPT order.
        return [reply_line(r) for r in await self.pipeline.data_per_recipient(txn, message)]


class InboundLMTP(LMTP, InboundSMTP):
    """aiosmtpd's LHLO (its MRO reaches InboundSMTP's EHLO hooks), then InboundSMTP."""

    greeting: ClassVar[str] = "bouncer LMTP"

    async def answer_data(self, status: str | list[str]) -> None:
        """One reply per accepted recipient (RFC 2033 §4.2). A reply for the message as a
        whole (too big, bare LF, a loop, an internal error) is repeated for each of them:
        the client waits for as many replies as it had recipients accepted."""
        assert self.envelope is not None
        lines = status if isinstance(status, list) else [status] * len(self.envelope.rcpt_tos)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        for line in lines:
            await self.push(line)


def lmtp_protocol(server: InboundServer) -> InboundLMTP:
    """The protocol factory an LMTP listener serves: one InboundLMTP per connection."""
    protocol = server.protocol(InboundLMTP, LMTPHandler)
    assert isinstance(protocol, InboundLMTP)
    return protocol
