"""`/_standin/*`: what tests read back — the journal of requests and the counters.

- `GET /_standin/requests[?path=/v1/chat/completions]`: the kept requests, oldest first,
  as received — method, path, query, `headers` (name as sent → value, repeats joined
  with ", "), `header_list` (pairs in order and case), `body_bytes`, `body_sha256`,
  `body_json` — and how each ended: `outcome` (`in_progress`, `completed`, `aborted`),
  `status`, `stream`, `events_sent` (SSE `data:` events, `[DONE]` included),
  `comments_sent`, `response_bytes`, `scenario`.
- `DELETE /_standin/requests`: forget them (the counters keep counting).
- `GET /_standin/stats`: counters since start, with `admin_hits` (operator/dev route
  path → requests it served: the routes a proxy must never forward).
These routes are not journaled themselves.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from vllm_standin.runtime import RUNTIME

PREFIX = "/_standin/"


async def list_requests(request: web.Request) -> web.Response:
    journal = request.app[RUNTIME].journal
    entries = journal.entries(request.query.get("path"))
    body = orjson.dumps([entry.as_json() for entry in entries])
    return web.Response(body=body, headers={"Content-Type": "application/json"})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[RUNTIME].journal.clear()
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    body = orjson.dumps(request.app[RUNTIME].journal.stats.as_json())
    return web.Response(body=body, headers={"Content-Type": "application/json"})


def routes() -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}requests", list_requests),
        web.delete(f"{PREFIX}requests", clear_requests),
        web.get(f"{PREFIX}stats", stats),
    ]
