"""Run the real gateway on loopback next to simulator peers (used by tests, `gateway demo` and load tests).

``running_gateway`` binds 127.0.0.1 on a free port first, so ``GATEWAY_PUBLIC_URL`` can name the real port
and signatures are checked exactly as in production. :func:`serve_on_free_port` does that for any app built
from its port (the gateway here, the capacity benchmark's floor relay); :func:`free_port` finds a port for
a server in another process.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.adapters.app import MEDIA_PATH, STATE, VOICE_PATH, GatewayState, make_app
from gateway.settings import Settings, load_settings
from gateway.simulator.loopback import serve_on_free_port

if TYPE_CHECKING:
    from gateway.simulator.evi import EviSimulator


@dataclass
class RunningGateway:
    """A gateway serving on loopback."""

    app: web.Application
    settings: Settings
    port: int
    auth_token: str | None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        """The voice webhook Twilio would POST to."""
        return self.base_url + VOICE_PATH

    @property
    def media_url(self) -> str:
        """The Media Stream WebSocket URL, as written in the TwiML."""
        return f"ws://127.0.0.1:{self.port}{MEDIA_PATH}"

    @property
    def state(self) -> GatewayState:
        """The app's shared state (active calls, counters)."""
        return self.app[STATE]


@asynccontextmanager
async def running_gateway(
    evi_url: str,
    *,
    hume_api_key: str | None = "test-key",
    auth_token: str | None = "",
    public_path: str = "",
    **overrides: Any,
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway on 127.0.0.1, bridged to ``evi_url``.

    ``auth_token=""`` generates a random Twilio auth token (signatures enforced); ``None`` runs insecure.
    ``public_path`` (e.g. ``/gw``) ends ``GATEWAY_PUBLIC_URL``, as behind a proxy that strips that prefix.
    """
    if auth_token == "":
        auth_token = secrets.token_hex(16)

    def build(port: int) -> web.Application:
        return make_app(
            load_settings(
                None,
                environ={},
                host="127.0.0.1",
                port=port,
                public_url=f"http://127.0.0.1:{port}{public_path}",
                evi_url=evi_url,
                hume_api_key=hume_api_key,
                twilio_auth_token=auth_token,
                **overrides,
            )
        )

    runner, port = await serve_on_free_port(build)
    try:
        yield RunningGateway(app=runner.app, settings=runner.app[STATE].settings, port=port, auth_token=auth_token)
    finally:
        await runner.cleanup()


async def settle(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Poll ``predicate`` every 20 ms for up to ``timeout_s``; whether it holds in the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def still_open(gw: RunningGateway, sim: EviSimulator, timeout_s: float = 3.0) -> list[str]:
    """Give ``gw``'s calls and ``sim``'s sessions up to ``timeout_s`` to end; what is still open (``[]``: nothing)."""
    await settle(lambda: not gw.state.active_calls, timeout_s)
    await settle(lambda: all(s.closed.is_set() for s in sim.sessions), timeout_s)
    calls = [f"a call is still running: {call!r}" for call in gw.state.active_calls]
    return calls + [f"an EVI session was left open: {s!r}" for s in sim.sessions if not s.closed.is_set()]
