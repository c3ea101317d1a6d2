"""The loopback harness: servers on a free port that know it, and the check that nothing is left open."""

from __future__ import annotations

import socket

import aiohttp
from aiohttp import web
from websockets.asyncio.client import connect

from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway, settle, still_open
from gateway.simulator.loopback import free_port, serve_on_free_port


def test_free_port_can_be_bound() -> None:
    """free_port names a loopback port another server can listen on."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


async def test_the_app_is_built_knowing_its_port() -> None:
    """serve_on_free_port hands the app its port before serving it there."""

    def build(port: int) -> web.Application:
        async def own_port(_: web.Request) -> web.Response:
            return web.Response(text=str(port))

        app = web.Application()
        app.router.add_get("/", own_port)
        return app

    runner, port = await serve_on_free_port(build)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as response:
            assert await response.text() == str(port)
    finally:
        await runner.cleanup()


async def test_settle_says_whether_the_condition_came_true() -> None:
    """settle returns True once the predicate holds, False when the time runs out first."""
    assert await settle(lambda: True, timeout_s=0.0)
    assert not await settle(lambda: False, timeout_s=0.05)


async def test_an_open_evi_session_is_reported() -> None:
    """still_open names an EVI session that was not closed, and is empty once it is."""
    async with EviSimulator() as sim, running_gateway(sim.url) as gw:
        ws = await connect(sim.url, additional_headers={"X-Hume-Api-Key": "test-key"})
        await ws.recv()  # chat_metadata: the session exists
        problems = await still_open(gw, sim, timeout_s=0.05)
        assert len(problems) == 1 and problems[0].startswith("an EVI session was left open")
        await ws.close()
        assert await still_open(gw, sim) == []
