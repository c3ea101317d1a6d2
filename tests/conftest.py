"""Fixtures for loopback integration tests: the real gateway and simulator peers on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.adapters.serving import freeze_startup_heap
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, settle, still_open


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection left alive (modules, test items), as `gateway serve` freezes its startup heap
    (docs/operations.md §4): a full collection of it paused this process's loop for 100-190 ms, long enough to
    run a loopback call's playout dry in the middle of a test."""
    freeze_startup_heap()


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Whatever a test's command line installed on the root logger (`configure_logging`) is removed after it, so
    one test's handlers and filters never reach another test's records."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


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
        assert await still_open(gw, evi_sim) == []
    await settle(lambda: not (asyncio.all_tasks() - before - {asyncio.current_task()}))
    leaked = [t.get_name() for t in asyncio.all_tasks() - before - {asyncio.current_task()}]
    assert leaked == [], f"tasks leaked: {leaked}"
