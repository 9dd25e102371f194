# What the HTTP API answers with: its error type and its JSON body; shared by its modules.
"""`ApiError` (a status and a message, answered as {"error": ...} by the API's middleware)
and `json_reply`, the one way the API writes JSON."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """A request the API refuses: its status and a message for the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False) + "\n",
        status=status,
        content_type="application/json",
    )
