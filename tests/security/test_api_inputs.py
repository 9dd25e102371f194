# Hostile or careless input to the HTTP API: each is a 4xx naming the
# problem, never a 500/503, and never a side effect (`{"until": {}}` once made a permanent
# suppression). A large import goes to the one writer thread a batch at a time, so a store
# write an SMTP transaction waits for runs between batches, not after the whole file.
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from yarl import URL

from policy.verdict import Category
from relay.observe.api import Api
from relay.service import Service

TOKEN = "api-input-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(relay_service: Any) -> AsyncIterator[tuple[Service, str, aiohttp.ClientSession]]:
    svc: Service = await relay_service({"api": {"listen": "127.0.0.1:0", "token": TOKEN}})
    (component,) = [c for c in svc.components if isinstance(c, Api)]
    async with aiohttp.ClientSession(headers=AUTH) as http:
        yield svc, f"http://127.0.0.1:{component.port}", http


async def test_deeply_nested_json_is_400(api: tuple[Service, str, Any]) -> None:
    _svc, base, http = api
    body = "[" * 100_000 + "]" * 100_000
    for method, path in (("PUT", "/suppressions/a@b.test"), ("POST", "/activity")):
        async with http.request(method, base + path, data=body) as resp:
            assert resp.status == 400, (path, resp.status, await resp.text())
            assert "nested" in (await resp.json())["error"]


async def test_a_body_that_is_not_utf8_is_400(api: tuple[Service, str, Any]) -> None:
    _svc, base, http = api
    async with http.put(f"{base}/suppressions/a@b.test", data=b'{"why": "\xff"}') as resp:
        assert resp.status == 400 and "UTF-8" in (await resp.json())["error"]


@pytest.mark.parametrize("since", ["99999999d", "999999999w", "9" * 5000 + "d", "0d"])
async def test_stats_with_a_period_out_of_range_is_400(
    api: tuple[Service, str, Any], since: str
) -> None:
    _svc, base, http = api
    async with http.get(f"{base}/stats", params={"since": since}) as resp:
        assert resp.status == 400, await resp.text()
        error = (await resp.json())["error"]
    assert "Overflow" not in error and "out of range" not in error, error


@pytest.mark.parametrize(
    "body",
    [{"until": {}}, {"until": []}, {"until": 0}, {"until": ""}, {"until": "soon"},
     {"until": "9999-12-31T23:00:00-05:00"}, {"category": {}}, {"why": ["x"]}],
)  # fmt: skip
async def test_a_bad_field_is_400_and_adds_nothing(
    api: tuple[Service, str, Any], body: dict[str, Any]
) -> None:
    svc, base, http = api
    async with http.put(f"{base}/suppressions/victim@b.test", json=body) as resp:
        assert resp.status == 400, (body, resp.status, await resp.text())
    assert svc.store is not None and svc.store.get("victim@b.test") is None


async def test_null_until_is_permanent(api: tuple[Service, str, Any]) -> None:
    _svc, base, http = api
    async with http.put(f"{base}/suppressions/gone@b.test", json={"until": None}) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "permanent"


@pytest.mark.parametrize("key", ["%2e%2e", "%2e", ".", "x" * 600 + ".test", "@"])
async def test_a_key_that_cannot_be_a_record_is_400_not_503(
    api: tuple[Service, str, Any], key: str
) -> None:
    _svc, base, http = api
    # encoded=True: sent as written; the client would otherwise resolve "%2e%2e" away.
    async with http.get(URL(f"{base}/suppressions/{key}", encoded=True)) as resp:
        assert resp.status in (400, 404), (key, resp.status, await resp.text())


async def test_an_import_with_bad_bytes_names_the_line(api: tuple[Service, str, Any]) -> None:
    _svc, base, http = api
    body = b"a@b.test\n\xff\xfe@c.test\nd@e.test\n"
    async with http.post(f"{base}/suppressions/import", data=body) as resp:
        assert resp.status == 200, await resp.text()
        result = await resp.json()
    assert result["added"] == 2 and result["problems"] == ["line 2: not UTF-8"], result


async def test_store_writes_run_between_import_batches(api: tuple[Service, str, Any]) -> None:
    # A write handed to the writer once the import has begun (as an RCPT's refusal record
    # is) must finish while the import still runs: one writer job per batch, not per file.
    svc, base, http = api
    store = svc.store
    assert store is not None
    (component,) = [c for c in svc.components if isinstance(c, Api)]
    rows = 4000  # 20 batches
    body = "".join(f"user{n}@import.test\n" for n in range(rows))
    started = asyncio.Event()
    write = component._write
    assert write is not None

    async def signalling_write(fn: Any, *args: Any) -> Any:
        future = asyncio.ensure_future(write(fn, *args))  # handed to the thread at once
        started.set()
        return await future

    component._write = signalling_write
    request = asyncio.create_task(http.post(f"{base}/suppressions/import", data=body))
    await started.wait()
    await svc.writer.run(store.add, "rcpt@interleaved.test", Category.OTHER, datetime.now(UTC))
    assert not request.done(), "the store write waited for the whole import"
    async with await request as resp:
        assert (await resp.json())["added"] == rows
