# VERP tokens: round trip, and every kind of tampering decodes to None.
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.verp import VerpKey, decode, encode, remote_sender

KEY = VerpKey.from_settings("bounces", "bounces.sender.example", "s3cret")


def test_round_trip() -> None:
    address = encode(KEY, "Kiji.Tora+news@Dest.Example", "Q1A2B3")
    assert address.startswith("bounces+") and address.endswith("@bounces.sender.example")
    assert "kiji.tora+news=dest.example" in address.lower()
    token = decode(KEY, address)
    assert token is not None
    assert (token.recipient, token.queue_id) == ("kiji.tora+news@dest.example", "Q1A2B3")


def test_case_changes_on_the_way_back_are_tolerated() -> None:
    address = encode(KEY, "user@dest.example", "AbC123")
    token = decode(KEY, "<" + address.upper() + ">")
    assert token is not None and token.recipient == "user@dest.example"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.replace("user=dest", "victim=dest"),  # another recipient
        lambda a: a.replace("=Q1=", "=Q2="),  # another queue id
        lambda a: a.replace("bounces+", "bounces+x"),  # altered MAC
        lambda a: a.replace("@bounces.sender.example", "@other.example"),  # other domain
        lambda a: a.replace("bounces+", "returns+"),  # other prefix
        lambda a: a.split("=", 1)[1],  # no MAC at all
        lambda a: "bounces+zzzzzzzz=Q1=user=dest.example@bounces.sender.example",  # forged MAC
    ],
)
def test_tampering_decodes_to_none(mutate: object) -> None:
    address = encode(KEY, "user@dest.example", "Q1")
    assert decode(KEY, address) is not None
    assert decode(KEY, mutate(address)) is None  # type: ignore[operator]


def test_other_secret_does_not_validate() -> None:
    other = VerpKey.from_settings("bounces", "bounces.sender.example", "other")
    assert decode(other, encode(KEY, "user@dest.example", "Q1")) is None


def test_remote_sender_rules() -> None:
    assert remote_sender(KEY, "", "user@dest.example", "Q1") == ""  # null sender stays null
    assert remote_sender(KEY, "app@sender.example", '"odd user"@dest.example', "Q1") == (
        "app@sender.example"  # not encodable: keep the original sender
    )
    verp = remote_sender(KEY, "app@sender.example", "user@dest.example", "Q1")
    assert decode(KEY, verp) is not None


_local = st.from_regex(r"[a-z0-9][a-z0-9.+=_-]{0,20}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True)
_qid = st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)


@given(_local, _domain, _qid)
def test_round_trip_property(local: str, domain: str, qid: str) -> None:
    token = decode(KEY, encode(KEY, f"{local}@{domain}", qid))
    assert token is not None
    assert token.recipient == f"{local}@{domain}".lower()
    assert token.queue_id == qid


def test_encode_refuses_what_the_token_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode(KEY, '"odd user"@dest.example', "Q1")
    with pytest.raises(ValueError):
        encode(KEY, "user@dest.example", "Q=1")  # queue ids are alphanumeric
