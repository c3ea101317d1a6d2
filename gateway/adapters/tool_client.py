"""Runs function tool calls against their HTTP endpoints (docs/design.md "Tool endpoint contract").

One signed POST per call, bounded by the tool's ``timeout_s`` in all (one retry when the connection could
not even be made, so nothing was delivered twice); the answer body is read up to a fixed size. Every path
ends in a :class:`~gateway.core.tools.ToolOutcome`, so EVI always gets an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from gateway.core.actions import RunTool
from gateway.core.tools import ToolOutcome, outcome_from_http
from gateway.wire.tool_http import request_body, signed_headers

log = logging.getLogger("gateway.tools")

MAX_ANSWER_BYTES = 64 * 1024
_UNAVAILABLE = "The system that answers this is not available right now."


class ToolClient:
    """POSTs tool calls; one instance (and HTTP connection pool) per app."""

    def __init__(
        self, session: aiohttp.ClientSession, secret: bytes | None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._session = session
        self._secret = secret
        self._clock = clock

    async def run(self, action: RunTool) -> ToolOutcome:
        """Call the endpoint; never raises for anything the endpoint or the network does."""
        endpoint = action.endpoint
        body = request_body(action.tool_call_id, endpoint.name, action.parameters, action.context)
        try:
            async with asyncio.timeout(endpoint.timeout_s):
                return await self._post(action, body)
        except TimeoutError:
            log.warning("tool %s (%s): no answer within %g s", endpoint.name, action.tool_call_id, endpoint.timeout_s)
            return ToolOutcome.failure("timeout", f"no answer within {endpoint.timeout_s:g} s", _UNAVAILABLE)

    async def _post(self, action: RunTool, body: bytes) -> ToolOutcome:
        endpoint = action.endpoint
        for attempt in (1, 2):
            headers = signed_headers(self._secret, int(self._clock()), body)
            try:
                async with self._session.post(endpoint.url, data=body, headers=headers) as resp:
                    raw = await resp.content.read(MAX_ANSWER_BYTES)
                    return outcome_from_http(resp.status, resp.content_type, raw.decode("utf-8", "replace"))
            except aiohttp.ClientConnectorError as exc:
                if attempt == 1:
                    log.info("tool %s: cannot connect (%s); retrying once", endpoint.name, exc.os_error)
                    continue
                return ToolOutcome.failure("unreachable", f"cannot connect to {endpoint.url}", _UNAVAILABLE)
            except aiohttp.ClientError as exc:
                return ToolOutcome.failure("request_failed", f"{type(exc).__name__}: {exc}", _UNAVAILABLE)
        raise AssertionError("unreachable")  # pragma: no cover
