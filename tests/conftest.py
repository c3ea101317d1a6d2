"""Fixtures for loopback integration tests: the real gateway and simulator peers on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway


async def _settle(predicate: object, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and not predicate():  # type: ignore[operator]  # noqa: ASYNC110
        await asyncio.sleep(0.02)


@pytest.fixture(name="evi_sim")
async def fixture_evi_sim() -> AsyncIterator[EviSimulator]:
    """An EVI-compatible simulator on a free loopback port."""
    async with EviSimulator() as sim:
        yield sim


@pytest.fixture(name="gateway")
async def fixture_gateway(evi_sim: EviSimulator) -> AsyncIterator[RunningGateway]:
    """The gateway (signatures enforced) bridged to the simulator; checks nothing leaks after the test."""
    before = asyncio.all_tasks()
    async with running_gateway(evi_sim.url) as gw:
        yield gw
        await _settle(lambda: not gw.state.active_calls)
        assert gw.state.active_calls == set(), "a call is still running after the test"
        await _settle(lambda: all(s.closed.is_set() for s in evi_sim.sessions))
        assert [s for s in evi_sim.sessions if not s.closed.is_set()] == [], "an EVI session was left open"
    await _settle(lambda: not (asyncio.all_tasks() - before - {asyncio.current_task()}))
    leaked = [t.get_name() for t in asyncio.all_tasks() - before - {asyncio.current_task()}]
    assert leaked == [], f"tasks leaked: {leaked}"
