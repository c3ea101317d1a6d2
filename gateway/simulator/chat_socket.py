"""The simulator's end of one EVI chat WebSocket, over aiohttp (so one port also serves EVI's HTTP routes).

:class:`ChatSocket` is all an :class:`~gateway.simulator.evi_session.EviSession` needs of its connection:
frames in, frames out, an orderly close with a code, an abrupt drop, and how the connection ended. Sending
on a connection that is gone raises :class:`~gateway.errors.SessionClosedError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web

from gateway.errors import SessionClosedError


class ChatSocket:
    """One accepted chat connection."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws = ws
        self._request = request
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def frames(self) -> AsyncIterator[str | bytes]:
        """Text and binary frames until the connection closes (cleanly or not)."""
        while True:
            msg = await self._ws.receive()
            if msg.type is WSMsgType.TEXT:
                yield str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                yield bytes(msg.data)
            else:
                if msg.type is WSMsgType.CLOSE:
                    self.close_code, self.close_reason = int(msg.data), str(msg.extra or "")
                self._ended()
                return

    async def send(self, frame: str | bytes) -> None:
        """Send one frame (text for ``str``)."""
        if self._ws.closed:
            raise SessionClosedError("the chat connection is closed")
        try:
            if isinstance(frame, bytes):
                await self._ws.send_bytes(frame)
            else:
                await self._ws.send_str(frame)
        except (ConnectionError, RuntimeError) as exc:
            raise SessionClosedError(f"the chat connection is gone: {exc}") from None

    async def send_text_bytes(self, data: bytes) -> None:
        """Send ``data`` as one text frame as is, UTF-8 or not (a hostile peer's frame; RFC 6455 §8.1)."""
        if self._ws.closed:
            raise SessionClosedError("the chat connection is closed")
        try:
            await self._ws.send_frame(data, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError) as exc:
            raise SessionClosedError(f"the chat connection is gone: {exc}") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """An orderly close with ``code`` (the client sees it)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        await self._ws.close(code=code, message=reason.encode()[:120])

    def drop(self) -> None:
        """Abort the TCP connection without a close frame (the client sees 1006)."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def _ended(self) -> None:
        if self.close_code is None:
            self.close_code = self._ws.close_code
