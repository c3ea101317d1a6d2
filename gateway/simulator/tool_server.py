"""A tool endpoint server for tests and demos: answers the gateway's signed tool calls (docs/design.md
"Tool endpoint contract").

``POST /tools/{name}``. Each tool has a :class:`ToolBehaviour`: the status, the body (JSON with a ``content``
field by default), and a delay (to test timeouts). Every request is kept with whether its signature
verified; with a secret set, a request whose signature does not verify gets 401, as a real endpoint should.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.simulator.loopback import serve_app
from gateway.wire.tool_http import verify

__all__ = ["ReceivedToolCall", "ToolBehaviour", "ToolServer"]


@dataclass(frozen=True, slots=True)
class ToolBehaviour:
    """How one tool answers."""

    content: Any = "ok"
    """Sent as ``{"content": ...}`` (JSON) unless ``raw`` is set."""
    status: int = 200
    delay_s: float = 0.0
    raw: str | None = None
    """A plain-text body instead of JSON."""


@dataclass(frozen=True, slots=True)
class ReceivedToolCall:
    """One request the server received."""

    name: str
    body: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool


@dataclass
class ToolServer:
    """``async with ToolServer(secret, {"lookup_order": ToolBehaviour(...)}) as tools: tools.url("lookup_order")``"""

    secret: bytes | None = None
    behaviours: dict[str, ToolBehaviour] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    calls: list[ReceivedToolCall] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        """The endpoint URL of tool ``name`` (for the numbers file's ``[[tool]] url``)."""
        return f"http://{self.host}:{self.port}/tools/{name}"

    async def __aenter__(self) -> ToolServer:
        app = web.Application()
        app.router.add_post("/tools/{name}", self._call)
        self._runner, self.port = await serve_app(app, self.host)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _call(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        raw = await request.read()
        headers = dict(request.headers)
        signed = self.secret is not None and verify(self.secret, headers, raw, time.time())
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        self.calls.append(ReceivedToolCall(name, body if isinstance(body, dict) else {}, headers, signed))
        if self.secret is not None and not signed:
            return web.Response(status=401, text="bad signature")
        behaviour = self.behaviours.get(name)
        if behaviour is None:
            return web.Response(status=404, text=f"no tool {name}")
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.raw is not None:
            return web.Response(status=behaviour.status, text=behaviour.raw)
        return web.json_response({"content": behaviour.content}, status=behaviour.status)
