# A running Service (in process, loopback, port 0): scrape /metrics and /healthz, and use
# the HTTP API end to end; the suppression it reads is the one real traffic created.
from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from relay.observe.api import Api
from relay.observe.metrics import Metrics
from relay.service import Service
from tests.support.fake_mx import FakeMX
from tests.support.smtp_client import send
from tests.support.wait import until

TOKEN = "s3cret-token-0123456789"


def _component(svc: Service, kind: type) -> Any:
    (found,) = [c for c in svc.components if isinstance(c, kind)]
    return found


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition (label order ignored)."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric == name and sorted(filter(None, rest.rstrip("}").split(","))) == want:
            return float(value)
    raise AssertionError(f"{name}{want} not in metrics:\n{text}")


@pytest.fixture
async def running(relay_service: Any, fake_mx: FakeMX) -> tuple[Service, FakeMX]:
    fake_mx.rcpt_replies["dead@good.test"] = "550 5.1.1 <dead@good.test>: User unknown"
    fake_mx.rcpt_replies["full@good.test"] = "452 4.2.2 Mailbox full"
    svc = await relay_service(
        {
            "delivery": {"routes": {"good.test": fake_mx.address}},
            "metrics": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        }
    )
    return svc, fake_mx


async def test_metrics_and_healthz_of_a_running_server(running: tuple[Service, FakeMX]) -> None:
    svc, mx = running
    host, port = svc.addresses[0]
    got = await send(host, port, "app@sender.test", ["a@good.test", "dead@good.test"])
    assert got.rcpt["dead@good.test"][0] == 550 and got.data is not None and got.data[0] == 250
    got = await send(host, port, "app@sender.test", ["full@good.test"])
    assert got.data is not None and got.data[0] == 250  # queued by bouncer

    metrics = _component(svc, Metrics)
    base = f"http://127.0.0.1:{metrics.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and (await resp.text()).strip() == "ok"

        sent = _sample(
            text,
            "bouncer_recipients_total",
            **{"status": "sent", "class": "delivered", "category": "delivered"},
        )
        assert sent == 1
        bounced = _sample(
            text,
            "bouncer_recipients_total",
            **{"status": "bounced", "class": "hard", "category": "bad-mailbox"},
        )
        assert bounced == 1
        assert _sample(text, "bouncer_messages_total") == 2
        assert _sample(text, "bouncer_connections_total") == 2
        assert _sample(text, "bouncer_queue_messages") == 1
        assert _sample(text, "bouncer_queue_recipients") == 1
        assert _sample(text, "bouncer_suppression_records") >= 1  # dead@good.test
        assert _sample(text, "bouncer_queue_oldest_age_seconds") >= 0
        assert _sample(text, "bouncer_remote_sessions_open") >= 1  # pooled for reuse
        assert _sample(text, "bouncer_remote_reply_seconds_count", stage="RCPT") >= 1

        # The listener goes down: /healthz must say so.
        for server in svc.servers:
            server.close()
            await server.wait_closed()
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503 and "listener" in await resp.text()


async def test_healthz_fails_when_the_store_cannot_be_read(
    running: tuple[Service, FakeMX],
) -> None:
    svc, _ = running
    metrics = _component(svc, Metrics)
    assert svc.store is not None

    def broken(now: object = None) -> dict[str, int]:
        from policy.suppression.store import StoreError

        raise StoreError("cannot read")

    svc.store.count = broken  # type: ignore[method-assign]  # a failing store, not a mock of time
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{metrics.port}/healthz") as resp:
            assert resp.status == 503 and "store" in await resp.text()


async def test_api_end_to_end(running: tuple[Service, FakeMX]) -> None:
    svc, mx = running
    host, port = svc.addresses[0]
    await send(host, port, "app@sender.test", ["dead@good.test"])
    api = _component(svc, Api)
    base = f"http://127.0.0.1:{api.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/suppressions/dead@good.test") as resp:
            assert resp.status == 401  # no token
        async with http.get(f"{base}/stats", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401

        # Read what the traffic wrote.
        async with http.get(f"{base}/suppressions/dead@good.test", headers=auth) as resp:
            assert resp.status == 200
            rec = await resp.json()
        assert rec["state"] == "suppressed" and rec["category"] == "bad-mailbox"

        # Add by hand; the relay refuses it before any network traffic.
        body = {"category": "bad-mailbox", "why": "unsubscribed by support"}
        async with http.put(f"{base}/suppressions/Gone@Good.test", json=body, headers=auth) as r:
            assert r.status == 200 and (await r.json())["address"] == "gone@good.test"
        rcpts_before = len(mx.rcpts)
        got = await send(host, port, "app@sender.test", ["gone@good.test"])
        assert got.rcpt["gone@good.test"][0] == 550 and len(mx.rcpts) == rcpts_before

        async with http.get(f"{base}/suppressions", headers=auth) as resp:
            listed = {r["address"] for r in await resp.json()}
        assert {"dead@good.test", "gone@good.test"} <= listed
        async with http.get(f"{base}/suppressions?format=csv", headers=auth) as resp:
            assert resp.content_type == "text/csv" and "gone@good.test" in await resp.text()

        # Activity on a record, then lift it; the relay delivers again.
        async with http.post(
            f"{base}/activity", json={"address": "dead@good.test"}, headers=auth
        ) as r:
            assert r.status == 200
        # A hand-added suppression without an end date is permanent: lifting it needs force.
        async with http.delete(f"{base}/suppressions/gone@good.test", headers=auth) as resp:
            assert resp.status == 409 and (await resp.json())["force_required"] is True
        url = f"{base}/suppressions/gone@good.test?force=1"
        async with http.delete(url, headers=auth) as resp:
            assert resp.status == 400  # force without a reason
        async with http.delete(url + "&why=resubscribed", headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "active"
        got = await send(host, port, "app@sender.test", ["gone@good.test"])
        assert got.rcpt["gone@good.test"][0] == 250

        async with http.delete(f"{base}/suppressions/nobody@good.test", headers=auth) as resp:
            assert resp.status == 404
        async with http.put(f"{base}/suppressions/not-an-address@", json={}, headers=auth) as r:
            assert r.status == 400
        async with http.post(
            f"{base}/suppressions/import",
            data="a1@good.test\na2@good.test,bad-domain\n",
            headers=auth,
        ) as resp:
            assert (await resp.json())["added"] == 2

        # Long lists stream in chunks; every record arrives once, in JSON and in CSV.
        bulk = "\n".join(f"bulk{i}@good.test" for i in range(1234))
        async with http.post(f"{base}/suppressions/import", data=bulk, headers=auth) as resp:
            assert (await resp.json())["added"] == 1234
        async with http.get(f"{base}/suppressions", headers=auth) as resp:
            listed_all = [r["address"] for r in await resp.json()]
        assert len(listed_all) == len(set(listed_all))
        assert {f"bulk{i}@good.test" for i in range(1234)} | {"a1@good.test"} <= set(listed_all)
        async with http.get(f"{base}/suppressions?format=csv", headers=auth) as resp:
            lines = (await resp.text()).strip().splitlines()
        assert lines[0].startswith("address,") and len(lines) == 1 + len(listed_all)

        # Stats: the counters are written by a batch flush; wait for that batch.
        doc: dict[str, Any] = {}

        async def stats_rows() -> bool:
            nonlocal doc
            async with http.get(f"{base}/stats?by=domain", headers=auth) as resp:
                assert resp.status == 200
                doc = await resp.json()
            return bool(doc["rows"])

        await until(stats_rows, "the stats batch flush")
        (row,) = doc["rows"]
        assert row["key"] == "good.test"
        assert (row["sent"], row["hard"], row["suppressed"], row["delivered"]) == (2, 1, 1, 1)
        assert row["hard_rate"] == 0.5
        async with http.get(f"{base}/stats?by=week", headers=auth) as resp:
            assert resp.status == 400


async def test_a_metrics_port_in_use_is_a_startup_error(tmp_path: Any) -> None:
    import socket

    from relay.config.load import config_from_dict
    from relay.service import StartupError

    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    cfg = config_from_dict(
        {
            "server": {"listen": ["127.0.0.1:0"]},
            "store": {"path": str(tmp_path / "state")},
            "metrics": {"listen": f"127.0.0.1:{port}"},
        }
    )
    svc = Service(cfg)
    try:
        with pytest.raises(StartupError, match=r"\[metrics\]"):
            await svc.startup()
    finally:
        await svc.shutdown()
        taken.close()
