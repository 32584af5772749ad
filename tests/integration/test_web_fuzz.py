"""Property-based tests of every route of the HTTP API and of the webhook (Starlette via
``httpx.ASGITransport`` for speed): malformed, huge and odd-unicode requests always get
a 4xx JSON error, never a 5xx, and a refused request never changes the database.

The routes come from the served ``/openapi.json``. Hypothesis runs in a worker thread
and sends each request on the test's event loop (``anyio.from_thread.run``), so one
database and one app serve every example.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.core_support import eventually, status_of, working
from tests.integration.web_support import API_KEY, SECRET, bearer, serve, snapshot
from tidebase_async import Run, Tidebase
from tidebase_async.web import sign

MAX_PAYLOAD = 2048
SETTINGS = settings(
    max_examples=75,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

odd_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]), max_size=40
) | st.sampled_from(
    ["", "\x00", "é", "\u202e", "🙂" * 5, "a/b", "..", "%", "%ff%fe", "%00", "\ufeff", " ", "ok"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
#: Objects that look like the API's bodies, with wrong types and extra keys mixed in.
FIELDS = [
    "workflow", "input", "queue", "dedupe_key", "priority", "delay", "run_at",
    "max_attempts", "deadline", "metadata", "approved", "actor", "payload", "token",
    "reason", "type", "run_id", "attempt",
]  # fmt: skip
near_bodies = st.dictionaries(st.sampled_from(FIELDS) | odd_text, json_values, max_size=6)


def encoded(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    odd_text.map(lambda t: t.encode("utf-8")),
    json_values.map(encoded),
    near_bodies.map(encoded),
    near_bodies.map(lambda v: encoded(v)[:-1]),  # truncated JSON
)


def register(tide: Tidebase) -> None:
    @tide.workflow("ask")
    async def ask(run: Run, n: Any) -> str:
        return str((await run.gate("ok")).decision)


@pytest.fixture
async def fuzz_tide(dsn: str) -> AsyncIterator[Tidebase]:
    tide = Tidebase(dsn, api_key=API_KEY, webhook_secret=SECRET, max_payload_bytes=MAX_PAYLOAD)
    async with tide as t:
        register(t)
        yield t


async def waiting_run(tide: Tidebase, db: asyncpg.Connection) -> uuid.UUID:
    handle = await tide.enqueue("ask", input=1)
    async with working(tide):

        async def waits() -> bool:
            return await status_of(db, handle.id) == "waiting"

        await eventually(waits, what="the run to wait at its gate")
    return handle.id


async def routes_of(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    doc = (await client.get("/tidebase/openapi.json", headers=bearer())).json()
    out = [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        # The live change stream never ends (and the ASGI transport buffers it).
        if method in ("get", "post", "put", "patch", "delete")
        and path not in ("/events", "/runs/{run_id}/stream")
    ]
    assert len(out) >= 10, out
    return out


def fill(path: str, run_id: str, name: str) -> str:
    return "/tidebase" + path.replace("{run_id}", run_id).replace("{name}", name)


class Checker:
    """Sends requests and checks the invariants; the baseline moves only after a
    request that was allowed to write (a 2xx)."""

    def __init__(self, client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
        self.client = client
        self.db = db
        self.baseline: dict[str, tuple[int, str]] = {}
        self.statuses: dict[int, int] = {}

    async def start(self) -> None:
        self.baseline = await snapshot(self.db)

    async def check(
        self, method: str, url: str, *, body: bytes, headers: dict[str, str], params: Any = None
    ) -> int:
        with anyio.fail_after(10):
            resp = await self.client.request(
                method, url, content=body, headers=headers, params=params
            )
        what = (method, url, params, headers, body[:200], resp.status_code, resp.text[:300])
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, what
        # Starlette's Mount pattern does not match a line break: such paths never reach
        # the API, and Starlette answers itself (a plain 404, or a 307 to the path
        # with(out) a trailing slash).
        # Dot segments ("/assets/..") are resolved by the client before sending, and
        # the result may be a path Starlette redirects.
        starlette_only = (
            re.search(r"%0[ad]", url, re.IGNORECASE) is not None
            or re.search(r"/\.{1,2}(/|$)", url) is not None
        )
        if 300 <= resp.status_code < 400:
            assert starlette_only, what
        now = await snapshot(self.db)
        if resp.status_code >= 300 and starlette_only:
            assert now == self.baseline, what
        elif resp.status_code >= 400:
            error = resp.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str), what
            assert now == self.baseline, ("a refused request changed the database", what)
        elif method == "GET":
            assert now == self.baseline, ("a GET changed the database", what)
        for secret in (API_KEY, SECRET):
            assert secret not in resp.text, what
        self.baseline = now
        return resp.status_code


def run_examples(test: Any) -> Any:
    """Run a hypothesis test in a worker thread (it calls back with from_thread.run)."""
    return anyio.to_thread.run_sync(test)


async def test_every_route_answers_random_requests_with_4xx_and_no_write(
    fuzz_tide: Tidebase, db: asyncpg.Connection
) -> None:
    rid = str(await waiting_run(fuzz_tide, db))
    # The event stream of a live run never ends (and the ASGI transport buffers it):
    # events are read from a finished run.
    done = await fuzz_tide.enqueue("ask", input=2)
    await fuzz_tide.runs.cancel(done.id)
    async with serve(fuzz_tide, "starlette") as client:
        routes = await routes_of(client)
        checker = Checker(client, db)
        await checker.start()

        @SETTINGS
        @given(
            route=st.sampled_from(routes),
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
            | st.none(),
            run_id=st.sampled_from([rid, str(done.id), str(uuid.uuid4()), rid.upper()])
            | odd_text,
            name=st.sampled_from(["ok", "nope"]) | odd_text,
            query=st.dictionaries(
                st.sampled_from(["status", "workflow", "queue", "limit", "cursor", "after",
                                 "run_id"]) | odd_text,
                odd_text,
                max_size=3,
            ),
            body=bodies,
            auth=st.sampled_from(["key", "none", "wrong"]),
        )  # fmt: skip
        def examples(
            route: tuple[str, str],
            method: str | None,
            run_id: str,
            name: str,
            query: dict[str, str],
            body: bytes,
            auth: str,
        ) -> None:
            verb, path = route
            if path.endswith("/events") and run_id.lower() == rid:
                run_id = str(done.id)
            headers = {"Content-Type": "application/json"}
            if auth == "key":
                headers.update(bearer())
            elif auth == "wrong":
                headers.update(bearer("wrong"))
            url = fill(path, quote(run_id, safe=""), quote(name, safe=""))
            anyio.from_thread.run(
                lambda: checker.check(method or verb, url, body=body, headers=headers, params=query)
            )

        await run_examples(examples)
    assert checker.statuses, "no request was sent"
    # The gate of the waiting run is untouched by it all (approved needs a real bool
    # and the key or token, which the random bodies may still have supplied: then the
    # run left 'waiting' through a 200, which the checker allowed).
    assert set(checker.statuses) - {200, 201, 202, 307} <= {400, 401, 404, 405, 409, 413}


async def test_odd_unicode_paths_are_4xx(fuzz_tide: Tidebase, db: asyncpg.Connection) -> None:
    async with serve(fuzz_tide, "starlette") as client:
        checker = Checker(client, db)
        await checker.start()

        @SETTINGS
        @given(
            # "." and ".." are resolved by the client before anything is sent.
            segments=st.lists(
                (odd_text | st.sampled_from(["runs", "gates", "resolve"])).filter(
                    lambda s: s not in (".", "..")
                ),
                min_size=1,
                max_size=5,
            ),
            raw=st.booleans(),
            method=st.sampled_from(["GET", "POST"]),
        )  # fmt: skip
        def examples(segments: list[str], raw: bool, method: str) -> None:
            # raw: percent escapes passed through as typed (invalid UTF-8 included).
            parts = [s if raw and re.fullmatch(r"[%0-9a-fA-F]*", s) else quote(s, safe="")
                     for s in segments]  # fmt: skip
            url = "/tidebase/" + "/".join(parts)
            anyio.from_thread.run(lambda: checker.check(method, url, body=b"{}", headers=bearer()))

        await run_examples(examples)


#: Routes that need no API key (the resolve route takes a gate token instead).
PUBLIC_ROUTES = ("/hook", "/health", "/ready", "/", "/runs/{run_id}/gates/{name}/resolve")


async def test_huge_bodies_are_refused_unread_on_every_route(
    fuzz_tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Each route has its own body limit: none for GET, the payload limit for an
    enqueue, 64 KiB for the rest (the webhook included). A body over it is 413; a
    request without credentials is 401 before its body is read (regression: every
    route read up to ~16 MiB into memory before checking the key)."""
    rid = str(await waiting_run(fuzz_tide, db))

    def limit_of(method: str, path: str) -> int:
        if method == "GET":
            return 0
        if path == "/runs":
            return fuzz_tide.max_payload_bytes + 64 * 1024
        return 64 * 1024

    async with serve(fuzz_tide, "starlette") as client:
        routes = [*await routes_of(client), ("POST", "/hook")]
        checker = Checker(client, db)
        await checker.start()

        @settings(SETTINGS, max_examples=40)
        @given(
            route=st.sampled_from(routes),
            extra=st.integers(min_value=1, max_value=4096),
            auth=st.booleans(),
            filler=st.sampled_from([b" ", b"a", "é".encode(), b"\x00"]),
        )
        def examples(route: tuple[str, str], extra: int, auth: bool, filler: bytes) -> None:
            method, path = route
            url = path if path == "/hook" else fill(path, rid, "ok")
            size = limit_of(method, path) + extra
            body = b'{"workflow": "ask", "input": "' + filler * size + b'"}'
            headers = {"Content-Type": "application/json", **(bearer() if auth else {})}
            if path == "/hook":
                headers["Tidebase-Signature"] = sign(SECRET, body)
            status = anyio.from_thread.run(
                lambda: checker.check(method, url, body=body, headers=headers)
            )
            public = path in (
                "/hook",
                "/health",
                "/ready",
                "/",
                "/runs/{run_id}/gates/{name}/resolve",
            )
            public = public or path.startswith("/assets")
            assert status == (413 if auth or public else 401), (method, path, auth)

        await run_examples(examples)


hostile_hosts = st.one_of(
    st.sampled_from(
        ["evil.example", "evil.example:8800", "10.0.0.5", "[2001:db8::1]", "localhost.evil", ""]
    ),
    st.from_regex(r"[a-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True).filter(
        lambda h: h.partition(":")[0] not in ("localhost", "127.0.0.1")
    ),
)
hostile_origins = st.one_of(
    st.just(None),
    st.sampled_from(["https://evil.example", "null", "http://127.0.0.1.evil", "file://"]),
)
content_types = st.sampled_from(
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json",
    ]
)


@pytest.fixture
async def open_fuzz_tide(dsn: str) -> AsyncIterator[Tidebase]:
    """No API key: the Host/Origin checks stand between the API and the world."""
    async with Tidebase(dsn, webhook_secret=SECRET, max_payload_bytes=MAX_PAYLOAD) as t:
        register(t)
        yield t


async def test_hostile_hosts_origins_and_content_types_change_nothing(
    open_fuzz_tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Every route, without an API key, under requests another site or a rebound DNS
    name could make: a non-loopback Host is 403 on every route but the health probes
    and the dashboard's static files; a hostile Origin is 403; a POST that is not JSON
    is 415. None of them writes anything."""
    rid = str(await waiting_run(open_fuzz_tide, db))
    async with serve(open_fuzz_tide, "starlette") as client:
        # The run's event stream follows a waiting run until it ends: not a one-shot.
        routes = [r for r in await routes_of(client) if r[1] != "/runs/{run_id}/events"]
        checker = Checker(client, db)
        await checker.start()

        @settings(SETTINGS, max_examples=50)
        @given(
            route=st.sampled_from(routes),
            host=st.one_of(st.just(None), hostile_hosts),
            origin=hostile_origins,
            content_type=content_types,
            body=bodies,
        )
        def examples(
            route: tuple[str, str],
            host: str | None,
            origin: str | None,
            content_type: str | None,
            body: bytes,
        ) -> None:
            method, path = route
            headers: dict[str, str] = {}
            if host is not None:
                headers["Host"] = host
            if origin is not None:
                headers["Origin"] = origin
            if content_type is not None:
                headers["Content-Type"] = content_type
            else:
                headers["Content-Type"] = ""
            status = anyio.from_thread.run(
                lambda: checker.check(
                    method,
                    fill(path, rid, "ok"),
                    body=body if method == "POST" else b"",
                    headers=headers,
                )
            )
            if host is not None or origin is not None:
                assert status == 403, (method, path, host, origin, status)
            elif method == "POST" and content_type != "application/json":
                assert status == 415, (method, path, content_type, status)
            # And whatever it was, nothing changed unless it was a 2xx (the checker).

        await run_examples(examples)
