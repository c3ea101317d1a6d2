"""A fake of Twilio's REST call-update endpoint, for moving emulated calls (docs/twilio-media-streams.md §3.5).

``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with HTTP basic auth (account SID and auth
token) and a ``Twiml`` form field, as the official ``twilio`` SDK sends it. Like Twilio, it answers with the
call resource, then ends the call's Media Stream: the emulated caller sends ``stop`` and closes the socket,
and the new TwiML is kept on the call's record (``CallRecord.redirect_twiml``). Unknown calls get 404, bad
credentials 401. Point the gateway's ``GATEWAY_TWILIO_API_URL`` at :attr:`FakeTwilioRest.url`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from types import TracebackType

from aiohttp import web

from gateway.simulator.caller import TwilioCaller
from gateway.simulator.loopback import serve_app

__all__ = ["FakeTwilioRest"]

log = logging.getLogger(__name__)

_CALL_PATH = "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"


class FakeTwilioRest:
    """``async with FakeTwilioRest(account_sid, auth_token) as rest: rest.add(caller) …``"""

    def __init__(self, account_sid: str, auth_token: str, *, host: str = "127.0.0.1") -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = 0
        self.requests: list[dict[str, str]] = []
        """Every accepted update: its form fields plus ``CallSid``."""
        self._callers: dict[str, TwilioCaller] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The base URL to give the gateway (``GATEWAY_TWILIO_API_URL``)."""
        return f"http://{self.host}:{self.port}"

    def add(self, caller: TwilioCaller) -> None:
        """Let REST updates reach ``caller`` (by its call SID)."""
        self._callers[caller.config.call_sid] = caller

    async def __aenter__(self) -> FakeTwilioRest:
        app = web.Application()
        app.router.add_post(_CALL_PATH, self._update)
        self._runner, self.port = await serve_app(app, self.host)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return hmac.compare_digest(header.encode(), expected.encode())

    async def _update(self, request: web.Request) -> web.Response:
        if not self._authorized(request) or request.match_info["account_sid"] != self.account_sid:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        call_sid = request.match_info["call_sid"]
        caller = self._callers.get(call_sid)
        if caller is None:
            message = f"The requested resource {request.path} was not found"
            return web.json_response({"code": 20404, "message": message, "status": 404}, status=404)
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append({**form, "CallSid": call_sid})
        caller.record.redirect_twiml = form.get("Twiml")
        task = asyncio.create_task(caller.hang_up(), name=f"redirect-{call_sid}")  # Twilio ends the stream
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {"sid": call_sid, "account_sid": self.account_sid, "status": "in-progress", "api_version": "2010-04-01"}
        )
