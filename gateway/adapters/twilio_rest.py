"""Twilio's REST API, through the official ``twilio`` SDK: moving a live call (a transfer).

docs/twilio-media-streams.md "REST call update": ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``
with new ``Twiml`` replaces what the call is doing; for a call inside ``<Connect><Stream>`` Twilio ends the
stream with ``stop`` and runs the new TwiML. The base URL is ``GATEWAY_TWILIO_API_URL`` so tests point it
at a fake REST server on loopback.
"""

from __future__ import annotations

import logging

from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from gateway.errors import TwilioRestError
from gateway.wire.twiml import dial_twiml

log = logging.getLogger("gateway.twilio")

REST_TIMEOUT_S = 10.0


class TwilioRest:
    """Call control for one Twilio account."""

    def __init__(self, account_sid: str, auth_token: str, base_url: str = "https://api.twilio.com") -> None:
        self._http = AsyncTwilioHttpClient(timeout=REST_TIMEOUT_S)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.api.base_url = base_url.rstrip("/")

    async def transfer(self, call_sid: str, target: str) -> None:
        """Move ``call_sid`` to ``<Dial>target``; raises :class:`TwilioRestError` with Twilio's reason on failure."""
        try:
            await self._client.calls(call_sid).update_async(twiml=dial_twiml(target))
        except TwilioException as exc:
            raise TwilioRestError(f"Twilio refused to move call {call_sid}: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise TwilioRestError(f"cannot reach Twilio to move call {call_sid}: {type(exc).__name__}") from None
        log.info("call %s moved to its transfer destination", call_sid)

    async def close(self) -> None:
        """Release the HTTP connection pool."""
        await self._http.close()
