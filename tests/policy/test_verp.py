# VERP tokens: round trip, every kind of tampering decodes to None, and tokens expire.
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.verp import VerpKey, decode, encode, remote_sender

KEY = VerpKey.from_settings("bounces", "bounces.sender.example", "s3cret-s3cret-s3cret")
NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def test_round_trip() -> None:
    address = encode(KEY, "Kiji.Tora+news@Dest.Example", "Q1A2B3", NOW)
    assert address.startswith("bounces+") and address.endswith("@bounces.sender.example")
    assert "kiji.tora+news=dest.example" in address.lower()
    token = decode(KEY, address, NOW)
    assert token is not None
    assert (token.recipient, token.queue_id) == ("kiji.tora+news@dest.example", "Q1A2B3")


def test_case_changes_on_the_way_back_are_tolerated() -> None:
    address = encode(KEY, "user@dest.example", "AbC123", NOW)
    token = decode(KEY, "<" + address.upper() + ">", NOW)
    assert token is not None and token.recipient == "user@dest.example"


def _retag_day(address: str) -> str:
    # Another day stamp with the same MAC: the MAC covers the day, so this must fail.
    head, _, rest = address.partition("+")
    day = rest[:2]
    other = "a" if day[1] != "a" else "b"
    return f"{head}+{day[0]}{other}{rest[2:]}"


MUTATIONS: list[Callable[[str], str]] = [
    lambda a: a.replace("user=dest", "victim=dest"),  # another recipient
    lambda a: a.replace("=Q1=", "=Q2="),  # another queue id
    lambda a: a.replace("bounces+", "bounces+x"),  # altered stamp
    lambda a: a.replace("@bounces.sender.example", "@other.example"),  # other domain
    lambda a: a.replace("bounces+", "returns+"),  # other prefix
    lambda a: a.split("=", 1)[1],  # no stamp at all
    lambda a: "bounces+aazzzzzzzz=Q1=user=dest.example@bounces.sender.example",  # forged MAC
    _retag_day,
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_tampering_decodes_to_none(mutate: Callable[[str], str]) -> None:
    address = encode(KEY, "user@dest.example", "Q1", NOW)
    assert decode(KEY, address, NOW) is not None
    assert decode(KEY, mutate(address), NOW) is None


def test_other_secret_does_not_validate() -> None:
    other = VerpKey.from_settings("bounces", "bounces.sender.example", "other-other-other")
    assert decode(other, encode(KEY, "user@dest.example", "Q1", NOW), NOW) is None


def test_tokens_expire_after_max_age() -> None:
    address = encode(KEY, "user@dest.example", "Q1", NOW)
    assert decode(KEY, address, NOW + timedelta(days=30)) is not None
    assert decode(KEY, address, NOW + timedelta(days=31)) is None
    assert decode(KEY, address, NOW - timedelta(days=1)) is None  # issued "in the future"
    forever = VerpKey.from_settings("bounces", "bounces.sender.example", "s3cret-s3cret-s3cret", 0)
    assert decode(forever, address, NOW + timedelta(days=400)) is not None


def test_remote_sender_rules() -> None:
    assert remote_sender(KEY, "", "user@dest.example", "Q1", NOW) == ""  # null stays null
    assert remote_sender(KEY, "app@sender.example", '"odd user"@dest.example', "Q1", NOW) == (
        "app@sender.example"  # not encodable: keep the original sender
    )
    verp = remote_sender(KEY, "app@sender.example", "user@dest.example", "Q1", NOW)
    assert decode(KEY, verp, NOW) is not None


def test_encode_refuses_what_the_token_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode(KEY, '"odd user"@dest.example', "Q1", NOW)
    with pytest.raises(ValueError):
        encode(KEY, "user@dest.example", "Q=1", NOW)  # queue ids are alphanumeric


_local = st.from_regex(r"[a-z0-9][a-z0-9.+=_-]{0,20}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True)
_qid = st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)
_when = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(_local, _domain, _qid, _when, st.integers(0, 30))
def test_round_trip_property(local: str, domain: str, qid: str, when: datetime, age: int) -> None:
    token = decode(KEY, encode(KEY, f"{local}@{domain}", qid, when), when + timedelta(days=age))
    assert token is not None
    assert token.recipient == f"{local}@{domain}".lower()
    assert token.queue_id == qid
