# The intake listener over real SMTP on a loopback port: RCPT filtering, a late DSN to a VERP
# address suppresses its recipient, a forged token changes nothing, an ARF report blocks.
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import aiosmtplib
import pytest

from policy.suppression.escalate import SuppressionRules
from policy.suppression.records import State
from policy.suppression.store import SuppressionStore
from policy.verp import VerpKey, encode
from relay.config.load import config_from_dict
from relay.intake.listener import Intake
from relay.observe.events import Event, EventBus, RecipientEvent
from relay.store.env import open_state
from tests.support import bounce_samples as samples

SECRET = "intake-test-secret"
BOUNCE_DOMAIN = "bounces.sender.example"
KEY = VerpKey.from_settings("bounces", BOUNCE_DOMAIN, SECRET)


@pytest.fixture
async def intake(tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    config = config_from_dict(
        {
            "verp": {"enabled": True, "bounce_domain": BOUNCE_DOMAIN, "secret": SECRET},
            "intake": {"listen": "127.0.0.1:0", "feedback_addresses": ["fbl@sender.example"]},
        }
    )
    env = open_state(tmp_path / "state", 1 << 24)
    store = SuppressionStore(env, SuppressionRules())
    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    component = Intake(config, store, bus)
    await component.start()
    try:
        yield SimpleNamespace(port=component.port, store=store, events=events)
    finally:
        await component.stop()
        env.close()


async def send(port: int, rcpt: str, data: bytes) -> None:
    """Submit `data` with the null sender, as bounces come (RFC 5321 §4.5.5)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    try:
        await client.mail("")
        await client.rcpt(rcpt)
        reply = await client.data(data)
        assert reply.code == 250, reply
    finally:
        await client.quit()


async def test_unknown_recipient_refused_at_rcpt(intake: SimpleNamespace) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
        await send(intake.port, "someone@sender.example", samples.rfc3464())
    assert info.value.code == 550 and "5.1.1" in info.value.message
    assert intake.events == []


async def test_late_dsn_to_verp_address_suppresses(intake: SimpleNamespace) -> None:
    verp = encode(KEY, "gone@dest.example", "Q1A2B3", datetime.now(UTC))
    await send(intake.port, verp, samples.rfc3464(recipient="gone@dest.example"))
    now = datetime.now(UTC)
    refusal = intake.store.check("gone@dest.example", now)
    assert refusal is not None and refusal.reply.code == 550
    (event,) = intake.events
    assert isinstance(event, RecipientEvent)
    assert (event.queue_id, event.recipient, event.stage) == ("Q1A2B3", "gone@dest.example", "DSN")
    assert event.verdict is not None and event.verdict.klass.value == "hard"


async def test_forged_token_refused_and_changes_nothing(intake: SimpleNamespace) -> None:
    forged = encode(KEY, "gone@dest.example", "Q1A2B3", datetime.now(UTC)).replace(
        "gone=", "victim="
    )
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await send(intake.port, forged, samples.rfc3464(recipient="victim@dest.example"))
    assert intake.store.get("victim@dest.example") is None
    assert intake.store.check("victim@dest.example", datetime.now(UTC)) is None
    assert intake.events == []


async def test_bounce_naming_a_victim_changes_only_the_token_recipient(
    intake: SimpleNamespace,
) -> None:
    verp = encode(KEY, "user@dest.example", "Q9", datetime.now(UTC))
    data = samples.rfc3464(recipient="victim@dest.example", diagnostic="smtp; 550 5.1.1 gone")
    await send(intake.port, verp, data)
    assert intake.store.get("victim@dest.example") is None
    assert intake.store.check("user@dest.example", datetime.now(UTC)) is not None


async def test_arf_to_feedback_address_blocks(intake: SimpleNamespace) -> None:
    await send(intake.port, "FBL@sender.example", samples.arf(recipient="angry@dest.example"))
    record = intake.store.get("angry@dest.example", datetime.now(UTC))
    assert record is not None and record.state is State.BLOCKED
    assert intake.store.check("angry@dest.example", datetime.now(UTC)) is not None
    (event,) = intake.events
    assert isinstance(event, RecipientEvent) and event.stage == "ARF"


async def test_dsn_to_feedback_address_changes_nothing(intake: SimpleNamespace) -> None:
    await send(intake.port, "fbl@sender.example", samples.rfc3464(recipient="gone@dest.example"))
    assert intake.store.get("gone@dest.example") is None


async def test_autoreply_to_verp_address_changes_nothing(intake: SimpleNamespace) -> None:
    verp = encode(KEY, "holiday@dest.example", "Q5", datetime.now(UTC))
    await send(intake.port, verp, samples.AUTOREPLY)
    assert intake.store.get("holiday@dest.example") is None
    assert intake.events == []


async def test_expired_return_path_refused(intake: SimpleNamespace) -> None:
    old = encode(KEY, "gone@dest.example", "Q1A2B3", datetime.now(UTC) - timedelta(days=31))
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await send(intake.port, old, samples.rfc3464(recipient="gone@dest.example"))
    assert intake.store.get("gone@dest.example") is None
