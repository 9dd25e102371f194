# The HTTP API for applications: strings in and out at this edge; the store decides.
"""aiohttp API on `[api] listen` (loopback by default), bearer `[api] token`.

It calls the same `SuppressionStore` admin methods as `bouncer suppression`
(one implementation: get, scan, add, remove, activity, import/export) and the
same `relay.observe.counters.read_stats` as `bouncer stats`; record JSON is
`policy.suppression.records.as_dict`, the CLI's `--format json` shape. Writes run on the
service's single writer thread, reads on the loop. The clock is read here.

    GET    /suppressions[?state=suppressed|permanent|blocked|active|all&category=..&format=json|csv
                      &domain=..&since=DATE&until=DATE&limit=N&after=KEY]
    GET    /suppressions/{address or domain}
    PUT    /suppressions/{address or domain}   {"category": "bad-mailbox", "until": "2027-01-30",
                                                "why": "..."}   (until and why optional)
    DELETE /suppressions/{address or domain}[?force=1&why=..]   (or the same keys as JSON)
    POST   /suppressions/import                CSV body (our export, or address[,category[,until]])
    POST   /activity                            {"address": ".."}   (open, click, reply...)
    GET    /stats[?since=7d&until=..&by=day|domain|day,domain|total&domain=..&format=json|csv]
    GET    /queue...                                    the queue: relay/observe/queue_api.py
"""

from __future__ import annotations

import csv
import hmac
import io
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import lmdb
from aiohttp import web

from policy.address import AddressError, normalize_domain
from policy.rates import GROUPINGS, GroupBy, parse_period
from policy.suppression.bulk import select
from policy.suppression.csvfile import EXPORT_FIELDS, iso, parse_when, record_row
from policy.suppression.escalate import ForceRequired, NotSuppressed, RuleError, activity_note
from policy.suppression.records import State, as_dict
from policy.suppression.store import NotFound, StoreError, SuppressionStore
from policy.verdict import Category
from relay.config.schema import HostPort
from relay.observe.counters import read_stats, stats_csv, stats_document
from relay.observe.events import AdminEvent, EventBus
from relay.observe.http_reply import ApiError
from relay.observe.http_reply import json_reply as _json
from relay.observe.httpserve import bind_component, serve_app
from relay.observe.queue_api import QueueRoutes
from relay.queue.queue import Spool

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024 * 1024  # an import of a few hundred thousand addresses
STREAM_CHUNK = 500  # records per write when listing
IMPORT_BATCH = 200  # rows per write transaction (one writer job) when importing


class Api:
    """The API application and its Service component."""

    def __init__(
        self,
        token: str,
        listen: HostPort | None = None,
        store: SuppressionStore | None = None,
        env: lmdb.Environment | None = None,
        write: Callable[..., Awaitable[Any]] | None = None,
        clock: Callable[[], datetime] | None = None,
        spool: Spool | None = None,
        events: EventBus | None = None,
    ) -> None:
        if not token:
            raise ValueError("the API needs a token")
        self.token = token
        self.listen = listen
        self.store = store
        self.env = env
        self.spool = spool
        self._write = write
        self.clock = clock or (lambda: datetime.now(UTC))
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.events = events  # the service's EventBus: operator actions reach the mail log

    def _audit(self, request: web.Request, subject: str, what: str, why: str, **facts: str) -> None:
        """An action through the API as a line in the mail log (relay/observe/oplog.py)."""
        if self.events is not None:
            who = f"api, client={request.remote or 'unknown'}"
            details = tuple(facts.items())
            self.events.emit(
                AdminEvent("suppression", subject, what, who, why, self.clock(), details)
            )

    # -- plumbing -------------------------------------------------------------------------

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a store write on the service's writer thread (or inline without a service)."""
        if self._write is not None:
            return await self._write(fn, *args)
        return fn(*args)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return web.Response(
                status=401,
                text="bearer token required\n",
                headers={"WWW-Authenticate": 'Bearer realm="bouncer"'},
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return _json({"error": str(exc)}, exc.status)
        except NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except ForceRequired as exc:
            return _json({"error": str(exc), "force_required": True}, 409)
        except (NotSuppressed, RuleError) as exc:
            return _json({"error": str(exc)}, 409)
        except (AddressError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        except StoreError as exc:
            log.error("api: store: %s", exc)
            return _json({"error": f"store unavailable: {exc}"}, 503)

    def _store(self) -> SuppressionStore:
        if self.store is None:
            raise ApiError(503, "no suppression store")
        return self.store

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        raw = await request.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, "body is not UTF-8") from exc
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from exc
        except RecursionError as exc:  # "[[[[..." nested deeper than the parser's stack
            raise ApiError(400, "body is not JSON: nested too deeply") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        return data

    # -- suppressions ---------------------------------------------------------------------

    async def list_suppressions(self, request: web.Request) -> web.StreamResponse:
        """Streamed in chunks, so a list of a million records neither sits in memory nor
        holds the loop: the store scans in short read transactions between writes."""
        store = self._store()
        state = request.query.get("state")
        states = None if state is None else list(State) if state == "all" else [State(state)]
        q = request.query
        category = Category(q["category"]) if "category" in q else None
        domain = normalize_domain(q["domain"].lstrip("@")) if q.get("domain") else None
        since = parse_when(q["since"]) if q.get("since") else None
        until = parse_when(q["until"]) if q.get("until") else None
        limit = int(q["limit"]) if q.get("limit") else None
        if limit is not None and limit < 1:
            raise ApiError(400, "limit must be a positive number")
        found = select(
            store.scan(self.clock(), states, category, q.get("after")), domain, since, until
        )
        records = itertools.islice(found, limit)
        first = next(records, None)  # a StoreError here still becomes a 503
        as_csv = request.query.get("format") == "csv"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8"
                if as_csv
                else "application/json; charset=utf-8"
            }
        )
        await resp.prepare(request)
        buf = io.StringIO()
        rows = csv.writer(buf)
        if as_csv:
            rows.writerow(EXPORT_FIELDS)
        else:
            buf.write("[")
        n = 0
        rec = first
        while rec is not None:
            if as_csv:
                rows.writerow(record_row(rec))
            else:
                buf.write((",\n" if n else "\n") + json.dumps(as_dict(rec), ensure_ascii=False))
            n += 1
            if n % STREAM_CHUNK == 0:
                await resp.write(buf.getvalue().encode())
                buf.seek(0)
                buf.truncate()
            rec = next(records, None)
        if not as_csv:
            buf.write("\n]\n")
        await resp.write(buf.getvalue().encode())
        await resp.write_eof()
        return resp

    async def get_suppression(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        rec = self._store().get(key, self.clock())
        if rec is None:
            raise NotFound(f"no suppression record for {key}")
        return _json(as_dict(rec))

    async def put_suppression(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        body = await self._body(request)
        category = Category(_field(body, "category", Category.BAD_MAILBOX.value))
        # Only an absent or null "until" means permanent: {"until": {}} or "" is a mistake.
        until_text = _field(body, "until", None)
        until = None if until_text is None else parse_when(until_text)
        why = _field(body, "why", _field(body, "reason", "added through the API"))
        rec = await self.write(
            store.add, request.match_info["key"], category, self.clock(), until, why
        )
        until_text = iso(rec.until) if rec.until else "permanent"
        self._audit(request, rec.key, "added", why, category=category.value, until=until_text)
        return _json(as_dict(rec))

    async def delete_suppression(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        body = await self._body(request)
        force_raw = str(body.get("force", request.query.get("force", ""))).lower()
        force = force_raw in ("1", "true", "yes")
        why = str(body.get("why", request.query.get("why", "")))
        if force and not why.strip():
            raise ApiError(400, "force needs a reason in 'why' (kept in the history)")
        rec = await self.write(_remove, store, request.match_info["key"], self.clock(), force, why)
        self._audit(request, rec.key, "lifted", why, state=rec.state.value)
        return _json(as_dict(rec))

    async def import_suppressions(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        # Bytes that are not UTF-8 become a problem on their line, not a 500 for the file.
        text = (await request.read()).decode("utf-8-sig", "surrogateescape")
        why = request.query.get("why", "import through the API")
        job = store.import_job(io.StringIO(text, newline=""), self.clock(), why, IMPORT_BATCH)
        # One writer job per batch, not one for the file: an RCPT that must record a
        # refusal waits for one batch at most, not for a 300k-row import.
        while await self.write(job.step):
            pass
        result = job.result()
        added, skipped = str(result.added), str(result.skipped)
        self._audit(request, "import", "imported", why, added=added, skipped=skipped)
        return _json(
            {"added": result.added, "skipped": result.skipped, "problems": list(result.problems)}
        )

    async def activity(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        address = body.get("address")
        if not isinstance(address, str) or not address:
            raise ApiError(400, "'address' is required")
        now = self.clock()
        rec = await self.write(self._store().activity, address, now)
        note = activity_note(rec, now) if rec else ""
        return _json({"address": address, "record": as_dict(rec) if rec else None, "note": note})

    # -- stats ----------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.StreamResponse:
        if self.env is None:
            raise ApiError(503, "no state")
        q = request.query
        by = q.get("by", "day")
        if by not in GROUPINGS:
            raise ApiError(400, f"by must be one of {', '.join(GROUPINGS)}")
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(400, "format must be json or csv")
        since, until = parse_period(q.get("since", "7d"), q.get("until"), self.clock())
        domain = normalize_domain(q["domain"].lstrip("@")) if q.get("domain") else None
        group: GroupBy = by
        rows = read_stats(self.env, since, group, until, domain)
        if fmt == "csv":
            return web.Response(text=stats_csv(rows, group), content_type="text/csv")
        return _json(stats_document(rows, group, since, until, domain))

    # -- server ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/suppressions", self.list_suppressions)
        r.add_post("/suppressions/import", self.import_suppressions)
        r.add_get("/suppressions/{key}", self.get_suppression)
        r.add_put("/suppressions/{key}", self.put_suppression)
        r.add_delete("/suppressions/{key}", self.delete_suppression)
        r.add_post("/activity", self.activity)
        r.add_get("/stats", self.stats)
        QueueRoutes(self).add_to(r)
        return app

    async def serve(self, listen: HostPort) -> int:
        self._runner, self.port = await serve_app(self.app(), listen)
        return self.port

    async def start(self) -> None:
        if self.listen is not None:
            port = await bind_component(self.serve, self.listen, "api")
            log.info("HTTP API on %s (port %d)", self.listen, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _field(body: dict[str, Any], name: str, default: Any) -> Any:
    """body[name] as a string (null or absent: `default`); any other JSON type is a 400."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string")
    return value


def _remove(store: SuppressionStore, key: str, now: datetime, force: bool, why: str) -> Any:
    return store.remove(key, now, force=force, why=why)
