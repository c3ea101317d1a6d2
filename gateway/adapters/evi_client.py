"""The EVI chat client on ``websockets`` — the only I/O code that knows it is talking to Hume.

evi-protocol.md §1: URL from ``GATEWAY_EVI_URL`` plus ``config_id``; auth by the ``X-Hume-Api-Key`` header,
or, with ``HUME_SECRET_KEY`` set, a short-lived access token fetched with the client-credentials grant
(§1.3) so the key itself never leaves this host. §8: messages up to 16 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from gateway.errors import UpstreamConnectError
from gateway.logs import redacting_logger
from gateway.settings import Settings
from gateway.wire.evi_codec import EviCodec
from gateway.wire.evi_messages import connect_request, redact_url
from gateway.wire.upstream import SessionStart, UpstreamCodec

log = logging.getLogger("gateway.evi")

TOKEN_REFRESH_MARGIN_S = 60.0
CLOSE_TIMEOUT_S = 2.0
"""Time EVI has to answer our close frame before the socket is dropped."""
WRITE_NOW_BUFFER_BYTES = 16 * 1024
"""`send_now` writes only while the socket's write buffer holds at most this (websockets pauses at 32 KiB)."""


@dataclass
class UpstreamConnection:
    """One open upstream socket; every write is bounded by ``send_timeout_s`` (docs/operations.md §4)."""

    ws: ClientConnection
    send_timeout_s: float = 5.0

    async def send(self, text: str) -> None:
        """Send one text frame; a closed socket, or one that takes longer than the bound (EVI is not reading),
        raises ConnectionError (the socket is aborted then)."""
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await self.ws.send(text)
        except websockets.ConnectionClosed as exc:
            raise ConnectionError(f"EVI socket closed: {exc}") from None
        except TimeoutError:
            self.ws.transport.abort()
            raise ConnectionError(f"EVI did not read a frame within {self.send_timeout_s:g} s") from None

    def send_now(self, text: str) -> bool:
        """Write one text frame at once if that cannot wait: the socket is open and its write buffer is short.

        This is ``send`` without a task switch or a timer, the path of nearly every caller frame. The frame is
        built by the sans-I/O protocol (which serializes every frame whole, so it cannot interleave with a
        ping) and handed to the transport, as websockets itself does. False: nothing was sent, use ``send``.
        """
        ws = self.ws
        transport = ws.transport
        if (
            ws.protocol.state is not State.OPEN
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_NOW_BUFFER_BYTES
        ):
            return False
        ws.protocol.send_text(text.encode())
        for data in ws.protocol.data_to_send():
            transport.write(data)
        return True

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Frames until the socket closes, cleanly or not (see :attr:`close_code`)."""
        try:
            async for message in self.ws:
                yield message
        except websockets.ConnectionClosed:
            return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent). websockets bounds the closing handshake but not the write of the close frame
        into a full buffer, so the whole close is bounded here and the socket aborted past it."""
        try:
            async with asyncio.timeout(self.send_timeout_s + CLOSE_TIMEOUT_S):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    @property
    def close_code(self) -> int | None:
        """The close code, once closed."""
        return self.ws.close_code

    @property
    def close_reason(self) -> str:
        """The close reason, once closed."""
        return self.ws.close_reason or ""


class EviConnector:
    """Opens EVI chat sessions for calls."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession | None = None) -> None:
        self._settings = settings
        self._http = http
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()
        self.codec: UpstreamCodec = EviCodec()
        self.attempts = 0

    async def connect(self, session: SessionStart) -> UpstreamConnection:
        """Open a chat; raises :class:`UpstreamConnectError` on refusal or timeout."""
        self.attempts += 1
        s = self._settings
        api_key = s.hume_api_key.get_secret_value() if s.hume_api_key else None
        access_token = await self._access_token() if s.hume_secret_key and api_key else None
        url, headers = connect_request(
            s.evi_url,
            config_id=session.config_id or s.hume_config_id,
            api_key=None if access_token else api_key,
            access_token=access_token,
            resumed_chat_group_id=session.resume_group_id,
            # docs/evi-protocol.md §5: interim user_messages let a caller cut off audio EVI already finished.
            verbose_transcription=True,
        )
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                max_size=s.evi_max_message_bytes,
                open_timeout=s.evi_connect_timeout_s,
                close_timeout=CLOSE_TIMEOUT_S,
                # docs/operations.md §4: a frozen EVI (socket open, nothing read or answered) is noticed within
                # ping_interval + ping_timeout and dropped (1011), then resumed like any drop.
                ping_interval=s.evi_ping_interval_s,
                ping_timeout=s.evi_ping_timeout_s,
                compression=None,
                logger=redacting_logger("gateway.evi.websockets"),
            )
        except websockets.InvalidStatus as exc:
            raise UpstreamConnectError(
                f"EVI refused the session: HTTP {exc.response.status_code} from {redact_url(url)}"
            ) from None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            raise UpstreamConnectError(f"cannot reach EVI at {redact_url(url)}: {type(exc).__name__}: {exc}") from None
        log.info("E> session opened at %s", redact_url(url))
        return UpstreamConnection(ws, s.send_timeout_s)

    async def _access_token(self) -> str:
        """evi-protocol.md §1.3: client-credentials token, cached until shortly before it expires."""
        async with self._token_lock:
            now = time.monotonic()
            if self._token is not None and now < self._token[1]:
                return self._token[0]
            s = self._settings
            assert s.hume_api_key is not None and s.hume_secret_key is not None
            token_url = s.hume_rest_url + "/oauth2-cc/token"
            credentials = f"{s.hume_api_key.get_secret_value()}:{s.hume_secret_key.get_secret_value()}"
            auth = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode("ascii")}
            http = self._http or aiohttp.ClientSession()
            try:
                timeout = aiohttp.ClientTimeout(total=s.evi_connect_timeout_s)
                form = {"grant_type": "client_credentials"}
                async with http.post(token_url, data=form, headers=auth, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise UpstreamConnectError(f"EVI access token request failed: HTTP {resp.status}")
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamConnectError(f"EVI access token request failed: {type(exc).__name__}") from None
            except ValueError:
                raise UpstreamConnectError("EVI access token answer is not JSON") from None
            finally:
                if self._http is None:
                    await http.close()
            token, expires_in_s = _token_fields(body)
            self._token = (token, now + max(0.0, expires_in_s - TOKEN_REFRESH_MARGIN_S))
            return token


def _token_fields(body: object) -> tuple[str, float]:
    """``access_token`` and ``expires_in`` of a token answer; a malformed one is a clear connect error."""
    if not isinstance(body, dict):
        raise UpstreamConnectError("EVI access token answer is not a JSON object")
    token = body.get("access_token")
    expires_in = body.get("expires_in", 1800)
    if not isinstance(token, str) or not token:
        raise UpstreamConnectError("EVI access token answer has no access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise UpstreamConnectError(f"EVI access token answer has an unusable expires_in: {expires_in!r}")
    return token, float(expires_in)
