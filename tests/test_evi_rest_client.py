"""The EVI REST client's own behaviour against a scripted HTTP server: pacing, retries, readable errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from gateway.adapters.evi_rest_client import EviRestClient
from gateway.errors import EviRestError
from gateway.simulator.loopback import serve_app


@asynccontextmanager
async def scripted(answers: list[web.Response]) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A server answering each request with the next scripted response; yields its URL and what it got."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return answers.pop(0)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner, port = await serve_app(app)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_429_and_503_are_retried_after_retry_after() -> None:
    """A 429 with Retry-After and a 503 without are retried (waiting what they ask, or a growing pause)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    answers = [
        web.Response(status=429, headers={"Retry-After": "2"}),
        web.Response(status=503),
        web.json_response({"page_number": 0, "page_size": 10, "total_pages": 1, "prompts_page": []}),
    ]
    async with scripted(answers) as (url, seen), EviRestClient(url, "k", sleep=sleep) as evi:
        page = await evi.list_page("prompts")
    assert page.total_pages == 1 and len(seen) == 3 and evi.retries == 2
    assert [w for w in waits if w >= 0.1] == [2.0, 1.0]  # Retry-After, then the second pause of the backoff
    assert all(r.headers["X-Hume-Api-Key"] == "k" for r in seen)


async def test_retries_are_bounded() -> None:
    """A server that keeps answering 429 gets up to four attempts, then the error is raised."""
    answers = [web.Response(status=429, headers={"Retry-After": "0"}) for _ in range(4)]

    async def sleep(_seconds: float) -> None:
        return None

    async with scripted(answers) as (url, seen), EviRestClient(url, "k", sleep=sleep) as evi:
        with pytest.raises(EviRestError) as info:
            await evi.list_page("configs")
    assert info.value.status == 429 and len(seen) == 4


async def test_requests_are_paced_under_the_rate_limit() -> None:
    """Back-to-back requests are spaced by at least 1/max_requests_per_s (EVI allows 100/s)."""
    answers = [
        web.json_response({"page_number": 0, "page_size": 10, "total_pages": 1, "tools_page": []}) for _ in range(3)
    ]
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(seconds)

    async with scripted(answers) as (url, _seen), EviRestClient(url, "k", max_requests_per_s=10, sleep=sleep) as evi:
        for _ in range(3):
            await evi.list_page("tools")
    assert len(waits) == 2 and all(0 < w <= 0.1 for w in waits)


async def test_a_422_is_shown_one_problem_per_line() -> None:
    """EVI's validation detail becomes a readable message naming each field."""
    detail = {
        "detail": [
            {"loc": ["body", "evi_version"], "msg": "Field required", "type": "missing"},
            {"loc": ["body", "timeouts", "max_duration", "duration_secs"], "msg": "must be >= 30", "type": "x"},
        ]
    }
    async with scripted([web.json_response(detail, status=422)]) as (url, _), EviRestClient(url, "k") as evi:
        with pytest.raises(EviRestError) as info:
            await evi.create("configs", {"name": "x"})
    assert info.value.status == 422
    assert str(info.value) == (
        "EVI refused the request as invalid (HTTP 422):\n"
        "body.evi_version: Field required\nbody.timeouts.max_duration.duration_secs: must be >= 30"
    )


async def test_unreachable_and_unauthorised_are_clear() -> None:
    """A 401 says to check HUME_API_KEY; a server that is not there is status 0 with the URL."""
    async with (
        scripted([web.json_response({"message": "bad key"}, status=401)]) as (url, _),
        EviRestClient(url, "wrong") as evi,
    ):
        with pytest.raises(EviRestError, match="HUME_API_KEY"):
            await evi.list_page("configs")
    async with EviRestClient(url, "k") as evi:  # the server has stopped
        with pytest.raises(EviRestError, match="cannot reach") as info:
            await evi.list_page("configs")
    assert info.value.status == 0


async def test_an_answer_of_the_wrong_shape_is_an_error_not_a_crash() -> None:
    """A 200 whose body is not the documented model raises EviRestError naming what is missing."""
    async with scripted([web.json_response({"pages": 3})]) as (url, _), EviRestClient(url, "k") as evi:
        with pytest.raises(EviRestError, match="not a ReturnPagedConfigs: total_pages: Field required"):
            await evi.list_page("configs")
