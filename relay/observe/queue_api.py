# The HTTP API's queue endpoints: strings in and out; the Spool does the work, the same
# calls as `bouncer queue`, and relay/queue/view.py shapes what both show.
"""Queue endpoints of the API (behind its bearer token, on its listener):

    GET    /queue[?domain=..&sender=..&older_than=2h]   queued messages, `queue list --json`
    GET    /queue/summary[?domain=..]                   recipients by domain and age (qshape)
    GET    /queue/{id}[?content=1]                      one message (content=1: its bytes)
    POST   /queue/{id}/hold|release|retry[?domain=..]   -> {"queue_id", "action", "recipients"}
    DELETE /queue/{id}?why=..[&dsn=1&domain=..]          drop it (why is required)

Writes run on the service's writer thread (`Api.write`), reads on the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from relay.observe.http_reply import ApiError, json_reply
from relay.queue.queue import QueuedMessage, Spool
from relay.queue.view import (
    QueueFilter,
    domain_filter,
    message_json,
    parse_age,
    summarize,
    summary_json,
)


class ApiParts(Protocol):
    """What the queue handlers use of `relay.observe.api.Api`."""

    spool: Spool | None
    clock: Callable[[], datetime]

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any: ...


log = logging.getLogger(__name__)
_ID = "{id:[A-Za-z0-9]{1,64}}"  # as `queue list` prints them


class QueueRoutes:
    """The queue handlers, sharing the Api's spool, clock, writer and error handling."""

    def __init__(self, api: ApiParts) -> None:
        self.api = api

    def add_to(self, r: web.UrlDispatcher) -> None:
        r.add_get("/queue", self.list_queue)
        r.add_get("/queue/summary", self.queue_summary)  # before {id}: "summary" fits the id
        r.add_get(f"/queue/{_ID}", self.get_queued)
        r.add_post(f"/queue/{_ID}/{{action:hold|release|retry}}", self.change_queued)
        r.add_delete(f"/queue/{_ID}", self.drop_queued)

    def _spool(self) -> Spool:
        if self.api.spool is None:
            raise ApiError(503, "no queue")
        return self.api.spool

    @staticmethod
    def _queue_filter(request: web.Request) -> QueueFilter:
        q = request.query
        return QueueFilter(
            domain_filter(q["domain"]) if q.get("domain") else None,
            q.get("sender"),
            parse_age(q["older_than"]) if q.get("older_than") else None,
        )

    async def list_queue(self, request: web.Request) -> web.StreamResponse:
        found = self._queue_filter(request).select(self._spool().messages(), self.api.clock())
        return json_reply([message_json(m) for m in found])

    async def queue_summary(self, request: web.Request) -> web.StreamResponse:
        now = self.api.clock()
        found = self._queue_filter(request).select(self._spool().messages(), now)
        return json_reply(summary_json(summarize(found, now)))

    def _queued(self, request: web.Request) -> QueuedMessage:
        qid = request.match_info["id"]
        m = self._spool().get(qid)
        if m is None:
            raise ApiError(404, f"no message {qid} in the queue")
        return m

    async def get_queued(self, request: web.Request) -> web.StreamResponse:
        m = self._queued(request)
        if request.query.get("content") in ("1", "true", "yes"):
            data = self._spool().data(m.queue_id)
            return web.Response(body=data or b"", content_type="message/rfc822")
        return json_reply(message_json(m))

    async def change_queued(self, request: web.Request) -> web.StreamResponse:
        m = self._queued(request)
        spool, action, now = self._spool(), request.match_info["action"], self.api.clock()
        domain = domain_filter(request.query["domain"]) if request.query.get("domain") else None
        ids = [m.queue_id]
        if action == "hold":
            n = await self.api.write(spool.hold, ids, domain)
        elif action == "release":
            n = await self.api.write(spool.release, ids, now, domain)
        else:
            n = await self.api.write(spool.retry_now, ids, now, domain)
        if action != "retry" and n:
            log.warning("queue %s by the postmaster (API): %s, %d recipient(s)", action, ids[0], n)
        return json_reply({"queue_id": m.queue_id, "action": action, "recipients": n})

    async def drop_queued(self, request: web.Request) -> web.StreamResponse:
        m = self._queued(request)
        why = request.query.get("why", "").strip()
        if not why:
            raise ApiError(400, "'why' is required: it is logged and quoted in any DSN")
        dsn = request.query.get("dsn") in ("1", "true", "yes")
        domain = domain_filter(request.query["domain"]) if request.query.get("domain") else None
        gone = await self.api.write(
            self._spool().drop, m.queue_id, why, dsn, self.api.clock(), domain
        )
        if gone is None:
            raise ApiError(404, f"no recipient of {m.queue_id} at {domain}")
        rcpts = ", ".join(f"<{r.recipient}>" for r in gone.recipients)
        log.warning("%s: removed by the postmaster (API): %s; to=%s", m.queue_id, why, rcpts)
        return json_reply({"queue_id": m.queue_id, "dropped": len(gone.recipients), "dsn": dsn})
