"""Suppression tools for operators: `show` explains a refusal through
the domain's record, "@domain" is taken wherever `list` prints it, `add` has defaults
and says what it did, the importer takes spreadsheet exports, `export --unicode`, and
`list` filters by date and domain, with paging."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policy.suppression.csvfile import (
    ImportProblem,
    ImportRow,
    read_csv,
    sniff_delimiter,
    unicode_key,
)
from policy.suppression.store import SuppressionRules, SuppressionStore
from policy.verdict import Category
from relay.observe.api import Api
from relay.service import Service
from relay.store.env import open_state
from tests.relay.cli.test_suppression import config, run

NOW = datetime.now(UTC)
__all__ = ["config"]  # the fixture, shared with tests/relay/cli/test_suppression.py


def _with_store(tmp_path: Path, work: Any) -> None:
    env = open_state(tmp_path / "state", 1 << 24)
    try:
        work(SuppressionStore(env, SuppressionRules()))
    finally:
        env.close()


def test_show_explains_a_refusal_through_the_domain(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    assert run(capsys, config, "add", "@dead.example", "--why", "gone")[0] == 0
    code, out, _ = run(capsys, config, "show", "someone@dead.example")
    assert code == 0
    assert "refused:     someone@dead.example, through its domain's record @dead.example" in out
    assert "scope:       domain" in out and "gone" in out
    code, out, _ = run(capsys, config, "show", "someone@dead.example", "--format", "json")
    doc = json.loads(out)
    assert doc["refuses"] == "someone@dead.example" and doc["address"] == "dead.example"
    assert run(capsys, config, "show", "someone@alive.example")[0] == 1  # no record anywhere


def test_at_domain_round_trips_from_list(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert run(capsys, config, "add", "Example.COM", "--category", "bad-domain")[0] == 0
    code, out, _ = run(capsys, config, "list")
    key = out.splitlines()[1].split()[0]
    assert key == "@example.com"
    assert run(capsys, config, "show", key)[0] == 0
    code, out, _ = run(capsys, config, "remove", key, "--force", "--why", "back")
    assert code == 0 and out.startswith("example.com: ")


def test_add_defaults_and_says_what_it_did(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = run(capsys, config, "add", "a@example.com")
    assert code == 0 and out == "a@example.com: added, permanent (other: manual)\n"
    code, out, _ = run(capsys, config, "add", "a@example.com")
    assert code == 0 and out == "a@example.com: unchanged, already permanent (other: manual)\n"
    # A permanent record keeps its cause: adding it again with another category changes
    # nothing the refusal says, and the command says so.
    code, out, _ = run(capsys, config, "add", "a@example.com", "--category", "bad-mailbox")
    assert out.startswith("a@example.com: unchanged, already permanent")
    until = (NOW + timedelta(days=30)).date().isoformat()
    code, out, _ = run(capsys, config, "add", "b@example.com", "--until", until)
    assert "added, suppressed until " in out
    code, out, _ = run(capsys, config, "add", "b@example.com")
    assert "updated, was suppressed until" in out and "now permanent" in out


def test_import_reads_spreadsheet_exports(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    excel = tmp_path / "crm.csv"
    excel.write_bytes(
        "\ufeffNom;Courriel;Société;Ville\r\n"
        "Dupont;jean@dupont.example;ACME;Lyon\r\n"
        "Martin;;Initech;Paris\r\n"
        "Durand;not-an-address;Globex;Nice\r\n"
        "Petit;zoé@bücher.example;;Lille\r\n".encode()
    )
    code, out, err = run(capsys, config, "import", str(excel))
    assert code == 0
    assert out == "imported 2, skipped 2; 2 not an address or domain\n"
    assert "line 3:" in err and "line 4:" in err
    code, out, _ = run(capsys, config, "list", "--format", "csv")
    keys = [r["address"] for r in csv.DictReader(io.StringIO(out))]
    assert keys == ["jean@dupont.example", "zoé@xn--bcher-kva.example"]
    # Tab-delimited with an "E-mail" header, extra columns ignored.
    tabbed = tmp_path / "tabs.tsv"
    tabbed.write_text("First\tE-mail\tScore\nAnn\tann@x.example\t12\n")
    assert run(capsys, config, "import", str(tabbed))[1] == "imported 1, skipped 0\n"
    # A header with no email column is said so, not read as addresses.
    bad = tmp_path / "bad.csv"
    bad.write_text("name,phone\nAnn,555\n")
    code, out, err = run(capsys, config, "import", str(bad))
    assert code == 1 and "a header without an email column" in err


def test_read_csv_units() -> None:
    assert sniff_delimiter("a;b;c,d") == ";" and sniff_delimiter("x@y.example") == ","
    assert sniff_delimiter("a\tb") == "\t"
    # Headerless: our address,category,until list, or a contact list read for its address.
    rows = list(read_csv(["a@x.example,quota-issues\n", "b@x.example,Ann,Lee,Paris\n"], NOW))
    assert all(isinstance(r, ImportRow) for r in rows)
    good = [r for r in rows if isinstance(r, ImportRow)]
    assert [(r.key, r.category) for r in good] == [
        ("a@x.example", Category.QUOTA_ISSUES),
        ("b@x.example", Category.BAD_MAILBOX),
    ]
    (problem,) = read_csv(["a@x.example,nonsense\n"], NOW)
    assert isinstance(problem, ImportProblem) and "unknown category" in problem.problem


def test_unicode_key() -> None:
    assert unicode_key("zoe@xn--bcher-kva.example") == "zoe@bücher.example"
    assert unicode_key("xn--mnchen-3ya.example") == "münchen.example"
    assert unicode_key("bob@example.com") == "bob@example.com"
    assert unicode_key("x@xn--zz.example") == "x@xn--zz.example"  # not decodable: as stored


def test_export_unicode(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    assert run(capsys, config, "add", "zoé@bücher.example")[0] == 0
    assert run(capsys, config, "add", "@münchen.example")[0] == 0
    code, out, _ = run(capsys, config, "export")
    assert "xn--bcher-kva.example" in out and "bücher" not in out
    code, out, _ = run(capsys, config, "export", "--unicode")
    keys = [r["address"] for r in csv.DictReader(io.StringIO(out))]
    assert keys == ["münchen.example", "zoé@bücher.example"]
    again = tmp_path / "again.csv"
    again.write_text(out)
    _, text, _ = run(capsys, config, "import", str(again))
    assert text == "imported 2, skipped 0\n"  # the U-label form reads back


def test_list_filters_by_date_and_domain_with_paging(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    old = NOW - timedelta(days=40)

    def fill(store: SuppressionStore) -> None:
        for i in range(5):
            store.add(f"u{i}@a.example", Category.OTHER, NOW)
        store.add("old@a.example", Category.OTHER, old)
        store.add("x@b.example", Category.OTHER, NOW)
        store.add("a.example", Category.BAD_DOMAIN, old)

    _with_store(tmp_path, fill)

    def keys(*argv: str) -> list[str]:
        code, out, _ = run(capsys, config, "list", "--format", "json", *argv)
        assert code == 0
        return [json.loads(line)["address"] for line in out.splitlines()]

    assert keys("--domain", "b.example") == ["x@b.example"]
    assert keys(
        "--domain", "@A.example", "--until", (NOW - timedelta(days=1)).date().isoformat()
    ) == [
        "a.example",
        "old@a.example",
    ]
    recent = keys("--since", (NOW - timedelta(days=1)).date().isoformat())
    assert recent == [f"u{i}@a.example" for i in range(5)] + ["x@b.example"]
    code, out, err = run(capsys, config, "list", "--limit", "3")
    page = [line.split()[0] for line in out.splitlines()[1:]]
    assert page == ["@a.example", "old@a.example", "u0@a.example"]
    assert "--after u0@a.example" in err
    code, out, err = run(capsys, config, "list", "--limit", "3", "--after", "u0@a.example")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "u1@a.example",
        "u2@a.example",
        "u3@a.example",
    ]
    assert keys("--after", "@a.example", "--limit", "1") == ["old@a.example"]
    with pytest.raises(SystemExit):
        run(capsys, config, "list", "--limit", "0")


TOKEN = "suppression-tools-token-0123456789"


@pytest.fixture
async def api(relay_service: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    svc: Service = await relay_service({"api": {"listen": "127.0.0.1:0", "token": TOKEN}})
    (component,) = [c for c in svc.components if isinstance(c, Api)]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield f"http://127.0.0.1:{component.port}", http


async def test_api_takes_at_domain(api: tuple[str, aiohttp.ClientSession]) -> None:
    base, http = api
    async with http.put(f"{base}/suppressions/@dead.example", json={}) as resp:
        assert resp.status == 200 and (await resp.json())["scope"] == "domain"
    async with http.get(f"{base}/suppressions/@dead.example") as resp:
        assert (await resp.json())["address"] == "dead.example"
    for key in ("a@dead.example", "b@dead.example", "c@live.example"):
        async with http.put(f"{base}/suppressions/{key}", json={}) as resp:
            assert resp.status == 200
    params = {"domain": "dead.example", "limit": "2", "after": "@dead.example"}
    async with http.get(f"{base}/suppressions", params=params) as resp:
        assert [r["address"] for r in await resp.json()] == ["a@dead.example", "b@dead.example"]
    tomorrow = (NOW + timedelta(days=1)).date().isoformat()
    async with http.get(f"{base}/suppressions", params={"since": tomorrow}) as resp:
        assert await resp.json() == []
    async with http.get(f"{base}/suppressions", params={"limit": "0"}) as resp:
        assert resp.status == 400
