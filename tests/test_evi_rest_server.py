"""The simulator's EVI REST API over HTTP: the SDK as client, statuses, limits, persistence (evi-protocol.md §12.6).

Every test serves an aiohttp app holding only ``RestApi.add_routes`` on a loopback port, and talks to it
with the ``hume`` SDK's ``AsyncHumeClient`` (``base_url`` set to the server) or with a plain aiohttp client.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from hume import AsyncHumeClient
from hume.core.api_error import ApiError
from hume.empathic_voice import types as sdk
from hume.empathic_voice.configs import types as sdk_configs

from gateway.errors import ConfigError
from gateway.simulator.evi_rest_server import MAX_BODY_BYTES, STATE_TABLE, RestApi
from gateway.simulator.evi_rest_store import RestStore
from gateway.simulator.loopback import serve_app
from gateway.testing import undeclared_fields
from gateway.wire.evi_messages import API_KEY_HEADER
from gateway.wire.evi_rest import HttpValidationError, validation_message

KEY = "test-key"
T0 = 1_700_000_000
SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})


def _api(store: RestStore | None = None, **options: Any) -> RestApi:
    """A RestApi whose clock ticks one second per write, from T0."""
    ticks = itertools.count(T0)
    options.setdefault("api_key", KEY)
    return RestApi(store or RestStore(), clock=lambda: float(next(ticks)), **options)


@asynccontextmanager
async def _serving(api: RestApi) -> AsyncIterator[str]:
    """Serve an app with only the REST routes; yields its base URL."""
    app = web.Application()
    api.add_routes(app)
    runner, port = await serve_app(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _sdk(api: RestApi, key: str = KEY) -> AsyncIterator[AsyncHumeClient]:
    """The official SDK's async client, pointed at the served API by ``base_url``."""
    async with _serving(api) as url, httpx.AsyncClient() as http:
        yield AsyncHumeClient(api_key=key, base_url=url, httpx_client=http)


@asynccontextmanager
async def _http(api: RestApi, headers: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client for the served API, sending the right key unless told otherwise."""
    async with _serving(api) as url, aiohttp.ClientSession(url, headers=headers or {API_KEY_HEADER: KEY}) as http:
        yield http


def _detail(body: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """A 422 body's problems as (location, type) pairs."""
    return [(tuple(item["loc"]), item["type"]) for item in body["detail"]]


# ---------------------------------------------------------------------------------------------------
# The official SDK as client (§12.1, §12.2)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    resource: str
    singular: str
    create: dict[str, Any]
    version: dict[str, Any]


SDK_KINDS = [
    Kind("prompts", "prompt", {"text": "You answer the phone."}, {"text": "Be brief."}),
    Kind("tools", "tool", {"parameters": SCHEMA, "description": "Weather"}, {"parameters": SCHEMA}),
    Kind("configs", "config", {"evi_version": "3"}, {"evi_version": "4-mini"}),
]


async def _all(answer: Any) -> list[Any]:
    """Every item of a list answer: an SDK pager (all pages), or the one page the SDK gives for prompt versions."""
    if hasattr(answer, "__aiter__"):
        return [item async for item in answer]
    return list(next(value for name, value in answer if name.endswith("_page")))


def _page(answer: Any) -> Any:
    """The SDK's page model behind a list answer."""
    return answer.response if hasattr(answer, "__aiter__") else answer


@pytest.mark.parametrize("kind", SDK_KINDS, ids=[k.resource for k in SDK_KINDS])
async def test_the_sdk_client_runs_every_operation(kind: Kind) -> None:
    """List, create, version, rename, describe, fetch, delete a version and delete all, each answer an SDK type
    with no undeclared field."""
    api = _api()
    async with _sdk(api) as client:
        ops = getattr(client.empathic_voice, kind.resource)

        def call(template: str) -> Any:
            return getattr(ops, template.format(kind.singular))

        empty = await getattr(ops, f"list_{kind.resource}")()
        assert await _all(empty) == [] and empty.response.total_pages == 0
        made = await call("create_{}")(name="agent", **kind.create)
        assert (made.version, made.name, made.created_on) == (0, "agent", T0)
        again = await call("create_{}_version")(made.id, **kind.version)
        assert (again.version, again.name) == (1, "agent")
        versions = await call("list_{}_versions")(made.id, restrict_to_most_recent=False)
        assert [v.version for v in await _all(versions)] == [1, 0]
        assert await call("update_{}_name")(made.id, name="renamed") == ""
        described = await call("update_{}_description")(made.id, 0, version_description="first")
        assert (described.version, described.version_description) == (0, "first")
        fetched = await call("get_{}_version")(made.id, 0)
        assert (fetched.name, fetched.version_description) == ("renamed", "first")
        named = await getattr(ops, f"list_{kind.resource}")(name="renamed")
        assert [(v.id, v.version) for v in await _all(named)] == [(made.id, 1)]
        assert await call("delete_{}_version")(made.id, 1) is None
        with pytest.raises(ApiError) as gone:
            await call("get_{}_version")(made.id, 1)
        missing = {"detail": f"{kind.singular.title()} {made.id} has no version 1"}
        assert (gone.value.status_code, gone.value.body) == (404, missing)
        assert await call("delete_{}")(made.id) is None
        assert await _all(await getattr(ops, f"list_{kind.resource}")()) == []
        for answer in (made, again, described, fetched, _page(versions), _page(named)):
            assert undeclared_fields(answer) == []
    assert api.store.export()[kind.resource] == []


async def test_a_config_with_its_prompt_and_tool_parses_as_the_sdk_types() -> None:
    """A config referring to a prompt and a tool comes back, created and listed, with nothing unknown."""
    async with _sdk(_api()) as client:
        ev = client.empathic_voice
        prompt = await ev.prompts.create_prompt(name="agent", text="Answer calls.")
        tool = await ev.tools.create_tool(name="weather", parameters=SCHEMA, fallback_content="No forecast")
        assert prompt is not None and tool is not None
        made = await ev.configs.create_config(
            name="line 1",
            evi_version="3",
            prompt=sdk_configs.PostedConfigPrompt(id=prompt.id),
            tools=[sdk.PostedUserDefinedToolSpec(id=tool.id, version=0)],
            builtin_tools=[sdk.PostedBuiltinTool(name="hang_up", fallback_content="Bye")],
            voice=sdk.VoiceName(name="Ito", provider="HUME_AI"),
            nudges=sdk_configs.PostedConfigNudges(interval_secs=8),
        )
        assert made.prompt is not None and made.prompt.version_type == "LATEST"
        assert made.tools is not None and [(t.name, t.version_type) for t in made.tools if t] == [("weather", "FIXED")]
        listed = await ev.configs.list_configs(restrict_to_most_recent=False)
        fetched = await ev.configs.get_config_version(made.id or "", 0)
        assert [c.id for c in await _all(listed)] == [made.id]
        for answer in (made, listed.response, fetched):
            assert undeclared_fields(answer) == []


async def test_the_sdk_pager_walks_every_page_over_http() -> None:
    """Five prompts in pages of two: the SDK asks for pages 0 to 3 (the last empty) and gets all five."""
    api = _api()
    async with _sdk(api) as client:
        for n in range(5):
            await client.empathic_voice.prompts.create_prompt(name=f"p{n}", text="t")
        before = api.requests_total
        pager = await client.empathic_voice.prompts.list_prompts(page_size=2)
        assert [p.name for p in await _all(pager) if p] == ["p4", "p3", "p2", "p1", "p0"]
    assert api.requests_total - before == 4


# ---------------------------------------------------------------------------------------------------
# Statuses and bodies (§12.1, §12.3)
# ---------------------------------------------------------------------------------------------------


async def test_creates_are_201_and_renames_and_deletes_are_200_with_an_empty_body() -> None:
    """POST answers 201 with the JSON version; PATCH of a name and both DELETEs answer 200 with no body."""
    async with _http(_api()) as http:
        created = await http.post("/v0/evi/tools", json={"name": "t", "parameters": SCHEMA})
        assert (created.status, created.content_type) == (201, "application/json")
        tool_id = (await created.json())["id"]
        versioned = await http.post(f"/v0/evi/tools/{tool_id}", json={"parameters": SCHEMA})
        assert (versioned.status, (await versioned.json())["version"]) == (201, 1)
        described = await http.patch(f"/v0/evi/tools/{tool_id}/version/1", json={"version_description": "d"})
        assert (described.status, (await described.json())["version_description"]) == (200, "d")
        for answer in (
            await http.patch(f"/v0/evi/tools/{tool_id}", json={"name": "u"}),
            await http.delete(f"/v0/evi/tools/{tool_id}/version/0"),
            await http.delete(f"/v0/evi/tools/{tool_id}"),
        ):
            assert (answer.status, await answer.read()) == (200, b"")


@pytest.mark.parametrize(
    "headers",
    [{}, {API_KEY_HEADER: "wrong"}, {API_KEY_HEADER: ""}, {API_KEY_HEADER: KEY.upper()}, {"Authorization": KEY}],
    ids=["missing", "wrong", "empty", "other case", "elsewhere"],
)
async def test_a_missing_or_wrong_key_is_401_and_changes_nothing(headers: dict[str, str]) -> None:
    """Without the exact key in X-Hume-Api-Key every request is a 401 with a JSON detail, and nothing is made."""
    api = _api()
    async with _http(api, headers={"X-Other": "x", **headers}) as http:
        for answer in (
            await http.get("/v0/evi/configs"),
            await http.post("/v0/evi/prompts", json={"name": "a", "text": "t"}),
        ):
            assert answer.status == 401
            assert (await answer.json()) == {"detail": f"Missing or invalid {API_KEY_HEADER} header"}
    assert api.store.export()["prompts"] == []


async def test_without_an_api_key_no_header_is_needed() -> None:
    """``api_key=None`` turns auth off: a request without the header is served."""
    async with _http(_api(api_key=None), headers={"X-Other": "x"}) as http:
        assert (await http.get("/v0/evi/prompts")).status == 200


@pytest.mark.parametrize(
    ("query", "problems", "first_line"),
    [
        ("page_size=0", [("page_size", "greater_than_equal")], "query.page_size: Input should be greater than or"),
        ("page_size=101", [("page_size", "less_than_equal")], "query.page_size: Input should be less than or equal"),
        ("page_number=-1", [("page_number", "greater_than_equal")], "query.page_number: Input should be greater"),
        ("page_number=two", [("page_number", "int_parsing")], "query.page_number: Input should be a valid integer"),
        ("page_size=", [("page_size", "int_parsing")], "query.page_size: Input should be a valid integer"),
        ("restrict_to_most_recent=maybe", [("restrict_to_most_recent", "bool_parsing")], "query.restrict_to_most_"),
        ("page_number=x&page_size=0", [("page_number", "int_parsing"), ("page_size", "greater_than_equal")], "query"),
    ],
)
@pytest.mark.parametrize("path", ["/v0/evi/prompts", "/v0/evi/prompts/{id}"], ids=["list", "versions"])
async def test_bad_paging_is_422_naming_each_bad_parameter(
    path: str, query: str, problems: list[tuple[str, str]], first_line: str
) -> None:
    """A page size outside 1–100, a negative or non-integer page number or a bad boolean is a readable 422."""
    api = _api()
    made = api.store.prompts.create({"name": "a", "text": "t"}, now_s=T0)
    async with _http(api) as http:
        answer = await http.get(f"{path.format(id=getattr(made, 'id', ''))}?{query}")
        body = await answer.json()
    assert answer.status == 422
    assert _detail(body) == [(("query", name), kind) for name, kind in problems]
    assert validation_message(HttpValidationError.model_validate(body)).startswith(first_line)


@pytest.mark.parametrize(("value", "every_version"), [("false", True), ("0", True), ("true", False), ("1", False)])
async def test_booleans_are_read_as_the_spec_types_them(value: str, every_version: bool) -> None:
    """``restrict_to_most_recent`` takes true/false (and 1/0): false lists every version."""
    api = _api()
    made = api.store.prompts.create({"name": "a", "text": "t"}, now_s=T0)
    api.store.prompts.create_version(getattr(made, "id", ""), {"text": "u"}, now_s=T0)
    async with _http(api) as http:
        body = await (await http.get(f"/v0/evi/prompts?restrict_to_most_recent={value}")).json()
    assert [p["version"] for p in body["prompts_page"]] == ([1, 0] if every_version else [1])


@pytest.mark.parametrize(
    ("raw", "problems", "message"),
    [
        (b'{"name": ', [(("body", 9), "json_invalid")], "body[9]: JSON decode error: Expecting value"),
        (b"", [(("body",), "missing")], "body: Field required"),
        (b"\xff\xfe\xfa", [(("body",), "json_invalid")], "body: JSON decode error: the body is not UTF-8 text"),
        (b'{"name": "a", "txt": "t"}', [(("body", "text"), "missing"), (("body", "txt"), "extra_forbidden")], None),
    ],
    ids=["truncated", "empty", "not text", "wrong fields"],
)
async def test_a_bad_body_is_422_with_a_readable_detail(
    raw: bytes, problems: list[tuple[tuple[str | int, ...], str]], message: str | None
) -> None:
    """Invalid JSON, no body or a body that is not text is a 422 located in the body; so is a wrong shape."""
    api = _api()
    async with _http(api) as http:
        answer = await http.post("/v0/evi/prompts", data=raw, headers={"Content-Type": "application/json"})
        body = await answer.json()
    assert (answer.status, _detail(body)) == (422, problems)
    if message is not None:
        assert validation_message(HttpValidationError.model_validate(body)) == message
    assert api.store.export()["prompts"] == []


async def test_a_version_that_is_not_an_integer_is_422_in_the_path() -> None:
    """``/version/one`` is a 422 at ``path.version``, not a 404."""
    async with _http(_api()) as http:
        answer = await http.get("/v0/evi/configs/any/version/one")
        assert (answer.status, _detail(await answer.json())) == (422, [(("path", "version"), "int_parsing")])


async def test_a_body_over_1_mib_is_413_and_one_of_exactly_1_mib_is_served() -> None:
    """A prompt posted as exactly 1 MiB of JSON is created; one byte more is refused with 413."""
    api = _api()
    shell = len(json.dumps({"name": "big", "text": ""}).encode())
    exact = json.dumps({"name": "big", "text": "x" * (MAX_BODY_BYTES - shell)}).encode()
    assert len(exact) == MAX_BODY_BYTES
    async with _http(api) as http:
        over = await http.post("/v0/evi/prompts", data=exact + b" ")
        assert (over.status, await over.json()) == (
            413,
            {"detail": f"Request body is larger than {MAX_BODY_BYTES} bytes"},
        )
        assert (await http.post("/v0/evi/prompts", data=exact)).status == 201
    assert len(api.store.export()["prompts"]) == 1


@pytest.mark.parametrize("resource", ["prompts", "tools", "configs"])
async def test_unknown_ids_and_versions_are_404(resource: str) -> None:
    """Every operation on an unknown id, or an unknown version of a known one, is a 404 naming it."""
    api = _api()
    bodies = {"prompts": {"name": "a", "text": "t"}, "tools": {"name": "a", "parameters": SCHEMA},
              "configs": {"name": "a", "evi_version": "3"}}  # fmt: skip
    made = getattr(getattr(api.store, resource).create(bodies[resource], now_s=T0), "id", "")
    async with _http(api) as http:
        for method, path, body in [
            ("GET", "/nope", None),
            ("PATCH", "/nope", {"name": "b"}),
            ("DELETE", "/nope", None),
            ("GET", "/nope/version/0", None),
            ("DELETE", "/nope/version/0", None),
            ("GET", f"/{made}/version/7", None),
            ("PATCH", f"/{made}/version/7", {"version_description": "d"}),
            ("DELETE", f"/{made}/version/7", None),
        ]:
            answer = await http.request(method, f"/v0/evi/{resource}{path}", json=body)
            assert answer.status == 404, (method, path)
            assert (await answer.json())["detail"].endswith("nope not found" if "nope" in path else "has no version 7")


# ---------------------------------------------------------------------------------------------------
# Rate limit (§8)
# ---------------------------------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_more_than_the_limit_in_a_second_is_429_with_retry_after() -> None:
    """At 3 a second, three requests at once are served, the fourth is a 429 (Retry-After 1) that changes
    nothing, and a second later three more are served."""
    clock = FakeMonotonic()
    api = _api(max_requests_per_s=3, monotonic=clock)
    async with _http(api) as http:
        assert [(await http.get("/v0/evi/tools")).status for _ in range(3)] == [200, 200, 200]
        refused = await http.post("/v0/evi/prompts", json={"name": "a", "text": "t"})
        assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
        assert "at most 3 a second" in (await refused.json())["detail"]
        clock.now += 0.5
        assert [(await http.get("/v0/evi/tools")).status for _ in range(2)] == [200, 429]
        clock.now += 1.0
        assert [(await http.get("/v0/evi/tools")).status for _ in range(4)] == [200, 200, 200, 429]
    assert (api.requests_total, api.refused_rate_limited) == (10, 3)
    assert api.store.export()["prompts"] == []


async def test_retry_after_is_whole_seconds_until_a_request_would_pass() -> None:
    """At one request every four seconds, a refusal right after one says 4; a second later it says 3."""
    clock = FakeMonotonic()
    api = _api(max_requests_per_s=0.25, monotonic=clock)
    async with _http(api) as http:
        assert (await http.get("/v0/evi/configs")).status == 200
        assert (await http.get("/v0/evi/configs")).headers["Retry-After"] == "4"
        clock.now += 1.0
        assert (await http.get("/v0/evi/configs")).headers["Retry-After"] == "3"
        clock.now += 3.0
        assert (await http.get("/v0/evi/configs")).status == 200


async def test_unauthenticated_requests_count_against_the_limit() -> None:
    """The limit is over every REST request: refused keys use it up too, so the right key then waits."""
    api = _api(max_requests_per_s=2, monotonic=FakeMonotonic())
    async with _serving(api) as url, aiohttp.ClientSession(url) as http:
        statuses = [(await http.get("/v0/evi/prompts")).status for _ in range(2)]
        statuses.append((await http.get("/v0/evi/prompts", headers={API_KEY_HEADER: KEY})).status)
    assert statuses == [401, 401, 429]


async def test_other_routes_of_the_app_are_not_counted_or_limited() -> None:
    """Routes the app has besides these are neither rate limited, authenticated nor counted."""
    api = _api(max_requests_per_s=1, monotonic=FakeMonotonic())
    app = web.Application()
    app.router.add_get("/health", _health)
    api.add_routes(app)
    runner, port = await serve_app(app)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            assert [(await http.get("/health")).status for _ in range(3)] == [200, 200, 200]
    finally:
        await runner.cleanup()
    assert api.requests_total == 0


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_a_rate_that_is_not_a_positive_number_is_refused(rate: float) -> None:
    """``max_requests_per_s`` must be positive and finite."""
    with pytest.raises(ValueError, match="max_requests_per_s"):
        _api(max_requests_per_s=rate)


# ---------------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------------


async def test_the_state_survives_a_restart_on_the_same_sqlite_file(tmp_path: Path) -> None:
    """What one RestApi was told is there, unchanged, for the next one on the same file, and numbering goes on."""
    path = tmp_path / "evi.sqlite"
    first = _api(state_path=path)
    async with _http(first) as http:
        prompt = await (await http.post("/v0/evi/prompts", json={"name": "agent", "text": "t"})).json()
        await http.post(f"/v0/evi/prompts/{prompt['id']}", json={"text": "u"})
        await http.patch(f"/v0/evi/prompts/{prompt['id']}", json={"name": "renamed"})
        config = {"name": "c", "evi_version": "3", "prompt": {"id": prompt["id"]}, "voice": {"name": "Ito"}}
        made = await (await http.post("/v0/evi/configs", json=config)).json()
        await http.delete(f"/v0/evi/prompts/{prompt['id']}/version/1")
    second = _api(state_path=path)
    assert second.store.export() == first.store.export()
    async with _http(second) as http:
        fetched = await (await http.get(f"/v0/evi/configs/{made['id']}/version/0")).json()
        assert (fetched["prompt"]["name"], fetched["prompt"]["version"]) == ("renamed", 0)
        again = await (await http.post(f"/v0/evi/prompts/{prompt['id']}", json={"text": "v"})).json()
        assert again["version"] == 2


async def test_only_successful_writes_save(tmp_path: Path) -> None:
    """Reads, refused writes and 404s leave no file behind; the first write that succeeds makes it."""
    path = tmp_path / "evi.sqlite"
    api = _api(state_path=path)
    async with _http(api) as http:
        await http.get("/v0/evi/prompts")
        await http.post("/v0/evi/prompts", json={"name": "a"})
        await http.delete("/v0/evi/prompts/nope")
        assert not path.exists()
        await http.post("/v0/evi/prompts", json={"name": "a", "text": "t"})
    with closing(sqlite3.connect(path)) as db:
        (state,) = db.execute(f"SELECT state FROM {STATE_TABLE}").fetchone()
    assert json.loads(state) == api.store.export()


def test_an_empty_database_starts_an_empty_store(tmp_path: Path) -> None:
    """A file that is an SQLite database with nothing in it yet (even 0 bytes) loads as an empty store."""
    path = tmp_path / "evi.sqlite"
    path.touch()
    assert _api(state_path=path).store.export()["configs"] == []


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, just text that goes on " * 100)


def _foreign_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE notes (text TEXT)")


def _state(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(f"CREATE TABLE {STATE_TABLE} (id INTEGER PRIMARY KEY, state TEXT)")
            db.execute(f"INSERT INTO {STATE_TABLE} VALUES (1, ?)", (text,))

    return write


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_write_garbage, "cannot be read"),
        (_foreign_database, "not a state file"),
        (_state("{not json"), "not JSON"),
        (_state(json.dumps({"format": 9, "seq": 0, "prompts": [], "tools": [], "configs": []})), "does not fit"),
    ],
    ids=["not sqlite", "another database", "not json", "bad state"],
)
def test_a_corrupt_state_file_is_a_config_error_naming_it(
    tmp_path: Path, damage: Callable[[Path], None], why: str
) -> None:
    """A state file that is not SQLite, not ours, not JSON or not a store's state raises ConfigError naming it."""
    path = tmp_path / "state.sqlite"
    damage(path)
    with pytest.raises(ConfigError) as caught:
        _api(state_path=path)
    assert str(path) in str(caught.value) and why in str(caught.value)
