"""The simulator's EVI REST API over HTTP, on aiohttp (evi-protocol.md §12.6).

``RestApi(store, api_key=key).add_routes(app)`` serves a :class:`RestStore` at the spec's paths for prompts,
tools and configs (§12.1): every operation at its method, 201 for a new resource or version, 200 with the
returned model otherwise, and 200 with an empty body where the spec's answer is empty. Around the store:

- the ``X-Hume-Api-Key`` header must hold ``api_key`` (§1.3), else 401; ``api_key=None`` turns auth off;
- query values and the ``version`` path segment are parsed as the spec types them, and JSON bodies are
  decoded here; a bad value or bad JSON is a 422 with the spec's ``detail`` list (§12.3), a body over
  1 MiB a 413;
- a token bucket admits ``max_requests_per_s`` over all REST requests, Hume's limit by default (§8); past
  it the answer is 429 with ``Retry-After`` in whole seconds;
- with ``state_path``, the store is loaded from that SQLite file at construction (one row holding the
  JSON of ``store.export()``) and saved after every successful write; a bad file is a ``ConfigError``.

Errors of the layer itself have the store's ``{"detail": …}`` shape. Other routes of the app are untouched:
nothing here is a middleware.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.errors import ConfigError
from gateway.simulator.evi_rest_store import RestError, RestStore, VersionedResources
from gateway.wire.evi_messages import API_KEY_HEADER, EviModel
from gateway.wire.evi_rest import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ValidationErrorItem

__all__ = ["MAX_BODY_BYTES", "STATE_TABLE", "RestApi"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""§12.6: a request body larger than this is refused with 413."""
STATE_TABLE = "evi_rest_state"
"""§12.6: the SQLite table holding the store's state, one row (``id`` 1) of JSON text."""

_KINDS = ("prompts", "tools", "configs")
_Resources = VersionedResources[Any, Any, Any]


# ---------------------------------------------------------------------------------------------------
# Parsing requests (§12.2, §12.3)
# ---------------------------------------------------------------------------------------------------


class _VersionsQuery(BaseModel):
    """§12.2 the query of a list of one resource's versions; unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")
    page_number: int = Field(default=0, ge=0)
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    restrict_to_most_recent: bool = True


class _ListQuery(_VersionsQuery):
    """§12.2 the query of a top-level list, which also filters by exact ``name``."""

    name: str | None = None


_VERSION = TypeAdapter(int)


def _problem(loc: list[str | int], msg: str, kind: str) -> RestError:
    return RestError(422, (ValidationErrorItem(loc=loc, msg=msg, type=kind),))


def _invalid(exc: ValidationError, *where: str) -> RestError:
    """The 422 for a pydantic failure, each problem located under ``where`` (``query``, ``path version``)."""
    return RestError(
        422,
        tuple(
            ValidationErrorItem(loc=[*where, *error["loc"]], msg=error["msg"], type=error["type"])
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ),
    )


def _query(model: type[_VersionsQuery], query: Mapping[str, str]) -> dict[str, Any] | RestError:
    """The list operation's keyword arguments from the query (the last of a repeated key wins)."""
    try:
        return model.model_validate(dict(query)).model_dump()
    except ValidationError as exc:
        return _invalid(exc, "query")


def _version(segment: str) -> int | RestError:
    """The ``{version}`` path segment, an integer as the spec types it."""
    try:
        return _VERSION.validate_python(segment)
    except ValidationError as exc:
        return _invalid(exc, "path", "version")


async def _json_body(request: web.Request) -> object:
    """The decoded JSON body, or a :class:`RestError` (413 if too large, 422 if missing or not JSON)."""
    too_large = RestError(413, f"Request body is larger than {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return too_large
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            return too_large
    if not data.strip():
        return _problem(["body"], "Field required", "missing")
    try:
        return json.loads(bytes(data))
    except json.JSONDecodeError as exc:
        return _problem(["body", exc.pos], f"JSON decode error: {exc.msg}", "json_invalid")
    except ValueError:  # not UTF-8 (nor UTF-16/32) text
        return _problem(["body"], "JSON decode error: the body is not UTF-8 text", "json_invalid")


# ---------------------------------------------------------------------------------------------------
# The operations (§12.1)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """One parsed request, as an operation sees it."""

    resources: _Resources
    id: str
    version: int
    body: object
    query: dict[str, Any]
    now_s: float


@dataclass(frozen=True, slots=True)
class _Operation:
    method: str
    path: str
    """After ``/v0/evi/<kind>``."""
    run: Callable[[_Call], object]
    status: int = 200
    """On success."""
    body: bool = False
    """Whether it takes a JSON body."""
    query: type[_VersionsQuery] | None = None
    writes: bool = False


_ONE = "/{id}"
_VERSIONED = "/{id}/version/{version}"
_OPERATIONS = (
    _Operation("POST", "", lambda c: c.resources.create(c.body, now_s=c.now_s), 201, body=True, writes=True),
    _Operation("GET", "", lambda c: c.resources.list_page(**c.query), query=_ListQuery),
    _Operation("GET", _ONE, lambda c: c.resources.list_versions(c.id, **c.query), query=_VersionsQuery),
    _Operation(
        "POST", _ONE, lambda c: c.resources.create_version(c.id, c.body, now_s=c.now_s), 201, body=True, writes=True
    ),
    _Operation("PATCH", _ONE, lambda c: c.resources.update_name(c.id, c.body, now_s=c.now_s), body=True, writes=True),
    _Operation("DELETE", _ONE, lambda c: c.resources.delete(c.id), writes=True),
    _Operation("GET", _VERSIONED, lambda c: c.resources.get_version(c.id, c.version)),
    _Operation(
        "PATCH",
        _VERSIONED,
        lambda c: c.resources.update_description(c.id, c.version, c.body, now_s=c.now_s),
        body=True,
        writes=True,
    ),
    _Operation("DELETE", _VERSIONED, lambda c: c.resources.delete_version(c.id, c.version), writes=True),
)


# ---------------------------------------------------------------------------------------------------
# Rate limit (§8) and persistence
# ---------------------------------------------------------------------------------------------------


class _TokenBucket:
    """``rate`` requests a second on average, bursts of up to ``max(rate, 1)``."""

    def __init__(self, rate: float, monotonic: Callable[[], float]) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"max_requests_per_s must be a positive number, not {rate!r}")
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self._monotonic = monotonic
        self._last = monotonic()

    def take(self) -> int | None:
        """Admit one request (None), or say how many whole seconds to wait before the next one will be."""
        now = self._monotonic()
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return max(1, math.ceil((1 - self.tokens) / self.rate))


def _read_state(path: Path) -> object | None:
    """The JSON state held in ``path``, or None for a database that holds none yet; ConfigError if bad."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:  # a new, empty database file
                return None
            if STATE_TABLE not in tables:
                raise ConfigError(f"EVI REST state file {path}: not a state file (it has no table {STATE_TABLE})")
            row = db.execute(f"SELECT state FROM {STATE_TABLE} WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"EVI REST state file {path}: cannot be read ({exc})") from exc
    if row is None:
        return None
    try:
        state: object = json.loads(row[0])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"EVI REST state file {path}: the state is not JSON ({exc})") from exc
    return state


def _write_state(path: Path, state: object) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT)")
        db.execute(f"INSERT OR REPLACE INTO {STATE_TABLE} (id, state) VALUES (1, ?)", (json.dumps(state),))


# ---------------------------------------------------------------------------------------------------
# The HTTP layer
# ---------------------------------------------------------------------------------------------------


def _error(error: RestError, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(error.to_dict(), status=error.status, headers=headers)


class RestApi:
    """EVI's REST API for prompts, tools and configs over a :class:`RestStore` (§12.6).

    ``clock`` stamps what is written (seconds since the epoch); ``monotonic`` paces the rate limit.
    """

    def __init__(
        self,
        store: RestStore,
        *,
        api_key: str | None,
        state_path: Path | None = None,
        max_requests_per_s: float = 100.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.api_key = api_key
        self.state_path = state_path
        self.max_requests_per_s = max_requests_per_s
        self.requests_total = 0
        """Every request that reached one of these routes, refused or not."""
        self.refused_rate_limited = 0
        """Requests answered 429."""
        self._clock = clock
        self._bucket = _TokenBucket(max_requests_per_s, monotonic)
        if state_path is not None and state_path.exists():
            self._load(state_path)

    def add_routes(self, app: web.Application) -> None:
        """Register every operation of ``/v0/evi/prompts``, ``/v0/evi/tools`` and ``/v0/evi/configs`` on ``app``."""
        for kind in _KINDS:
            for operation in _OPERATIONS:
                path = f"/v0/evi/{kind}{operation.path}"
                app.router.add_route(operation.method, path, self._handler(kind, operation))

    # -- mechanics -----------------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        state = _read_state(path)
        if state is None:
            return
        try:
            self.store.restore(state)
        except ValueError as exc:
            raise ConfigError(f"EVI REST state file {path}: the state does not fit the store ({exc})") from exc
        log.info("EVI REST state loaded from %s", path)

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        given = request.headers.get(API_KEY_HEADER)
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def _handler(self, kind: str, operation: _Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(getattr(self.store, kind), operation, request)

        return handle

    async def _serve(self, resources: _Resources, operation: _Operation, request: web.Request) -> web.Response:
        self.requests_total += 1
        wait_s = self._bucket.take()
        if wait_s is not None:
            self.refused_rate_limited += 1
            limit = RestError(429, f"Too many requests: at most {self.max_requests_per_s:g} a second")
            return _error(limit, {"Retry-After": str(wait_s)})
        if not self._authorized(request):
            return _error(RestError(401, f"Missing or invalid {API_KEY_HEADER} header"))
        version: object = 0
        if "version" in request.match_info:
            version = _version(request.match_info["version"])
        query: object = {} if operation.query is None else _query(operation.query, request.query)
        body = await _json_body(request) if operation.body else None
        refusals = [parsed for parsed in (version, query, body) if isinstance(parsed, RestError)]
        if refusals:  # a 413 alone; else every problem of path, query and body in one 422 (§12.3)
            problems = tuple(item for r in refusals if not isinstance(r.detail, str) for item in r.detail)
            return _error(next((r for r in refusals if isinstance(r.detail, str)), RestError(422, problems)))
        assert isinstance(version, int) and isinstance(query, dict)
        now_s = self._clock() if operation.writes else 0.0
        call = _Call(resources, request.match_info.get("id", ""), version, body, query, now_s)
        result = operation.run(call)
        if isinstance(result, RestError):
            return _error(result)
        if operation.writes and self.state_path is not None:
            _write_state(self.state_path, self.store.export())
        if result is None:
            return web.Response(status=200)
        assert isinstance(result, EviModel)
        return web.json_response(result.to_dict(), status=operation.status)
