"""The recipient state record (relay/queue/records.py `RcptState`) reads the JSON that
earlier versions wrote, and writes the same JSON back."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from policy.reply import Reply
from relay.queue.records import (
    Attempt,
    RcptState,
    RecordError,
    check_rcpt,
    decode_rcpt,
    encode_rcpt,
    new_rcpt_state,
    rcpt_key,
    recipient_from_state,
)

# As the dict-based queue wrote them: compact JSON, keys in this order.
OLD_LEASED = (
    b'{"rcpt":"a@b.test","next_at":1700000000000000,"first_failure":1699990000000000,'
    b'"tries":2,"attempts":[{"when":1699990000000000,"reply":[451,"4.3.0","try later",'
    b'"mx.b.test"],"relay":"mx.b.test[192.0.2.1]:25","stage":"RCPT"}],"leased_by":"12:ab",'
    b'"held":true,"delivering":1700000000500000}'
)
OLD_NEW = (
    b'{"rcpt":"c@d.test","next_at":1700000000000000,"first_failure":null,"tries":0,'
    b'"attempts":[],"leased_by":""}'
)
OLDEST = b'{"rcpt":"e@f.test","next_at":1,"first_failure":null,"tries":0,"attempts":[]}'


def test_an_old_record_decodes_into_typed_state() -> None:
    state = decode_rcpt(OLD_LEASED)
    assert state == RcptState(
        "a@b.test",
        1_700_000_000_000_000,
        1_699_990_000_000_000,
        2,
        [
            Attempt(
                datetime(2023, 11, 14, 19, 26, 40, tzinfo=UTC),
                Reply(451, "4.3.0", "try later", "mx.b.test"),
                "mx.b.test[192.0.2.1]:25",
                "RCPT",
            )
        ],
        "12:ab",
        True,
        1_700_000_000_500_000,
    )
    assert state.is_held
    r = recipient_from_state("Q1", state)
    assert (r.recipient, r.tries, r.held, r.leased_by) == ("a@b.test", 2, True, "12:ab")
    assert r.last_reply == Reply(451, "4.3.0", "try later", "mx.b.test")


@pytest.mark.parametrize("raw", [OLD_LEASED, OLD_NEW], ids=["leased-held", "fresh"])
def test_the_json_written_back_is_the_json_read(raw: bytes) -> None:
    assert encode_rcpt(decode_rcpt(raw)) == raw


def test_a_record_without_lease_field_reads_as_not_leased() -> None:
    state = decode_rcpt(OLDEST)
    assert (state.leased_by, state.held, state.delivering) == ("", None, None)
    assert not state.is_held


def test_unknown_keys_survive_a_rewrite() -> None:
    raw = OLD_NEW[:-1] + b',"future":{"x":1}}'
    state = decode_rcpt(raw)
    state.tries += 1
    assert json.loads(encode_rcpt(state))["future"] == {"x": 1}


def test_a_new_record_encodes_as_before() -> None:
    when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert encode_rcpt(new_rcpt_state("c@d.test", when, None, 0, [])) == OLD_NEW


def test_a_damaged_record_is_a_record_error() -> None:
    with pytest.raises(RecordError):
        check_rcpt(rcpt_key("Q1", "a@b.test"), b'{"rcpt":"a@b.test","next_at":1}')
    assert check_rcpt(rcpt_key("Q1", "a@b.test"), OLD_LEASED) == ("Q1", "a@b.test")
